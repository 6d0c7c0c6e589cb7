package leader

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/router"
)

// Reconcile checks the internal keys (seat counts and the domain index)
// against the tenants of the replica's view and repairs any difference.
// The leader keeps them exact itself; they drift only when someone writes
// tenants/ directly, which the auditor logs within a few seconds (and then
// asks for a reconciliation before the next write). It runs when
// leadership is won, before the first write, and every reconcile_interval.
//
// The tenants are counted from the view, which follows the change log,
// not read from KV: with a million tenants a read of the folder is 300 MB
// that Consul must serve in one answer, and a new leader's first write
// waited minutes behind it.
func (s *Store) Reconcile(ctx context.Context) error {
	if err := s.acquire(ctx); err != nil {
		return err
	}
	defer s.release()
	session, ok := s.fence.Session()
	if !ok {
		return errNotLeader
	}
	s.reconciled = ""
	return s.reconcileLocked(ctx, session)
}

// reconcileLocked reconciles once per session; the caller holds the turn.
func (s *Store) reconcileLocked(ctx context.Context, session string) error {
	if s.reconciled == session {
		return nil
	}
	for try := 1; ; try++ {
		err := s.reconcileOnce(ctx, session)
		s.pods = nil
		if err == nil {
			s.reconciled = session
			s.once.mark(session)
			return nil
		}
		if !errors.Is(err, errRetry) || try >= s.retries {
			return err
		}
		s.m.retries.WithLabelValues("reconcile").Inc()
	}
}

// reconcileOnce reads pods, seats, the domain index and the change log's
// head at one Raft index, waits for the view to hold every change the head
// logged, and writes the repairs, each guarded by the index it was read
// at, in as few fenced transactions as Consul's limit allows. No write of
// this replica can commit meanwhile (the caller holds the turn) and no
// other replica's (the fence), so the view then holds exactly the tenants
// the seats and the index were written for.
//
// A view that does not catch up within viewWait (Consul just recovered
// and the router waits out its backoff), or that cannot be held to the
// head, is not used: the tenants are then read from KV with the rest, in
// one transaction (platformRead), as the leader did before it had a view
// that follows the log.
func (s *Store) reconcileOnce(ctx context.Context, session string) error {
	k := s.keys
	var headIndex uint64
	var values entryValues
	st := newKVState()
	if err := s.readEach(ctx, []string{k.logHead()}, []string{k.podsDir(), k.seatsDir(), k.domainsDir()}, func(e *router.KVEntry) error {
		if e.ModifyIndex != 0 && string(e.Key) == k.logHead() {
			headIndex = e.ModifyIndex
			return nil
		}
		st.collect(k, e, &values)
		return nil
	}); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, viewWait)
	view, err := s.waitView(wctx, headIndex)
	cancel()
	// The view is the tenants the seats were written for only when it
	// stands exactly at the head: without a head there is no log to hold
	// it to, and a view past the head saw a history KV no longer has (a
	// restore, an emptied KV).
	if err == nil && headIndex != 0 && view.LogIndex == headIndex {
		view.AscendTenants("", func(t *router.Tenant) bool { st.claim(t); return true })
	} else {
		s.log.Warn("reconcile: the view does not stand at the change log's head; reading the tenants from KV", "head", headIndex, "view", view.LogIndex)
		if st, err = s.platformFromKV(ctx); err != nil {
			return err
		}
	}
	pods, seats, index, count, owner := st.pods, st.seats, st.index, st.count, st.owner
	registered := map[string]bool{}
	for name := range pods {
		registered[name] = true
	}

	tx := newTxn("reconcile", k, session)
	flush := func() error {
		if len(tx.ops) == 1 {
			return nil
		}
		_, err := s.commit(ctx, session, tx)
		tx = newTxn("reconcile", k, session)
		return err
	}
	repair := func(kind, key, have, want string) error {
		s.log.Warn("repairing internal key", "kind", kind, "key", key, "had", have, "want", want)
		s.m.repairs.WithLabelValues(kind).Inc()
		if len(tx.ops) >= maxTxnOps {
			return flush()
		}
		return nil
	}

	for _, pod := range union(slices.Collect(maps.Keys(registered)), slices.Collect(maps.Keys(seats)), slices.Collect(maps.Keys(count))) {
		want, kv := count[pod], seats[pod]
		switch {
		case kv == nil && want == 0:
			continue // created by the first placement
		case kv == nil:
			tx.cas(k.seats(pod), 0, seatsValue(want), nil)
		case string(kv.Value) == strconv.Itoa(want):
			continue
		case want == 0 && !registered[pod]:
			tx.deleteCAS(kv.Key, kv.ModifyIndex, nil)
		default:
			tx.cas(kv.Key, kv.ModifyIndex, seatsValue(want), nil)
		}
		if err := repair("seats", k.seats(pod), value(kv), strconv.Itoa(want)); err != nil {
			return err
		}
	}

	for _, d := range union(slices.Collect(maps.Keys(index)), slices.Collect(maps.Keys(owner))) {
		kv := index[d]
		o, owned := owner[d]
		var want string
		if owned {
			want = o.Name
		}
		switch {
		case !owned:
			tx.deleteCAS(kv.Key, kv.ModifyIndex, nil)
		case kv == nil:
			tx.cas(k.domain(d), 0, []byte(want), nil)
		case string(kv.Value) == want:
			continue
		default:
			tx.cas(kv.Key, kv.ModifyIndex, []byte(want), nil)
		}
		if err := repair("domains", k.domain(d), value(kv), want); err != nil {
			return err
		}
	}
	return flush()
}

// viewWait bounds the wait of a reconciliation for the view.
const viewWait = 500 * time.Millisecond

// routable decodes a stored tenant as the router would route it, reporting
// false for values the router skips.
func (s *Store) routable(name string, raw []byte) (router.Tenant, bool) {
	if !router.ValidLabel(name) {
		return router.Tenant{}, false
	}
	t, err := router.DecodeTenant(name, raw)
	if err != nil {
		return router.Tenant{}, false
	}
	return t, true
}

// union returns the names in every list, sorted and distinct.
func union(lists ...[]string) []string {
	out := slices.Concat(lists...)
	slices.Sort(out)
	return slices.Compact(out)
}

func value(kv *api.KVPair) string {
	if kv == nil {
		return "(absent)"
	}
	return string(kv.Value)
}

// waitView returns the view once it holds every change logged at index or
// before.
func (s *Store) waitView(ctx context.Context, index uint64) (*router.Snapshot, error) {
	if s.waitViewFn == nil {
		return s.view(), nil
	}
	return s.waitViewFn(ctx, index)
}
