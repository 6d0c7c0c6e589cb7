// Package router holds the platform as data: pods, tenants and their
// domains, the healthy edges and app servers of each pod, as an immutable
// Snapshot that a Consul watcher rebuilds and swaps atomically; and the
// load-balancing pools, with passive health, that survive those swaps. It has
// no HTTP or DNS code: the edge and dnsd read it.
package router

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config configures a Router. Zero fields take the documented defaults.
type Config struct {
	// Zone is the DNS zone tenants live in. Default "example.test.".
	Zone string
	// Prefix is the Consul KV prefix. Default "podedge/".
	Prefix string
	// AppService and EdgeService are the Consul service names. Defaults
	// "app" and "edge".
	AppService  string
	EdgeService string
	// Policy is the load-balancing policy of every pool: "round_robin"
	// (default) or "least_request".
	Policy string
	// Health is the passive health of every pool. Zero means
	// DefaultPassiveHealth.
	Health PassiveHealth
	// Consistent makes every read go to the Consul leader. By default reads
	// may be served, slightly stale, by any server, which spreads the load
	// and keeps working while the cluster has no leader.
	Consistent bool
	// WaitTime bounds each blocking query. Default 60s.
	WaitTime time.Duration
	// KV lists the pods/ and tenants/ folders. Nil lists them through
	// consul/api; internal/consulkv reads Consul's JSON in place and, as
	// a KVStreamer, a window at a time, which matters with many tenants:
	// a full read then never holds the whole answer.
	KV KVLister
	// MinWait is the least time between two wake-ups of the same query, so
	// that a flapping check cannot make the router spin. Default 50ms. After
	// an answer that took long to read and apply (100,000 tenants: about
	// 0.4 s), the router also waits twice that long before the next query,
	// so that a large folder changing often uses a third of a CPU at most.
	MinWait time.Duration
	// RetryBase and RetryMax bound the backoff after a failed query: it
	// doubles from RetryBase up to RetryMax. Defaults 250ms and 10s.
	RetryBase time.Duration
	RetryMax  time.Duration
	// Registry keeps per-endpoint state; nil means a new one. The edge sets
	// one with a NewValue hook to attach its connection pools.
	Registry *Registry
	// Logger receives the router's logs. Nil means slog.Default().
	Logger *slog.Logger
	// Clock returns the time; nil means time.Now. Tests inject one.
	Clock func() time.Time
}

func (c *Config) setDefaults() error {
	if c.Zone == "" {
		c.Zone = "example.test."
	}
	c.Zone = strings.ToLower(c.Zone)
	if !strings.HasSuffix(c.Zone, ".") {
		c.Zone += "."
	}
	if err := checkZone(c.Zone); err != nil {
		return err
	}
	if c.Prefix == "" {
		c.Prefix = "podedge/"
	}
	if !strings.HasSuffix(c.Prefix, "/") {
		c.Prefix += "/"
	}
	if c.AppService == "" {
		c.AppService = "app"
	}
	if c.EdgeService == "" {
		c.EdgeService = "edge"
	}
	if c.Health == (PassiveHealth{}) {
		c.Health = DefaultPassiveHealth()
	}
	if err := c.Health.Validate(); err != nil {
		return fmt.Errorf("passive_health: %w", err)
	}
	if c.WaitTime == 0 {
		c.WaitTime = 60 * time.Second
	}
	if c.MinWait == 0 {
		c.MinWait = 50 * time.Millisecond
	}
	if c.RetryBase == 0 {
		c.RetryBase = 250 * time.Millisecond
	}
	if c.RetryMax == 0 {
		c.RetryMax = 10 * time.Second
	}
	if c.RetryMax < c.RetryBase {
		return fmt.Errorf("retry_max %s is shorter than retry_base %s", c.RetryMax, c.RetryBase)
	}
	if c.Registry == nil {
		c.Registry = &Registry{}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	return nil
}

// checkZone accepts a zone of one or more DNS labels with a trailing dot.
func checkZone(zone string) error {
	if zone == "." {
		return errors.New("zone: must not be the root")
	}
	for _, l := range strings.Split(zone[:len(zone)-1], ".") {
		if !ValidLabel(l) {
			return fmt.Errorf("zone: %q has an invalid label %q", zone, l)
		}
	}
	return nil
}

// Router publishes the current Snapshot. Its methods are safe for
// concurrent use; Snapshot is lock-free.
type Router struct {
	cfg     Config
	builder builder
	log     *slog.Logger

	snap atomic.Pointer[Snapshot]

	buildMu sync.Mutex // one build and publish at a time
	subsMu  sync.Mutex
	subs    []func(*Snapshot)
	ready   chan struct{}
	once    sync.Once
	// published is closed and replaced at every publish, for WaitIndex.
	publishedMu sync.Mutex
	published   chan struct{}

	logStats *logStats

	statusMu sync.Mutex
	status   Status
	queries  map[string]*queryStatus
}

// Status tells how current the router's view is.
type Status struct {
	// Synced is true once a complete view of Consul has been published.
	Synced bool
	// Healthy is true while every Consul query succeeds.
	Healthy bool
	// LastSync is when the view was last known to match Consul: the
	// current time while healthy, frozen while Consul is unreachable.
	LastSync time.Time
	// Error is the latest failure while unhealthy.
	Error string
	// Builds counts published snapshots; LastBuild is how long the latest
	// took to build.
	Builds    uint64
	LastBuild time.Duration
}

type queryStatus struct {
	ok     bool
	lastOK time.Time
	err    error
}

// New returns a Router serving an empty, unsynced snapshot until Run or
// Publish gives it data.
func New(cfg Config) (*Router, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	sel, err := SelectorFor(cfg.Policy)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	r := &Router{
		cfg: cfg,
		log: cfg.Logger.With("component", "router"),
		builder: builder{
			zone:     cfg.Zone,
			registry: cfg.Registry,
			selector: sel,
			health:   &cfg.Health,
			clock:    cfg.Clock,
			seed:     maphash.MakeSeed(),
		},
		ready:     make(chan struct{}),
		published: make(chan struct{}),
		logStats:  &logStats{},
		queries:   map[string]*queryStatus{},
	}
	r.snap.Store(emptySnapshot(cfg.Zone, r.builder.seed))
	return r, nil
}

// Zone is the router's zone, lower case with a trailing dot.
func (r *Router) Zone() string { return r.cfg.Zone }

// Prefix is the Consul KV prefix, with a trailing slash.
func (r *Router) Prefix() string { return r.cfg.Prefix }

// Snapshot returns the current snapshot; never nil.
func (r *Router) Snapshot() *Snapshot { return r.snap.Load() }

// Ready is closed once the first complete snapshot is published.
func (r *Router) Ready() <-chan struct{} { return r.ready }

// Subscribe registers fn to be called with every snapshot published from
// now on, in order, from the goroutine that publishes. fn should be quick:
// dnsd packs its answers there. If a snapshot is already published, fn is
// called with it before Subscribe returns.
func (r *Router) Subscribe(fn func(*Snapshot)) {
	r.buildMu.Lock()
	defer r.buildMu.Unlock()
	r.subsMu.Lock()
	r.subs = append(r.subs, fn)
	r.subsMu.Unlock()
	if s := r.snap.Load(); s.Synced {
		fn(s)
	}
}

// Publish builds a snapshot of st and publishes it. The watcher calls it on
// every change; tests and benchmarks may call it directly. The snapshot
// keeps pointers into st's slices, and a later st holding the very same
// Tenants slice reuses the tenant index: a caller passes new slices for new
// data and never writes to one it has published.
func (r *Router) Publish(st State) *Snapshot {
	r.buildMu.Lock()
	defer r.buildMu.Unlock()
	start := time.Now()
	s, problems := r.builder.build(st)
	took := time.Since(start)
	for _, p := range problems {
		r.log.Warn("inconsistent platform data", "problem", p.Error())
	}
	r.snap.Store(s)
	r.publishedMu.Lock()
	close(r.published)
	r.published = make(chan struct{})
	r.publishedMu.Unlock()
	r.statusMu.Lock()
	r.status.Builds++
	r.status.LastBuild = took
	r.status.Synced = true
	r.statusMu.Unlock()
	r.subsMu.Lock()
	subs := r.subs
	r.subsMu.Unlock()
	for _, fn := range subs {
		fn(s)
	}
	r.once.Do(func() { close(r.ready) })
	r.log.Debug("snapshot published", "index", s.Index, "pods", len(s.podList), "tenants", s.NumTenants(), "build", took)
	return s
}

// WaitIndex returns the published snapshot once it reflects every write of
// the leader committed at Consul index n or before (Snapshot.LogIndex >= n),
// waiting for later snapshots until ctx ends; it then returns the latest
// snapshot with ctx's error.
func (r *Router) WaitIndex(ctx context.Context, n uint64) (*Snapshot, error) {
	for {
		r.publishedMu.Lock()
		next := r.published
		r.publishedMu.Unlock()
		s := r.snap.Load()
		if s.Synced && s.LogIndex >= n {
			return s, nil
		}
		select {
		case <-ctx.Done():
			return s, ctx.Err()
		case <-next:
		}
	}
}

// Status reports how current the view is.
func (r *Router) Status() Status {
	r.statusMu.Lock()
	defer r.statusMu.Unlock()
	st := r.status
	now := r.cfg.Clock()
	st.Healthy, st.LastSync = len(r.queries) > 0, now
	for _, q := range r.queries {
		if !q.ok {
			st.Healthy = false
			if q.lastOK.Before(st.LastSync) {
				st.LastSync = q.lastOK
			}
			if q.err != nil {
				st.Error = q.err.Error()
			}
		}
	}
	if len(r.queries) == 0 {
		st.LastSync = time.Time{}
	}
	return st
}

// queryResult records the outcome of one Consul query for Status and logs
// transitions: the first failure and the recovery, not every retry.
func (r *Router) queryResult(name string, started time.Time, err error, backoff time.Duration) {
	r.statusMu.Lock()
	q, ok := r.queries[name]
	if !ok {
		q = &queryStatus{ok: true}
		r.queries[name] = q
	}
	wasOK, since := q.ok, q.lastOK
	now := r.cfg.Clock()
	if err == nil {
		q.ok, q.lastOK, q.err = true, now, nil
	} else {
		if q.ok && !q.lastOK.IsZero() {
			// Until this call began the view was current.
			q.lastOK = started
		}
		q.ok, q.err = false, err
	}
	r.statusMu.Unlock()
	synced := r.snap.Load().Synced
	switch {
	case err != nil && wasOK && synced:
		r.log.Warn("consul query failed; serving the last snapshot", "query", name, "error", err.Error(), "retry_in", backoff.String())
	case err != nil && wasOK:
		r.log.Warn("consul query failed; nothing to serve until it answers", "query", name, "error", err.Error(), "retry_in", backoff.String())
	case err != nil:
		r.log.Debug("consul query still failing", "query", name, "error", err.Error(), "retry_in", backoff.String())
	case !wasOK:
		r.log.Info("consul query recovered", "query", name, "stale_for", now.Sub(since).Round(time.Millisecond))
	}
}
