package leader

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/router"
)

// A reconciliation whose view cannot be held to the change log's head
// reads the whole platform from KV: at a new leadership before the log
// exists, after an outage the view has not caught up with. At a million
// tenants that is a 300 MB answer that Consul builds in seconds of CPU
// (8.5 s on the 2-core machine of bench/results/, more while it serves
// readers), longer than a write may wait. Bound by the write that needed
// it, the read was cut at the write's deadline and lost, and every write
// after it started another, each adding 300 MB to Consul's load, which
// then missed the leader's check TTL and cost it the lock: a new leader
// never answered its first sign-up (bench/results/2026-12-05-million.md).
//
// So the read runs on its own, under a bound that grows with the tenants
// (platformReadBound), and outlives the caller that started it: a caller
// whose deadline comes first answers "retry", and the next one to
// reconcile takes the read's result, or waits for it. One read at a time.

// kvState is what a reconciliation reads: the small folders as listed, and
// the tenants counted by pod with the owner of each domain.
type kvState struct {
	pods, seats, index map[string]*api.KVPair
	count              map[string]int
	owner              map[string]*router.Tenant
}

func newKVState() *kvState {
	return &kvState{
		pods: map[string]*api.KVPair{}, seats: map[string]*api.KVPair{}, index: map[string]*api.KVPair{},
		count: map[string]int{}, owner: map[string]*router.Tenant{},
	}
}

// collect keeps e when it is in one of the small folders, and reports
// whether it was.
func (st *kvState) collect(k keys, e *router.KVEntry, values *entryValues) bool {
	for _, f := range []struct {
		dir string
		m   map[string]*api.KVPair
	}{{k.podsDir(), st.pods}, {k.seatsDir(), st.seats}, {k.domainsDir(), st.index}} {
		if name, ok := name(e, f.dir); ok {
			f.m[name] = values.pair(e)
			return true
		}
	}
	return false
}

// claim counts t in its pod and as the owner of its domains, where it is
// the oldest claim (then the first name), as the router decides.
func (st *kvState) claim(t *router.Tenant) {
	st.count[t.Pod]++
	for _, d := range t.Domains {
		if o, taken := st.owner[d]; !taken || t.Created.Before(o.Created) || t.Created.Equal(o.Created) && t.Name < o.Name {
			st.owner[d] = t
		}
	}
}

// platformRead is a read of the platform from KV in flight, or done and
// not yet taken. res and err are set before done is closed.
type platformRead struct {
	done chan struct{}
	res  *kvState
	err  error
	at   time.Time // when it ended
}

// platformReadFresh is how long a read that ended is taken by the next
// reconciliation; an older one, left by a leadership that ended before it
// was taken, is read again. Its repairs would be refused (each is guarded
// by the index its key was read at), but its seat counts would be old.
const platformReadFresh = 30 * time.Second

// stale reports whether r ended longer than platformReadFresh ago.
func (r *platformRead) stale(now time.Time) bool {
	select {
	case <-r.done:
		return now.Sub(r.at) > platformReadFresh
	default:
		return false
	}
}

// platformReadBound bounds one read of a platform of tenants tenants: 20 µs
// a tenant, and a minute at the least (Consul built and sent 1,000,000 in
// 8.5 s on one CPU: about 120,000 a second).
func platformReadBound(tenants int) time.Duration {
	return max(time.Minute, time.Duration(tenants)*20*time.Microsecond)
}

// platformFromKV returns the platform read from KV: the result of the
// read in flight, or of a new one. The caller holds the turn; when ctx
// ends first, the read goes on for the next caller.
func (s *Store) platformFromKV(ctx context.Context) (*kvState, error) {
	s.platformMu.Lock()
	r := s.platform
	if r == nil || r.stale(time.Now()) {
		r = &platformRead{done: make(chan struct{})}
		s.platform = r
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), platformReadBound(s.view().NumTenants()))
		go func() {
			defer cancel()
			r.res, r.err = s.readPlatform(rctx)
			r.at = time.Now()
			close(r.done)
		}()
	}
	s.platformMu.Unlock()
	select {
	case <-r.done:
		s.platformMu.Lock()
		if s.platform == r {
			s.platform = nil
		}
		s.platformMu.Unlock()
		return r.res, r.err
	case <-ctx.Done():
		return nil, &Error{Kind: KindUnavailable, Msg: "the leader is still reading the tenants to reconcile its keys; retry"}
	}
}

// reading returns a channel closed when the read of the platform in
// flight, or not yet taken, is done; nil when there is none.
func (s *Store) reading() <-chan struct{} {
	s.platformMu.Lock()
	defer s.platformMu.Unlock()
	if s.platform == nil {
		return nil
	}
	return s.platform.done
}

// readPlatform reads the small folders and the tenants in one transaction,
// decoding the tenants one at a time: only the seat counts and the
// domains' owners are kept. It touches none of the store's state but
// what it returns.
func (s *Store) readPlatform(ctx context.Context) (*kvState, error) {
	k := s.keys
	st := newKVState()
	var values entryValues
	cctx, stop := boundRead(ctx, s.client)
	defer stop()
	_, err := router.ReadEach(s.kv, nil, []string{k.podsDir(), k.tenantsDir(), k.seatsDir(), k.domainsDir()}, (&api.QueryOptions{}).WithContext(cctx), func(e *router.KVEntry) error {
		if st.collect(k, e, &values) {
			return nil
		}
		if name, ok := name(e, k.tenantsDir()); ok {
			raw, _ := values.of(e)
			if t, ok := s.routable(name, raw); ok && len(t.Domains) == 0 {
				st.count[t.Pod]++
			} else if ok {
				st.claim(&t)
			}
		}
		return nil
	})
	if err = callErr(cctx, err); err != nil {
		return nil, fmt.Errorf("consul read of the platform: %w", err)
	}
	return st, nil
}

// reconciledOnce tells which session last reconciled the internal keys,
// for the auditor: its first read of the tenants waits for that of the
// reconciliation, so that a new leadership does not ask Consul for the
// whole platform twice at once.
type reconciledOnce struct {
	mu      sync.Mutex
	session string
	changed chan struct{} // closed and replaced when session changes
}

func (o *reconciledOnce) mark(session string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.session == session {
		return
	}
	o.session = session
	if o.changed != nil {
		close(o.changed)
	}
	o.changed = make(chan struct{})
}

// state reports whether session is the one that reconciled last, and
// otherwise a channel closed at the next mark.
func (o *reconciledOnce) state(session string) (<-chan struct{}, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.session == session {
		return nil, true
	}
	if o.changed == nil {
		o.changed = make(chan struct{})
	}
	return o.changed, false
}
