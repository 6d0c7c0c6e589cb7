package router

import (
	"context"
	"slices"
	"sync"

	"github.com/hashicorp/consul/api"
)

// followFolders watches the pods/ and tenants/ folders whole, as readers
// do while there is no change log, until its head appears.
func (f *follower) followFolders(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pods := &kvDecoder[Pod]{folder: f.keys.pods, decode: decodePod}
	tenants := &kvDecoder[Tenant]{folder: f.keys.tenants, decode: f.decodeTenant}
	var mu sync.Mutex
	var podsIndex, tenantsIndex uint64
	var havePods, haveTenants bool
	// caughtUp holds f.pods when they came from catchUpPods, newer than
	// an answer the pods query may have in flight; askedFor, the pods
	// catchUpPods was asked for.
	var caughtUp map[string]Pod
	var askedFor map[string]bool
	// The tenants changed since the last publication, by name (all of
	// them when whole), for the snapshot's TenantDelta.
	var delta []string
	whole := true
	publish := func() {
		if !havePods || !haveTenants || ctx.Err() != nil {
			// Ending: a log appeared, and its resync publishes next (a
			// catchUpPods cut short would leave the pods behind).
			return
		}
		f.epoch, f.seq, f.chain, f.headIndex = "", 0, "", 0
		f.w.setKV(f.podList(), f.idx, delta, whole, max(podsIndex, tenantsIndex))
		delta, whole = nil, false
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		runQuery(ctx, f.r, "kv:pods", func(q *api.QueryOptions) (kvAnswer[Pod], *api.QueryMeta, error) {
			return pods.read(f.list, q)
		}, func(a kvAnswer[Pod], index uint64) {
			f.w.logSkipped(a.fresh)
			mu.Lock()
			defer mu.Unlock()
			if lacksCaughtUp(caughtUp, a.values) {
				// Read before catchUpPods read the folder again. (Indexes
				// do not tell: an empty folder answers with the index of
				// the whole store.) A pod deleted meanwhile goes with the
				// next answer.
				caughtUp = nil
				return
			}
			caughtUp = nil
			podsIndex = index
			if a.changed || !havePods {
				havePods = true
				f.pods = map[string]Pod{}
				for _, p := range a.values {
					f.pods[p.Name] = *p
				}
				publish()
			}
		})
	})
	wg.Go(func() {
		runQuery(ctx, f.r, "kv:tenants", func(q *api.QueryOptions) (kvAnswer[Tenant], *api.QueryMeta, error) {
			return tenants.read(f.list, q)
		}, func(a kvAnswer[Tenant], index uint64) {
			f.w.logSkipped(a.fresh)
			mu.Lock()
			defer mu.Unlock()
			tenantsIndex = index
			if a.changed || !haveTenants {
				if havePods {
					if idx, ok := f.catchUpPods(ctx, a.values, &askedFor); ok {
						podsIndex, caughtUp = max(podsIndex, idx), f.pods
					}
				}
				var problems []error
				if a.whole || !haveTenants || f.idx == nil {
					// The decoder keeps its slice; the index may reorder
					// its own.
					f.idx, problems = indexTenants(f.r.builder.seed, f.r.snap.Load().zoneSuffix, slices.Clone(a.values), f.idx)
					whole = true
				} else {
					// The keys that changed, applied as the log's entries
					// are: O(change), not a new index of every tenant.
					changes := make([]tenantChange, len(a.delta))
					for i, c := range a.delta {
						changes[i] = tenantChange{name: c.name, t: c.value}
						delta = append(delta, c.name)
					}
					f.idx, problems = f.idx.apply(changes)
				}
				haveTenants = true
				f.logProblems(problems)
				publish()
			}
		})
	})
	wg.Go(func() {
		defer cancel()
		runQuery(ctx, f.r, "kv:log", func(q *api.QueryOptions) (*api.KVPair, *api.QueryMeta, error) {
			return f.kv.GetKV(f.keys.head, q)
		}, func(pair *api.KVPair, _ uint64) {
			if pair != nil {
				cancel() // a log to follow
			}
		})
	})
	wg.Wait()
}

// catchUpPods reads the pods/ folder again, at once, when tenants name a
// pod that f.pods does not hold (and that it was not asked about before),
// so that the tenants are not published without the pods they live in.
//
// The two folders are read by blocking queries that each sleep MinWait
// after an answer, and an empty pods/ folder answers at every write
// anywhere in KV (Consul gives an empty prefix the index of the whole
// store). A pod registered during such a sleep, then filled, reached the
// view after its tenants: the replica that had placed them answered 404
// for their pod. Tenants go only into registered pods, so a tenant naming
// a pod the view lacks means the pods are behind; a tenant written into an
// unknown pod costs one read of pods/, once.
func (f *follower) catchUpPods(ctx context.Context, tenants []*Tenant, askedFor *map[string]bool) (uint64, bool) {
	var missing map[string]bool
	ask := false
	for i := range tenants {
		pod := tenants[i].Pod
		if _, ok := f.pods[pod]; ok || missing[pod] {
			continue
		}
		if missing == nil {
			missing = map[string]bool{}
		}
		missing[pod] = true
		ask = ask || !(*askedFor)[pod]
	}
	*askedFor = missing
	if !ask {
		return 0, false
	}
	// Consistent: as new as the tenants just read, whichever server
	// answered them.
	a, meta, err := (&kvDecoder[Pod]{folder: f.keys.pods, decode: decodePod}).read(f.list, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		f.r.log.Debug("could not read pods/ again for tenants in a pod not yet seen", "error", err.Error())
		return 0, false
	}
	f.w.logSkipped(a.fresh)
	f.pods = make(map[string]Pod, len(a.values))
	for _, p := range a.values {
		f.pods[p.Name] = *p
	}
	return meta.LastIndex, true
}

// lacksCaughtUp reports whether pods lack one of those catchUpPods read.
func lacksCaughtUp(caughtUp map[string]Pod, pods []*Pod) bool {
	if caughtUp == nil {
		return false
	}
	n := 0
	for _, p := range pods {
		if _, ok := caughtUp[p.Name]; ok {
			n++
		}
	}
	return n < len(caughtUp)
}

// currentPods is the pods of the follower's last state.
func (w *watcher) currentPods() []Pod {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.kv.pods
}

// kvAnswer is what a kvDecoder made of one answer (decodeAll's results).
type kvAnswer[T any] struct {
	values  []*T
	fresh   []error
	changed bool
	// delta is what changed key by key, unless whole.
	delta []kvChange[T]
	whole bool
}

// read lists the decoder's folder with q and decodes the entries as they
// are read: a folder of 100,000 tenants is never held whole.
func (d *kvDecoder[T]) read(l KVLister, q *api.QueryOptions) (kvAnswer[T], *api.QueryMeta, error) {
	d.begin()
	meta, err := ListEach(l, d.folder, q, func(e *KVEntry) error {
		d.add(e)
		return nil
	})
	if err != nil {
		if d.seen > 0 || d.changed {
			d.abort() // cut short after it changed the cache
		}
		return kvAnswer[T]{}, nil, err
	}
	v, fresh, changed := d.end()
	return kvAnswer[T]{values: v, fresh: fresh, changed: changed, delta: d.delta, whole: d.whole}, meta, nil
}
