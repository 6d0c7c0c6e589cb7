package leader

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/changelog"
	"github.com/podedge/podedge/internal/retry"
	"github.com/podedge/podedge/router"
)

// The auditor keeps the folders the public contract they are. Readers
// follow the change log, not the folders; a value an operator writes
// straight into pods/ or tenants/, or deletes there, is in no entry. The
// active leader, alone, watches both folders and, for each key that
// changed, compares the value with what its own view (the log's) holds:
// where they differ it appends a repair entry, guarded by the key's index
// as listed, so that a leader write to the same key meanwhile wins. Every
// reader then has the change within about AuditInterval.
//
// A read of the folder costs in proportion to the tenants: about 0.3 s of
// Consul's time at 100,000, several seconds at a million. The auditor paces
// itself by that cost: the next read starts no sooner than auditPace times
// the least of the last three timed reads took (the read and the pass over
// it), nor sooner than
// AuditInterval, so that it takes at most a fifth of Consul's and its own
// time whatever the size. A change outside the leader reaches the readers
// within about max(AuditInterval, auditPace × read) plus one read: 2.5 s at
// 100,000 tenants (bench/results/, scale).

// auditPace bounds the auditor's share of the time: one read of a folder,
// then at least auditPace-1 times as long without.
const auditPace = 5

// auditWait is how long a blocking read of a folder waits for a change.
// Consul answers the whole folder again when the wait runs out, but a
// Consul restored from an older snapshot holds the folder at an index
// below the one the read waits past, and answers only then.
const auditWait = 10 * time.Second

// repair is one repair entry to write: the value listed at index (nil:
// the key is gone, or holds a value the router refuses).
type repair struct {
	kind, name string
	value      []byte
	key        string
	index      uint64 // the key's ModifyIndex as listed; 0: it must not exist
}

// errStaleRepair is a repair whose key changed since it was listed: the
// next audit looks at it again.
var errStaleRepair = &Error{Kind: KindConflict, Msg: "a key changed again while its repair was written"}

// repairsPerTxn keeps a repair transaction within Consul's 128 operations:
// the fence and the head, then a guard and a ring slot per repair.
const repairsPerTxn = (maxTxnOps - 2) / 2

// Repair appends repair entries for repairs, in fenced transactions.
func (s *Store) Repair(ctx context.Context, repairs []repair) error {
	for start := 0; start < len(repairs); start += repairsPerTxn {
		batch := repairs[start:min(start+repairsPerTxn, len(repairs))]
		_, err := s.write(ctx, "repair", func(session string) error {
			lh, err := s.loadLog(ctx)
			if err != nil {
				return err
			}
			tx := newTxn("repair", s.keys, session)
			changes := make([]changelog.Change, 0, len(batch))
			for _, r := range batch {
				tx.checkIndex(r.key, r.index, errStaleRepair)
				c := changelog.Change{Kind: r.kind, Name: r.name, Repair: true}
				if v, err := changelog.Normalize(r.value); err == nil {
					c.Value = v // else logged as deleted: the router refuses it
				}
				changes = append(changes, c)
			}
			if _, err := s.commitLogged(ctx, session, tx, lh, changes...); err != nil {
				return err
			}
			// The seats and the domain index count what the view holds:
			// the next write reconciles them with it first.
			s.reconciled = ""
			for _, r := range batch {
				s.m.repairs.WithLabelValues(r.kind + "s").Inc()
				s.log.Warn("a value changed outside the leader; logged it for every reader", "key", r.key, "deleted", r.value == nil)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// folderAudit is what the auditor last listed of one folder.
type folderAudit struct {
	kind string // changelog.KindPod or KindTenant
	dir  string
	seen map[string]uint64 // name → ModifyIndex
	// sweep: the next pass also looks for what the view holds and the
	// folder does not (after a start or a new leadership).
	sweep bool
}

// auditLoop runs the auditor while this replica leads.
func (s *Server) auditLoop(ctx context.Context, list router.KVLister) {
	folders := []*folderAudit{
		{kind: changelog.KindPod, dir: s.router.Prefix() + "pods/"},
		{kind: changelog.KindTenant, dir: s.router.Prefix() + "tenants/"},
	}
	var leading string
	for ctx.Err() == nil {
		session, ok := s.elector.Session()
		if !ok {
			if !retry.Sleep(ctx, 250*time.Millisecond) {
				return
			}
			continue
		}
		if session != leading {
			leading = session
			for _, f := range folders {
				f.seen, f.sweep = nil, true
			}
		}
		actx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		for _, f := range folders {
			wg.Go(func() {
				s.auditFolder(actx, list, f, session)
				cancel() // leadership lost (or ctx done): start over
			})
		}
		wg.Wait()
		cancel()
	}
}

// auditFolder lists f whole at each change, at most once per
// AuditInterval, and repairs, while session leads.
func (s *Server) auditFolder(ctx context.Context, list router.KVLister, f *folderAudit, session string) {
	var index uint64
	var costs [3]time.Duration // of the last reads and passes timed
	timedReads := 0
	failures := 0
	for ctx.Err() == nil {
		if now, ok := s.elector.Session(); !ok || now != session {
			return
		}
		// The folder is read once the view has synced: on a new
		// leadership the view's own first read of the folders comes
		// first, alone.
		if _, err := s.router.WaitIndex(ctx, 0); err != nil {
			return
		}
		// And after the reconciliation's, which may read the tenants
		// from KV too: one 300 MB answer at a time at a million.
		if !s.waitReconciled(ctx, session) {
			return
		}
		// A read blocks until the folder changes, and the wait is no
		// cost; it answers at once when the leader itself logged a
		// change of the folder since the last read, and then its time
		// is what the read costs.
		timed := index == 0 || s.store.written.pending(f.kind, index)
		started := time.Now()
		q := (&api.QueryOptions{AllowStale: true, WaitIndex: index, WaitTime: auditWait}).WithContext(ctx)
		l, err := s.listFolder(list, f, q)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			index = 0
			failures++
			retry.Sleep(ctx, retry.Backoff(250*time.Millisecond, 5*time.Second, failures))
			continue
		}
		failures = 0
		if l.index != index || f.sweep {
			err = s.auditPass(ctx, f, l)
		}
		switch {
		case err == nil:
			if l.index < index {
				index = 0
			} else {
				index = l.index
			}
		case errors.Is(err, errNotLeader) || ctx.Err() != nil:
			return
		default:
			// The view is behind, Consul failed or a key changed again:
			// the next pass looks at everything this one did.
			s.log.Debug("audit pass left for the next", "folder", f.dir, "error", err.Error())
			index = 0
		}
		if timed {
			costs[timedReads%len(costs)] = time.Since(started)
			timedReads++
		}
		// The least of the last few: a read slowed down by a burst of
		// other work must not set the pace.
		cost := costs[0]
		for _, c := range costs[1:max(1, min(timedReads, len(costs)))] {
			cost = min(cost, c)
		}
		retry.Sleep(ctx, max(s.cfg.AuditInterval-time.Since(started), (auditPace-1)*cost))
	}
}

// waitReconciled waits until session has reconciled the internal keys,
// and reports false when session stopped leading or ctx ended first.
func (s *Server) waitReconciled(ctx context.Context, session string) bool {
	for {
		s.changesMu.Lock()
		changes := s.changes // taken before the session is looked at
		s.changesMu.Unlock()
		marked, ok := s.store.once.state(session)
		if ok {
			return true
		}
		if now, leading := s.elector.Session(); !leading || now != session {
			return false
		}
		select {
		case <-marked:
		case <-changes:
		case <-ctx.Done():
			return false
		}
	}
}

// folderListing is what a pass over a folder needs of its listing: the index
// it was listed at, every name with its ModifyIndex, and the entries that
// changed since the last pass and that the view, as it was when they were
// read, did not hold as listed.
type folderListing struct {
	index   uint64
	seen    map[string]uint64
	suspect []repair // value nil: it does not decode
}

// listFolder lists f, an entry at a time: only the names and what may need
// a repair are kept, not the folder (30 MB of JSON at 100,000 tenants).
// Each changed entry is compared with the view of the moment, which may
// be behind the listing: those it holds as listed and that it is known to
// have every leader write of are left alone; the others are compared
// again, in the pass, with a view that holds every leader write the
// listing shows.
func (s *Server) listFolder(list router.KVLister, f *folderAudit, q *api.QueryOptions) (*folderListing, error) {
	l := &folderListing{seen: make(map[string]uint64, len(f.seen))}
	var view *router.Snapshot
	var values entryValues
	meta, err := router.ListEach(list, f.dir, q, func(e *router.KVEntry) error {
		if view == nil {
			view = s.router.Snapshot() // once the answer comes
		}
		n, ok := name(e, f.dir)
		if !ok || strings.Contains(n, "/") {
			return nil
		}
		l.seen[n] = e.ModifyIndex
		if prev, known := f.seen[n]; known && prev == e.ModifyIndex {
			return nil
		}
		value, ok := values.of(e)
		if !ok {
			value = nil
		}
		r, differs := s.differs(view, f.kind, n, value)
		if !differs && view.LogIndex >= e.ModifyIndex {
			// The view has every leader write to the key up to this
			// value, and holds it.
			return nil
		}
		if !differs && ok {
			r.value = append([]byte(nil), value...)
		}
		r.key, r.index = string(e.Key), e.ModifyIndex
		l.suspect = append(l.suspect, r)
		return nil
	})
	if err != nil {
		return nil, err
	}
	l.index = meta.LastIndex
	return l, nil
}

// auditPass compares what l holds with the view once the view has every
// leader write up to the listing's index, and writes the repairs.
func (s *Server) auditPass(ctx context.Context, f *folderAudit, l *folderListing) error {
	wctx, cancel := context.WithTimeout(ctx, s.cfg.WriteTimeout)
	defer cancel()
	// The view has every leader write the listing may show once it has the
	// log up to the listing's index, or up to the head as it is now if
	// that is older: a change outside the leader moves the folder's index
	// and not the head's.
	index := l.index
	head, _, err := s.client.KV().Get(s.store.keys.logHead(), (&api.QueryOptions{RequireConsistent: true}).WithContext(wctx))
	if err != nil {
		return err
	}
	if head != nil {
		index = min(index, head.ModifyIndex)
	}
	view, err := s.router.WaitIndex(wctx, index)
	if err != nil {
		return err
	}
	seen := l.seen
	var repairs []repair
	for _, listed := range l.suspect {
		if r, ok := s.differs(view, f.kind, listed.name, listed.value); ok {
			r.key, r.index = listed.key, listed.index
			repairs = append(repairs, r)
		}
	}
	gone := func(name string) {
		if _, listed := seen[name]; !listed {
			repairs = append(repairs, repair{kind: f.kind, name: name, key: f.dir + name})
		}
	}
	for name := range f.seen {
		if s.inView(view, f.kind, name) {
			gone(name)
		}
	}
	written := s.store.written.take(f.kind, index)
	for _, name := range written {
		if s.inView(view, f.kind, name) {
			gone(name)
		}
	}
	if f.sweep {
		if f.kind == changelog.KindTenant {
			view.AscendTenants("", func(t *router.Tenant) bool { gone(t.Name); return true })
		} else {
			for _, p := range view.Pods() {
				if p.Registered {
					gone(p.Name)
				}
			}
		}
	}
	repairs = dedupRepairs(repairs)
	s.log.Debug("audit pass", "folder", f.dir, "index", index, "listed", len(seen), "repairs", len(repairs), "sweep", f.sweep)
	if len(repairs) > 0 {
		if err := s.store.Repair(wctx, repairs); err != nil {
			s.store.written.putBack(f.kind, written, index)
			return err
		}
	}
	f.seen, f.sweep = seen, false
	return nil
}

// differs reports the repair that makes the view hold what the folder
// does for name (value nil: the key could not be decoded).
func (s *Server) differs(view *router.Snapshot, kind, name string, value []byte) (repair, bool) {
	r := repair{kind: kind, name: name}
	switch kind {
	case changelog.KindTenant:
		t, err := router.DecodeTenant(name, value)
		have := view.Tenant(name)
		switch {
		case err != nil && have == nil, err == nil && have != nil && have.Equal(t):
			return r, false
		case err == nil:
			r.value = append([]byte(nil), value...)
		}
	default:
		p, err := router.DecodePod(name, value)
		have := view.Pod(name)
		registered := have != nil && have.Registered
		switch {
		case err != nil && !registered, err == nil && registered && have.Pod.Equal(p):
			return r, false
		case err == nil:
			r.value = append([]byte(nil), value...)
		}
	}
	return r, true
}

func (s *Server) inView(view *router.Snapshot, kind, name string) bool {
	if kind == changelog.KindTenant {
		return view.Tenant(name) != nil
	}
	p := view.Pod(name)
	return p != nil && p.Registered
}

// dedupRepairs keeps one repair per key, the first.
func dedupRepairs(rs []repair) []repair {
	seen := map[string]bool{}
	out := rs[:0]
	for _, r := range rs {
		if !seen[r.key] {
			seen[r.key] = true
			out = append(out, r)
		}
	}
	return out
}
