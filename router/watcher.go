package router

import (
	"context"
	"reflect"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/retry"
)

// Run keeps the snapshot in step with Consul until ctx ends. It runs one
// blocking query per source (pods and tenants in KV, health of the edge and
// app services), rebuilds when any result changed, and publishes the first
// snapshot only once every source has answered. While Consul is unreachable
// the last snapshot stays published and Status reports its age.
func (r *Router) Run(ctx context.Context, client *api.Client) error {
	w := &watcher{r: r, client: client, changed: make(chan struct{}, 1)}
	pods := &kvDecoder[Pod]{folder: r.cfg.Prefix + "pods/", decode: decodePod}
	tenants := &kvDecoder[Tenant]{folder: r.cfg.Prefix + "tenants/", decode: decodeTenant}
	kv := r.cfg.KV
	if kv == nil {
		kv = apiLister{client.KV()}
	}

	var wg sync.WaitGroup
	wg.Go(func() {
		runQuery(ctx, w, slotPods, "kv:pods", func(q *api.QueryOptions) (*KVList, *api.QueryMeta, error) {
			return kv.ListKV(pods.folder, q)
		}, func(list *KVList) bool {
			defer list.release()
			v, errs, changed := pods.decodeAll(list.Entries)
			w.logSkipped(errs)
			return store(w, &w.pods, v, slotPods, changed)
		})
	})
	wg.Go(func() {
		runQuery(ctx, w, slotTenants, "kv:tenants", func(q *api.QueryOptions) (*KVList, *api.QueryMeta, error) {
			return kv.ListKV(tenants.folder, q)
		}, func(list *KVList) bool {
			defer list.release()
			v, errs, changed := tenants.decodeAll(list.Entries)
			w.logSkipped(errs)
			return store(w, &w.tenants, v, slotTenants, changed)
		})
	})
	wg.Go(func() {
		runQuery(ctx, w, slotEdges, "health:"+r.cfg.EdgeService, func(q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
			return client.Health().Service(r.cfg.EdgeService, "", false, q)
		}, func(entries []*api.ServiceEntry) bool {
			v, errs := edgesFromHealth(entries)
			w.logSkipped(errs)
			return set(w, &w.edges, v, slotEdges)
		})
	})
	wg.Go(func() {
		runQuery(ctx, w, slotApps, "health:"+r.cfg.AppService, func(q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
			return client.Health().Service(r.cfg.AppService, "", false, q)
		}, func(entries []*api.ServiceEntry) bool {
			v, errs := appsFromHealth(entries)
			w.logSkipped(errs)
			return set(w, &w.apps, v, slotApps)
		})
	})
	wg.Go(func() { w.buildLoop(ctx) })
	wg.Wait()
	return ctx.Err()
}

// The sources of a snapshot, one blocking query each.
const (
	slotPods = iota
	slotTenants
	slotEdges
	slotApps
	slots
)

// watcher gathers the latest decoded result of each query.
type watcher struct {
	r       *Router
	client  *api.Client
	changed chan struct{} // capacity 1: a pending rebuild absorbs later changes

	mu      sync.Mutex
	pods    []Pod
	tenants []Tenant
	edges   []EdgeEndpoint
	apps    []Endpoint
	have    [slots]bool
	index   [slots]uint64
	logged  map[string]bool
}

// set stores v in *dst when it differs from what is there and reports
// whether it did. Spurious wake-ups (a new index, the same data) stop here.
func set[T any](w *watcher, dst *[]T, v []T, slot int) bool {
	w.mu.Lock()
	same := w.have[slot] && reflect.DeepEqual(*dst, v)
	w.mu.Unlock()
	return !same && store(w, dst, v, slot, true)
}

// store stores v in *dst when changed (or on the first result) and reports
// whether it did.
func store[T any](w *watcher, dst *[]T, v []T, slot int, changed bool) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.have[slot] && !changed {
		return false
	}
	*dst, w.have[slot] = v, true
	return true
}

func (w *watcher) setIndex(slot int, index uint64) {
	w.mu.Lock()
	w.index[slot] = index
	w.mu.Unlock()
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
		complete := w.have == [slots]bool{true, true, true, true}
		index := max(w.index[0], w.index[1], w.index[2], w.index[3])
		st := State{Pods: w.pods, Tenants: w.tenants, Edges: w.edges, Apps: w.apps, Index: index, LogIndex: index}
		w.mu.Unlock()
		if complete {
			// The builder keeps pointers into st; the slices are never
			// written again because set replaces them whole.
			w.r.Publish(st)
		}
	}
}

// runQuery runs one blocking query until ctx ends. fetch performs the query;
// apply stores its result and reports whether it changed anything.
func runQuery[T any](ctx context.Context, w *watcher, slot int, name string,
	fetch func(*api.QueryOptions) (T, *api.QueryMeta, error), apply func(T) bool) {
	cfg := &w.r.cfg
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
			w.r.queryResult(name, started, err, backoff)
			if !retry.Sleep(ctx, backoff) {
				return
			}
			continue
		}
		failures = 0
		w.r.queryResult(name, started, nil, 0)
		index = nextIndex(index, meta.LastIndex)
		w.setIndex(slot, meta.LastIndex)
		if apply(v) {
			w.notify()
		}
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
