// Package certs gives the edge's HTTPS listener a certificate for every
// tenant hostname and custom domain, from an ACME CA (Let's Encrypt by
// default) and shared by every edge through Consul KV, or from the
// operator:
//
//   - one certificate for *.<zone> and <zone>, ordered by DNS-01 (dnsd
//     answers the tokens written to KV), serves every tenant hostname: a
//     new tenant costs no order (zone.go, dns01.go);
//   - a handshake for a custom domain the router knows and no edge has a
//     certificate for orders one; a name it does not know fails at once
//     and orders nothing;
//   - operators' certificates, from files and from KV, are served before
//     any of those, by exact name then by wildcard, and reloaded when they
//     change (operator.go);
//   - the certificates, the ACME account key and the answers to challenges
//     live in KV under <prefix>certs/ (Cache is an autocert.Cache there),
//     so every edge serves the same certificate and any edge answers a
//     challenge another edge started: HTTP-01 on the plain-HTTP listener
//     (HTTPHook), TLS-ALPN-01 on the HTTPS one;
//   - a lock per name in KV lets one edge order while the others wait, then
//     find its certificate; renewal goes through the same lock, so a
//     certificate is renewed once, not once per edge;
//   - certificates are held in memory, so a handshake never waits on
//     Consul once its certificate is loaded, and the edge keeps serving
//     them while Consul is unreachable;
//   - a failed order is logged, counted and recorded in KV, and the name
//     backs off (exponentially, capped) on every edge;
//   - session ticket keys are shared in KV and rotated, so a client resumes
//     its session on any edge.
//
// The ACME orders are placed with golang.org/x/crypto/acme rather than
// through an autocert.Manager, whose renewal timers cannot be made to take
// a lock or to stop, and which cannot be asked to renew a certificate it
// holds. The data it would store is stored the same way (Cache).
package certs

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/podedge/podedge/router"
	"github.com/prometheus/client_golang/prometheus"
)

// Manager provides certificates to the edge's HTTPS listener (TLSConfig),
// answers HTTP-01 challenges and redirects plain HTTP (HTTPHook). Feed it
// the router's snapshots (Follow), register its metrics (Register) and
// Run it. Its methods are safe for concurrent use.
type Manager struct {
	cfg        Config
	log        *slog.Logger
	cache      *Cache
	locks      *locker
	orderer    *orderer
	challenges *challenges
	mem        *memory
	tickets    *tickets
	operators  *operators
	metrics    *metrics
	tlsConfig  *tls.Config
	zone       zoneNames

	snap    atomic.Pointer[router.Snapshot]
	edgeIPs atomic.Pointer[map[netip.Addr]struct{}]
	synced  chan struct{} // closed by the first synced snapshot
	once    sync.Once

	// ctx bounds the issuances, which may start with the first handshake,
	// before Run; Run's end cancels it and waits for them (wg).
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	names   map[string]*nameState
	stopped bool

	locBufs sync.Pool // *[]byte for redirect locations
	running atomic.Bool
}

// New validates cfg and returns a Manager. Nothing touches Consul or the
// CA until a handshake needs it or Run starts.
func New(cfg Config) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Consul == nil {
		return nil, errors.New("certs: a Consul client is required")
	}
	empty, err := router.New(router.Config{Prefix: cfg.Prefix})
	if err != nil {
		return nil, err
	}
	log := cfg.Logger.With("component", "certs")
	m := &Manager{
		cfg:    cfg,
		log:    log,
		cache:  NewCache(cfg.Consul, cfg.Prefix, cfg.Holder),
		mem:    newMemory(),
		names:  map[string]*nameState{},
		synced: make(chan struct{}),
		zone:   newZoneNames(cfg.Zone),
	}
	m.snap.Store(empty.Snapshot())
	noEdges := map[netip.Addr]struct{}{}
	m.edgeIPs.Store(&noEdges)
	m.locBufs.New = func() any { b := make([]byte, 0, 256); return &b }
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.locks = &locker{client: cfg.Consul, root: m.cache.root + folderLocks, holder: cfg.Holder}
	m.challenges = newChallenges(m.cache, log)
	m.tlsConfig = newTLSConfig(m.getCertificate)
	m.tickets = &tickets{
		kv: cfg.Consul.KV(), key: cfg.Prefix + "tls/ticket-keys", conf: m.tlsConfig,
		rotation: cfg.TicketRotation, keep: cfg.TicketKeys, log: log,
	}
	m.operators = newOperators(&m.cfg, m.cache, log, nil)
	m.metrics = newMetrics(metricSources{mem: m.mem, zoneName: m.zone.name, operators: m.operators, ticketAge: m.tickets.age})
	m.tickets.metrics, m.operators.metrics = m.metrics, m.metrics
	if m.orderer, err = newOrderer(&m.cfg, m.cache, m.challenges, m.metrics); err != nil {
		return nil, err
	}
	// Operators' files are read now, so that the first handshakes have
	// them; a bad one is logged and counted, and the edge starts without it.
	m.operators.checkFiles(time.Now())
	return m, nil
}

// TLSConfig is the configuration of the HTTPS listener (the edge's
// Options.TLSConfig). It is the same value for the Manager's life: session
// ticket keys are installed in it.
func (m *Manager) TLSConfig() *tls.Config { return m.tlsConfig }

// Cache is the Manager's store in Consul KV.
func (m *Manager) Cache() *Cache { return m.cache }

// Follow makes the Manager follow r's snapshots: the names it serves and
// the edges it does not redirect.
func (m *Manager) Follow(r *router.Router) { r.Subscribe(m.SetSnapshot) }

// SetSnapshot installs the router's snapshot: the host policy (which
// names get certificates) and the addresses of the edges.
func (m *Manager) SetSnapshot(s *router.Snapshot) {
	if s == nil {
		return
	}
	ips := map[netip.Addr]struct{}{}
	for _, p := range s.Pods() {
		for _, e := range p.Edges {
			ips[e.PublicIP] = struct{}{}
			if e.PublicIPv6.IsValid() {
				ips[e.PublicIPv6] = struct{}{}
			}
			if ap, err := netip.ParseAddrPort(e.Addr); err == nil {
				ips[ap.Addr().Unmap()] = struct{}{}
			}
		}
	}
	m.edgeIPs.Store(&ips)
	m.snap.Store(s)
	if s.Synced {
		m.once.Do(func() { close(m.synced) })
	}
}

func (m *Manager) snapshot() *router.Snapshot { return m.snap.Load() }

// Register adds the Manager's metrics (edge_tls_*) to reg, the edge's own
// registry.
func (m *Manager) Register(reg prometheus.Registerer) error {
	for _, c := range m.metrics.collectors {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("certs metrics: %w", err)
		}
	}
	return nil
}

// Run follows Consul (the challenges in flight, the certificates other
// edges store, the session ticket keys) and renews certificates until ctx
// ends; then it cancels the issuances in flight, releases their locks and
// returns nil. It may be called once.
func (m *Manager) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("certs: Run called twice")
	}
	var bg sync.WaitGroup
	// The zone's certificate, from KV or ordered now rather than at the
	// first tenant's handshake; the renewal loop tries again if this fails.
	_, _ = m.begin(m.zone.name, nil)
	bg.Go(func() { m.operators.run(ctx) })
	bg.Go(func() { m.challenges.watch(ctx) })
	bg.Go(func() { m.tickets.run(ctx) })
	bg.Go(func() {
		select {
		case <-ctx.Done():
			return
		case <-m.synced:
		}
		m.watchIndex(ctx)
	})
	bg.Go(func() { m.renewLoop(ctx) })
	m.log.Info("certificates", "ca", m.cfg.Directory, "zone", m.zone.name, "challenges", m.cfg.Challenges,
		"operator_files", len(m.cfg.Certificates), "redirect", m.cfg.Redirect)
	<-ctx.Done()
	m.mu.Lock()
	m.stopped = true
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
	bg.Wait()
	return nil
}
