package leader

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/podedge/podedge/internal/changelog"
)

// The head holds inline at least the newest inlineEntries entries (more
// when one write adds more), and every entry committed in the last
// inlineWindow, up to inlineMax entries and inlineBytes of values. A
// reader reads the head at most every MinWait (50 ms by default): while
// changes come faster than that, what it missed since its last read is in
// the head, and it needs no read of the ring. At a low rate the head stays
// small, as does what every reader reads per change.
const (
	inlineEntries = 8
	inlineWindow  = 200 * time.Millisecond
	inlineMax     = 128
	inlineBytes   = 32 << 10
)

// logHead is the store's copy of the change log's head. The leader is the
// log's only writer, so after one consistent read the copy stays exact by
// applying its own committed writes; any write that did not commit drops
// it, and the next write reads it again. Every write is guarded by the
// head's index, so a stale copy costs a retry, never a gap.
type logHead struct {
	head  changelog.Head
	index uint64 // ModifyIndex of log/head; 0 while it does not exist
	// commits are the leader's own commits of the entries inline, oldest
	// first: the first entry each wrote and when. Entries read from
	// Consul (another leader's) have none and count as old.
	commits []commitMark
}

type commitMark struct {
	first uint64
	at    time.Time
}

// inlineKeep is how many entries a head that adds changes at now holds
// inline: the changes and the older entries committed within inlineWindow,
// within inlineMax and inlineBytes, and never fewer than inlineEntries.
func (lh *logHead) inlineKeep(changes []changelog.Change, now time.Time) int {
	recentFrom := lh.head.Seq + 1
	for i := len(lh.commits) - 1; i >= 0 && now.Sub(lh.commits[i].at) <= inlineWindow; i-- {
		recentFrom = lh.commits[i].first
	}
	keep, size := len(changes), 0
	for _, c := range changes {
		size += len(c.Value)
	}
	old := lh.head.Entries
	for i := len(old) - 1; i >= 0 && old[i].Seq >= recentFrom && keep < inlineMax; i-- {
		if size += len(old[i].Value); size > inlineBytes {
			break
		}
		keep++
	}
	return max(keep, inlineEntries)
}

// committed records that next, which added changes, committed at now: the
// new head's commits are those whose entries it still holds.
func (lh *logHead) committed(next changelog.Head, index uint64, changes int, at time.Time) {
	first := next.Seq - uint64(changes) + 1
	oldest := next.Seq + 1
	if len(next.Entries) > 0 {
		oldest = next.Entries[0].Seq
	}
	kept := lh.commits[:0]
	for _, c := range lh.commits {
		if c.first >= oldest {
			kept = append(kept, c)
		}
	}
	lh.commits = append(kept, commitMark{first: first, at: at})
	lh.head = next
	lh.index = index
}

// loadLog returns the store's copy of the head, reading it when it has
// none. A head that does not parse, or whose ring is not the configured
// one, is replaced by a new epoch: every reader then reads the folders
// once and follows the new log.
func (s *Store) loadLog(ctx context.Context) (*logHead, error) {
	if s.logHead != nil {
		return s.logHead, nil
	}
	key := s.keys.logHead()
	kvs, err := s.readKeys(ctx, key)
	if err != nil {
		return nil, err
	}
	lh := &logHead{}
	if kv := kvs[key]; kv != nil {
		lh.index = kv.ModifyIndex
		h, err := changelog.DecodeHead(kv.Value)
		switch {
		case err != nil:
			s.log.Error("change log head does not parse; starting a new epoch", "error", err.Error())
		case h.Ring != s.ring:
			s.log.Warn("change log ring size changed; starting a new epoch", "was", h.Ring, "now", s.ring)
		default:
			lh.head = *h
			s.logHead = lh
			return lh, nil
		}
	}
	epoch, err := newEpoch()
	if err != nil {
		return nil, err
	}
	lh.head = changelog.NewHead(epoch, s.ring)
	s.logHead = lh
	return lh, nil
}

func newEpoch() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("new change log epoch: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// logChanges adds to tx the log entries of changes: the new head, guarded
// by the index it was read at, and a ring slot per entry. It returns the
// head to record once tx commits (logCommitted).
func (s *Store) logChanges(tx *txn, lh *logHead, changes ...changelog.Change) (changelog.Head, error) {
	next, added := lh.head.Next(changes, lh.inlineKeep(changes, time.Now()))
	value, err := json.Marshal(next)
	if err != nil {
		return changelog.Head{}, err
	}
	tx.cas(s.keys.logHead(), lh.index, value, nil)
	for _, e := range added {
		v, err := json.Marshal(e)
		if err != nil {
			return changelog.Head{}, err
		}
		tx.set(changelog.RingKey(s.keys.prefix, e.Seq, next.Ring), v)
	}
	return next, nil
}

// logCommitted records the head a committed transaction wrote, and the
// names it wrote for the auditor.
// commitLogged appends changes to the log in tx, commits tx and, once it
// committed, makes the log's new head the one the next write builds on.
func (s *Store) commitLogged(ctx context.Context, session string, tx *txn, lh *logHead, changes ...changelog.Change) (committed, error) {
	next, err := s.logChanges(tx, lh, changes...)
	if err != nil {
		return nil, err
	}
	res, err := s.commit(ctx, session, tx)
	if err != nil {
		return nil, err
	}
	s.logCommitted(next, res)
	return res, nil
}

func (s *Store) logCommitted(next changelog.Head, res committed) {
	if s.logHead == nil {
		return
	}
	index := res[s.keys.logHead()]
	added := int(next.Seq - s.logHead.head.Seq)
	s.written.add(next.Entries[len(next.Entries)-added:], index)
	s.logHead.committed(next, index, added, time.Now())
}

// writtenNames are the names the leader logged, by kind, with the index
// of the write, until the auditor has looked at them (takeWritten): a key
// written and deleted again between two of its reads of a folder shows in
// neither, and the auditor must still see that readers have it right.
type writtenNames struct {
	mu    sync.Mutex
	names map[string]map[string]uint64
}

func (w *writtenNames) add(entries []changelog.Entry, index uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.names == nil {
		w.names = map[string]map[string]uint64{}
	}
	for _, e := range entries {
		m := w.names[e.Kind]
		if m == nil {
			m = map[string]uint64{}
			w.names[e.Kind] = m
		}
		m[e.Name] = index
	}
}

// take returns the names of kind written at index upTo or before, and
// forgets them.
func (w *writtenNames) take(kind string, upTo uint64) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for name, index := range w.names[kind] {
		if index <= upTo {
			out = append(out, name)
			delete(w.names[kind], name)
		}
	}
	return out
}

// pending reports whether a name of kind was written after index and not
// taken yet.
func (w *writtenNames) pending(kind string, index uint64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, i := range w.names[kind] {
		if i > index {
			return true
		}
	}
	return false
}

// tenantChange and podChange are the log entries of a tenant or pod value
// written (value) or deleted (nil).
func tenantChange(name string, value []byte) changelog.Change {
	return logChange(changelog.KindTenant, name, value)
}

func podChange(name string, value []byte) changelog.Change {
	return logChange(changelog.KindPod, name, value)
}

func logChange(kind, name string, value []byte) changelog.Change {
	v, err := changelog.Normalize(value)
	if err != nil {
		// The leader writes what it marshalled itself: always JSON.
		panic(fmt.Sprintf("leader: %s %q: %v", kind, name, err))
	}
	return changelog.Change{Kind: kind, Name: name, Value: v}
}

// putBack returns names that take gave, for a pass that failed.
func (w *writtenNames) putBack(kind string, names []string, index uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.names[kind]
	if m == nil {
		m = map[string]uint64{}
		w.names[kind] = m
	}
	for _, name := range names {
		if _, newer := m[name]; !newer {
			m[name] = index
		}
	}
}
