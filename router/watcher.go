package router

import (
	"context"
	"reflect"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/retry"
)

// Run keeps the snapshot in step with Consul until ctx ends. Pods and
// tenants come from the change log (follower), health from one blocking
// query per service; it rebuilds when any of them changed, and publishes
// the first snapshot only once every source has answered. While Consul is
// unreachable the last snapshot stays published and Status reports its age.
func (r *Router) Run(ctx context.Context, client *api.Client) error {
	w := &watcher{r: r, changed: make(chan struct{}, 1)}
	// What the configured lister does not do, consul/api does.
	fallback := apiLister{kv: client.KV(), txn: client.Txn()}
	kv := r.cfg.KV
	if kv == nil {
		kv = fallback
	}
	txn, ok := kv.(KVTxnReader)
	if !ok {
		txn = fallback
	}
	get, ok := kv.(KVGetter)
	if !ok {
		get = fallback
	}
	f := newFollower(r, w, get, kv, txn)

	var wg sync.WaitGroup
	wg.Go(func() { f.run(ctx) })
	wg.Go(func() {
		runQuery(ctx, r, "health:"+r.cfg.EdgeService, func(q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
			return client.Health().Service(r.cfg.EdgeService, "", false, q)
		}, func(entries []*api.ServiceEntry, index uint64) {
			v, errs := edgesFromHealth(entries)
			w.logSkipped(errs)
			if setHealth(w, &w.edges, v, slotEdges, index) {
				w.notify()
			}
		})
	})
	wg.Go(func() {
		runQuery(ctx, r, "health:"+r.cfg.AppService, func(q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
			return client.Health().Service(r.cfg.AppService, "", false, q)
		}, func(entries []*api.ServiceEntry, index uint64) {
			v, errs := appsFromHealth(entries)
			w.logSkipped(errs)
			if setHealth(w, &w.apps, v, slotApps, index) {
				w.notify()
			}
		})
	})
	wg.Go(func() { w.buildLoop(ctx) })
	wg.Wait()
	return ctx.Err()
}

// The health sources of a snapshot, one blocking query each.
const (
	slotEdges = iota
	slotApps
	healthSlots
)

// watcher gathers the latest state of each source for the next build.
type watcher struct {
	r       *Router
	changed chan struct{} // capacity 1: a pending rebuild absorbs later changes

	mu     sync.Mutex
	kv     kvState
	haveKV bool
	edges  []EdgeEndpoint
	apps   []Endpoint
	have   [healthSlots]bool
	index  [healthSlots]uint64
	logged map[string]bool
}

// kvState is the pods and tenants as the follower last published them, and
// what changed in the tenants since the last build.
type kvState struct {
	pods      []Pod
	tenants   *tenantIndex
	delta     []string
	deltaFull bool
	// index is the Consul index the state reflects: the log head's, or the
	// folders' while there is no log.
	index uint64
}

// setKV records the follower's new state. delta names the tenants changed
// since its previous call (full: any may have); changes between two builds
// add up.
func (w *watcher) setKV(pods []Pod, tenants *tenantIndex, delta []string, full bool, index uint64) {
	w.mu.Lock()
	k := &w.kv
	k.pods, k.tenants, k.index = pods, tenants, index
	k.deltaFull = k.deltaFull || full || !w.haveKV
	if !k.deltaFull {
		k.delta = append(k.delta, delta...)
	} else {
		k.delta = nil
	}
	w.haveKV = true
	w.mu.Unlock()
	w.notify()
}

// setHealth stores v in *dst when it differs from what is there and
// reports whether it did. Spurious wake-ups (a new index, the same data)
// stop here.
func setHealth[T any](w *watcher, dst *[]T, v []T, slot int, index uint64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.index[slot] = index
	if w.have[slot] && reflect.DeepEqual(*dst, v) {
		return false
	}
	*dst, w.have[slot] = v, true
	return true
}

// logSkipped logs values the router had to skip. KV problems come once per
// value version already; health problems would repeat at every change of the
// service, so each distinct message is logged once.
func (w *watcher) logSkipped(errs []error) {
	if len(errs) == 0 {
		return
	}
	w.mu.Lock()
	if w.logged == nil {
		w.logged = map[string]bool{}
	}
	var fresh []string
	for _, err := range errs {
		if msg := err.Error(); !w.logged[msg] {
			w.logged[msg] = true
			fresh = append(fresh, msg)
		}
	}
	w.mu.Unlock()
	for _, msg := range fresh {
		w.r.log.Warn("skipped malformed platform data", "problem", msg)
	}
}

func (w *watcher) notify() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// buildLoop rebuilds and publishes after changes, once every source has
// answered at least once.
func (w *watcher) buildLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.changed:
		}
		w.mu.Lock()
		complete := w.haveKV && w.have == [healthSlots]bool{true, true}
		k := w.kv
		st := State{Pods: k.pods, Edges: w.edges, Apps: w.apps,
			Index:    max(k.index, w.index[slotEdges], w.index[slotApps]),
			LogIndex: k.index,
			index:    k.tenants, delta: k.delta, deltaFull: k.deltaFull}
		if complete {
			w.kv.delta, w.kv.deltaFull = nil, false
		}
		w.mu.Unlock()
		if complete {
			// The builder keeps pointers into st; the slices are never
			// written again because every source replaces them whole.
			w.r.Publish(st)
		}
	}
}

// runQuery runs one blocking query until ctx ends. fetch performs the
// query; apply takes its result and the index it was read at.
func runQuery[T any](ctx context.Context, r *Router, name string,
	fetch func(*api.QueryOptions) (T, *api.QueryMeta, error), apply func(T, uint64)) {
	cfg := &r.cfg
	var index uint64
	failures := 0
	for ctx.Err() == nil {
		started := time.Now()
		q := (&api.QueryOptions{AllowStale: !cfg.Consistent, WaitIndex: index, WaitTime: cfg.WaitTime}).WithContext(ctx)
		v, meta, err := fetch(q)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			// After a failure the agent may have restarted with a new
			// raft log whose indexes are lower than ours; a query with
			// our index would then block for WaitTime. Start over.
			index = 0
			failures++
			backoff := retry.Backoff(cfg.RetryBase, cfg.RetryMax, failures)
			r.queryResult(name, started, err, backoff)
			if !retry.Sleep(ctx, backoff) {
				return
			}
			continue
		}
		failures = 0
		r.queryResult(name, started, nil, 0)
		index = nextIndex(index, meta.LastIndex)
		apply(v, meta.LastIndex)
		// RequestTime runs until the answer's head: the rest is this
		// process reading, decoding and applying it. A first answer (index
		// 0) is not a change to pace: it costs more than the next ones
		// (cold buffers, everything new), and its gap would only delay the
		// first change after a start.
		var cost time.Duration
		if q.WaitIndex > 0 {
			cost = time.Since(started) - meta.RequestTime
		}
		if !retry.Sleep(ctx, pause(cfg.MinWait, time.Since(started), cost)) {
			return
		}
	}
}

// pause is how long to wait before the next query, elapsed after the
// start of the last one, whose answer cost this process cost to take in.
// At least MinWait between two starts, so that a value or a check flapping
// many times a second cannot make the router spin; and twice the cost
// after it, so that a folder too large to read in a moment, changing all
// the time, takes a third of a CPU at most rather than all of it. Changes
// that arrive meanwhile are read together.
func pause(minWait, elapsed, cost time.Duration) time.Duration {
	return max(minWait-elapsed, 2*cost)
}

// nextIndex is the blocking index for the next query: Consul's index, unless
// it went backwards (a snapshot restore, a new cluster) or is zero, in which
// case the next query starts again from 0 and returns at once.
func nextIndex(previous, returned uint64) uint64 {
	if returned == 0 || returned < previous {
		return 0
	}
	return returned
}
