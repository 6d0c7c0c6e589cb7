package router

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/changelog"
	"github.com/podedge/podedge/internal/retry"
)

// follower keeps the router's pods and tenants from the change log
// (internal/changelog): it blocks on the log's small head key and applies
// the entries it has not applied, touching O(change) of its state, and
// reads the folders and the head again in one read-only transaction only
// when it cannot follow (a resync). While the log does not exist (no leader
// has written yet) it watches the pods/ and tenants/ folders themselves,
// reading them whole at each change, until a head appears.
type follower struct {
	r     *Router
	w     *watcher
	kv    KVGetter // reads the head
	list  KVLister
	txn   KVTxnReader
	keys  logKeys
	pods  map[string]Pod
	idx   *tenantIndex
	names map[string]string // pod names, interned

	// The log as applied.
	epoch     string
	seq       uint64
	chain     string
	headIndex uint64
	recent    [recentChains]seqChain // the chain after each of the newest entries, by seq % recentChains

	stats *logStats
}

// logKeys names the keys the follower reads.
type logKeys struct {
	prefix, head, pods, tenants string
}

// recentChains is how many of the newest entries' chains a follower keeps,
// to tell a Consul server that is behind the others (same history, older)
// from a history that changed (a restored snapshot).
const recentChains = 4096

type seqChain struct {
	seq   uint64
	chain string
}

// logStats counts what the follower did, for Router.LogStatus.
type logStats struct {
	following atomic.Bool
	seq       atomic.Uint64
	entries   atomic.Uint64
	mu        sync.Mutex
	resyncs   map[string]uint64
}

func (s *logStats) resynced(reason string) {
	s.mu.Lock()
	if s.resyncs == nil {
		s.resyncs = map[string]uint64{}
	}
	s.resyncs[reason]++
	s.mu.Unlock()
}

// LogStatus is how the router follows the change log.
type LogStatus struct {
	// Following is true while the router follows the log; false while
	// there is none and it reads the folders whole.
	Following bool
	// Seq is the newest entry applied; Entries counts the entries applied
	// since the start.
	Seq, Entries uint64
	// Resyncs counts the full reads of the folders, by reason: "start",
	// "log_started" (the log appeared), "new_epoch", "behind_ring", "ring_overwritten", "chain",
	// "went_back", "head_gone", "bad_head", "bad_entry".
	Resyncs map[string]uint64
}

// LogStatus reports how the router follows the change log.
func (r *Router) LogStatus() LogStatus {
	s := r.logStats
	s.mu.Lock()
	defer s.mu.Unlock()
	st := LogStatus{Following: s.following.Load(), Seq: s.seq.Load(), Entries: s.entries.Load(), Resyncs: map[string]uint64{}}
	for k, v := range s.resyncs {
		st.Resyncs[k] = v
	}
	return st
}

func newFollower(r *Router, w *watcher, kv KVGetter, list KVLister, txn KVTxnReader) *follower {
	p := r.cfg.Prefix
	return &follower{
		r: r, w: w, kv: kv, list: list, txn: txn,
		keys:  logKeys{prefix: p, head: changelog.HeadKey(p), pods: p + "pods/", tenants: p + "tenants/"},
		names: map[string]string{},
		stats: r.logStats,
	}
}

// run follows until ctx ends.
func (f *follower) run(ctx context.Context) {
	reason := "start"
	failures := 0
	for ctx.Err() == nil {
		started := time.Now()
		// Once something is published, a resync reads from the Consul
		// leader: a server that restarted answers stale reads from
		// whatever its state holds before it catches up, possibly no
		// head and none of the newest tenants, and publishing that would
		// drop live tenants. While no leader answers, the last snapshot
		// serves on.
		q := f.resyncQuery(reason)
		// Without a log there is nothing to resync with: the folders are
		// watched whole, as they come.
		pair, _, err := f.kv.GetKV(f.keys.head, q.WithContext(ctx))
		found := false
		if err == nil && pair != nil {
			found, err = f.resync(ctx, q)
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			backoff := retry.Backoff(f.r.cfg.RetryBase, f.r.cfg.RetryMax, failures)
			f.r.queryResult("kv:log", started, err, backoff)
			if !retry.Sleep(ctx, backoff) {
				return
			}
			continue
		}
		failures = 0
		f.r.queryResult("kv:log", started, nil, 0)
		if !found {
			f.stats.following.Store(false)
			f.followFolders(ctx)
			reason = "log_started"
			continue
		}
		f.stats.resynced(reason)
		if reason != "start" {
			f.r.log.Warn("change log: read the platform again", "reason", reason, "seq", f.seq, "tenants", f.idx.byName.Len())
		}
		f.stats.following.Store(true)
		reason = f.followLog(ctx)
	}
}

// resyncQuery is how a resync for reason reads: stale, as configured, for
// the first read of all; from the Consul leader for every later one.
func (f *follower) resyncQuery(reason string) *api.QueryOptions {
	if reason == "start" {
		return &api.QueryOptions{AllowStale: !f.r.cfg.Consistent}
	}
	return &api.QueryOptions{RequireConsistent: true}
}

func (f *follower) podList() []Pod {
	out := make([]Pod, 0, len(f.pods))
	for _, p := range f.pods {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Pod) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (f *follower) logProblems(problems []error) {
	for _, p := range problems {
		f.r.log.Warn("inconsistent platform data", "problem", p.Error())
	}
}

func (f *follower) remember(seq uint64, chain string) {
	f.recent[seq%recentChains] = seqChain{seq: seq, chain: chain}
}

// knows reports whether chain is the chain this follower applied after
// entry seq.
func (f *follower) knows(seq uint64, chain string) bool {
	c := f.recent[seq%recentChains]
	return c.seq == seq && c.chain == chain
}

// followLog follows the head until it cannot, and returns why.
func (f *follower) followLog(ctx context.Context) (reason string) {
	cfg := &f.r.cfg
	waitIndex := f.headIndex
	failures := 0
	for ctx.Err() == nil {
		started := time.Now()
		q := (&api.QueryOptions{AllowStale: !cfg.Consistent, WaitIndex: waitIndex, WaitTime: min(cfg.WaitTime, headWait)}).WithContext(ctx)
		pair, meta, err := f.kv.GetKV(f.keys.head, q)
		if ctx.Err() != nil {
			return ""
		}
		if err != nil {
			waitIndex = 0 // an agent that restarted may answer with lower indexes
			failures++
			backoff := retry.Backoff(cfg.RetryBase, cfg.RetryMax, failures)
			f.r.queryResult("kv:log", started, err, backoff)
			if !retry.Sleep(ctx, backoff) {
				return ""
			}
			continue
		}
		failures = 0
		f.r.queryResult("kv:log", started, nil, 0)
		if pair == nil {
			// A server behind the others, or restarted and not caught
			// up, may not hold the head yet: the leader tells.
			latest, _, err := f.kv.GetKV(f.keys.head, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
			switch {
			case err != nil:
				continue // Consul failed: the next read tries again
			case latest == nil:
				return "head_gone"
			}
			pair = latest
		}
		if reason := f.advance(ctx, pair); reason != "" {
			return reason
		}
		waitIndex = nextIndex(waitIndex, meta.LastIndex)
		var cost time.Duration
		if q.WaitIndex > 0 {
			cost = time.Since(started) - meta.RequestTime
		}
		if !retry.Sleep(ctx, pause(cfg.MinWait, time.Since(started), cost)) {
			return ""
		}
	}
	return ""
}

// advance applies what a read of the head brings, and returns why it
// cannot when it cannot.
func (f *follower) advance(ctx context.Context, pair *api.KVPair) (reason string) {
	if pair.ModifyIndex == f.headIndex {
		return "" // the wait ran out: nothing new
	}
	h, err := changelog.DecodeHead(pair.Value)
	if err != nil {
		f.r.log.Error("change log head does not parse", "error", err.Error())
		return "bad_head"
	}
	if h.Epoch != f.epoch {
		return "new_epoch"
	}
	if f.older(h, pair.ModifyIndex) {
		// Behind what was applied: a server behind the others answers
		// this way, and so does a cluster restored from an older
		// snapshot. The Consul leader tells them apart.
		latest, _, err := f.kv.GetKV(f.keys.head, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
		if err != nil {
			return "" // the next read of the head tries again
		}
		if latest == nil {
			return "head_gone"
		}
		if h, err = changelog.DecodeHead(latest.Value); err != nil {
			return "bad_head"
		}
		switch {
		case h.Epoch != f.epoch:
			return "new_epoch"
		case h.Seq == f.seq && h.Chain() == f.chain:
			return "" // the server was behind; the log is where it was
		case h.Seq < f.seq || h.Seq == f.seq:
			return "went_back"
		}
		pair = latest
	}
	if h.Seq-f.seq > h.Ring {
		return "behind_ring"
	}
	entries, reason := f.missing(ctx, h)
	if reason != "" {
		return reason
	}
	seq, chain := f.seq, f.chain
	for i := range entries {
		if err := entries[i].Follows(seq, chain); err != nil {
			f.r.log.Warn("change log entries do not follow", "error", err.Error())
			return "chain"
		}
		seq, chain = entries[i].Seq, entries[i].Chain
	}
	f.apply(entries, pair.ModifyIndex)
	return ""
}

// older reports whether the head h, read at index, is behind what was
// applied or beside it (the same length, another history).
func (f *follower) older(h *changelog.Head, index uint64) bool {
	return h.Seq < f.seq || index < f.headIndex || h.Seq == f.seq && h.Chain() != f.chain
}

// missing returns the entries after f.seq up to h.Seq: from the ring those
// older than the head holds inline.
func (f *follower) missing(ctx context.Context, h *changelog.Head) ([]changelog.Entry, string) {
	var entries []changelog.Entry
	firstInline := h.Seq + 1
	if len(h.Entries) > 0 {
		firstInline = h.Entries[0].Seq
	}
	for from := f.seq + 1; from < firstInline; from += ringBatch {
		to := min(from+ringBatch, firstInline)
		keys := make([]string, 0, to-from)
		for s := from; s < to; s++ {
			keys = append(keys, changelog.RingKey(f.keys.prefix, s, h.Ring))
		}
		list, _, err := f.txn.ReadKV(keys, nil, (&api.QueryOptions{AllowStale: !f.r.cfg.Consistent}).WithContext(ctx))
		if err != nil {
			return nil, "" // Consul failed: the next read of the head tries again
		}
		got, ok := decodeSlots(list, from)
		list.release()
		if !ok {
			return nil, "ring_overwritten"
		}
		entries = append(entries, got...)
	}
	for _, e := range h.Entries {
		if e.Seq > f.seq {
			entries = append(entries, e)
		}
	}
	return entries, ""
}

// headWait bounds a blocking read of the head. A Consul restored from a
// snapshot holds the head at a lower index than a reader waits past, and
// answers it only when the wait runs out: this bounds how long readers
// take to notice. A head is small; reading it this often costs little.
const headWait = 15 * time.Second

// ringBatch is how many ring slots one transaction reads (Consul takes 128
// operations at most).
const ringBatch = 64

// decodeSlots decodes ring slots read in order, entries from on; ok is
// false when a slot holds another entry than the one due.
func decodeSlots(list *KVList, from uint64) ([]changelog.Entry, bool) {
	out := make([]changelog.Entry, 0, len(list.Entries))
	for i := range list.Entries {
		e := &list.Entries[i]
		value := e.Value
		if e.Base64 {
			var err error
			if value, err = base64.StdEncoding.DecodeString(string(e.Value)); err != nil {
				return nil, false
			}
		}
		entry, err := changelog.DecodeEntry(value)
		if e.ModifyIndex == 0 || err != nil || entry.Seq != from+uint64(i) {
			return nil, false
		}
		out = append(out, entry)
	}
	return out, true
}

// apply applies entries that follow the applied ones and publishes the
// result, which reflects the log through the head's index.
func (f *follower) apply(entries []changelog.Entry, index uint64) {
	var changes []tenantChange
	var errs []error
	podsChanged := false
	for i := range entries {
		e := &entries[i]
		switch e.Kind {
		case changelog.KindTenant:
			ch := tenantChange{name: e.Name}
			if !e.Deleted() {
				t, err := f.decodeTenant(e.Name, e.Value)
				if err != nil {
					errs = append(errs, fmt.Errorf("change log entry %d: %w", e.Seq, err))
				} else {
					ch.t = &t
				}
			}
			changes = append(changes, ch)
		case changelog.KindPod:
			podsChanged = true
			delete(f.pods, e.Name)
			if !e.Deleted() {
				p, err := f.decodePod(e.Name, e.Value)
				if err != nil {
					errs = append(errs, fmt.Errorf("change log entry %d: %w", e.Seq, err))
				} else {
					f.pods[p.Name] = p
				}
			}
		}
		f.remember(e.Seq, e.Chain)
		f.seq, f.chain = e.Seq, e.Chain
	}
	f.headIndex = index
	f.w.logSkipped(errs)
	var delta []string
	if len(changes) > 0 {
		var problems []error
		f.idx, problems = f.idx.apply(changes)
		f.logProblems(problems)
		for _, c := range changes {
			delta = append(delta, c.name)
		}
	}
	pods := f.w.currentPods()
	if podsChanged {
		pods = f.podList()
	}
	f.stats.seq.Store(f.seq)
	f.stats.entries.Add(uint64(len(entries)))
	f.w.setKV(pods, f.idx, delta, false, index)
}
