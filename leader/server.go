// Package leader is podedge's control plane: the HTTP API that registers
// pods and places tenants, run by several replicas of which one, elected
// with a Consul lock, writes. Every write is one Consul transaction fenced
// by the leader's session, so a deposed leader cannot write, and guarded by
// check-and-set on the pod's seat count, so no pod is ever filled past its
// capacity. Reads are served by every replica from its own router view;
// writes reaching a standby are forwarded to the leader.
package leader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/retry"
	"github.com/podedge/podedge/router"
	"github.com/prometheus/client_golang/prometheus"
)

// Server is one leader replica.
type Server struct {
	cfg    Config
	live   atomic.Pointer[Config] // cfg with the live keys of the latest reload
	log    *slog.Logger
	client *api.Client
	router *router.Router
	reg    *prometheus.Registry
	m      *metrics
	val    *validator
	zone   string // without the trailing dot
	geo    *geoDB // nil without geoip.database

	// Set by Serve.
	elector *Elector
	store   *Store
	fwd     *forwarder
	kv      router.KVLister // for the auditor's reads of the folders
	kick    chan struct{}   // asks the reconcile loop to run now

	// lastWrite is the highest index of the writes this replica answered,
	// its own or forwarded: its reads wait for their view to reach it.
	lastWrite atomic.Uint64
	viewIndex atomic.Uint64 // LogIndex of the view published last
	// reads ends when the replica stops, and blocking reads with it.
	reads     context.Context
	stopReads context.CancelFunc

	// upgrade is how the replica takes part in in-place upgrades;
	// handover, that the coming stop is one (HandOver); awaiting, that
	// this process replaced another whose lock it has not seen given up
	// yet (upgrade.go).
	upgrade   Upgrade
	handover  atomic.Bool
	awaiting  atomic.Bool
	advertise string
	changesMu sync.Mutex
	changes   chan struct{} // closed and replaced on each change of leadership
}

// New validates cfg and builds a replica; Serve or Run starts it.
func New(cfg Config, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	client, err := cfg.Consul.Client()
	if err != nil {
		return nil, err
	}
	kv, err := cfg.Consul.KVLister()
	if err != nil {
		return nil, err
	}
	rt, err := router.New(router.Config{
		Zone:       cfg.Zone,
		KV:         kv,
		Prefix:     cfg.Consul.Prefix,
		Consistent: cfg.Consul.Consistent,
		MinWait:    cfg.ViewMinWait,
		Logger:     log,
	})
	if err != nil {
		return nil, err
	}
	if kv == nil {
		kv = router.NewAPILister(client)
	}
	s := &Server{
		cfg:     cfg,
		log:     log,
		client:  client,
		kv:      kv,
		router:  rt,
		reg:     prometheus.NewRegistry(),
		zone:    strings.TrimSuffix(rt.Zone(), "."),
		kick:    make(chan struct{}, 1),
		changes: make(chan struct{}),
	}
	s.live.Store(&cfg)
	s.reads, s.stopReads = context.WithCancel(context.Background())
	s.val = newValidator(rt.Zone(), cfg.ReservedNames, cfg.MaxDomains)
	s.reg.MustRegister(router.LogCollector("leader", rt))
	s.m = newMetrics(s.reg, func() (bool, bool, time.Duration) {
		st := s.router.Status()
		var stale time.Duration
		if !st.Healthy && !st.LastSync.IsZero() {
			stale = time.Since(st.LastSync)
		}
		return st.Synced, st.Healthy, stale
	})
	if cfg.GeoIP.Database != "" {
		if s.geo, err = openGeo(cfg.GeoIP.Database, log.With("component", "geoip"), s.m); err != nil {
			return nil, fmt.Errorf("geoip.database: %w", err)
		}
	}
	return s, nil
}

// LiveKeys are the keys of the leader's configuration that a reload
// (SIGHUP) may change; a change to any other is refused.
var LiveKeys = []string{"log.level", "max_body_bytes", "read_wait", "max_query_time"}

// conf is the configuration in force for the live keys.
func (s *Server) conf() *Config { return s.live.Load() }

// Reconfigure applies the live keys of cfg, which a reload validated, to
// the requests that start from now on.
func (s *Server) Reconfigure(cfg Config) { s.live.Store(&cfg) }

// Registry holds the replica's metrics, served on /metrics.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// Router is the replica's view of the platform.
func (s *Server) Router() *router.Router { return s.router }

// Run listens on the configured address and serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	return s.Serve(ctx, ln)
}

// Serve serves the API on ln until ctx ends, then stops gracefully: it
// gives up the lock first, so that a standby takes writes at once, then lets
// requests in flight finish. The advertised address defaults to ln's.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	addr := s.cfg.Advertise
	if addr == "" {
		addr = ln.Addr().String()
	}
	s.advertise = addr
	prefix := s.router.Prefix()
	s.elector = newElector(s.client, keys{prefix: prefix}, addr, s.cfg.Election, s.log, s.m, s.leadershipChanged)
	kvr, _ := s.kv.(router.KVTxnReader)
	s.store = newStore(StoreConfig{
		Client:     s.client,
		KV:         kvr,
		Prefix:     prefix,
		Zone:       s.router.Zone(),
		Fence:      s.elector,
		View:       s.router.Snapshot,
		WaitView:   s.router.WaitIndex,
		NearKm:     s.cfg.NearKm,
		Retries:    s.cfg.WriteRetries,
		Reserved:   s.cfg.ReservedNames,
		MaxDomains: s.cfg.MaxDomains,
		LogRing:    s.cfg.LogRing,
		Logger:     s.log.With("component", "store"),
	}, s.m)
	s.fwd = newForwarder(addr, s.log.With("component", "forward"), s.m, s.wrote)

	fresh := &freshConns{conns: map[net.Conn]struct{}{}}
	srv := &http.Server{
		ConnState:         fresh.track,
		Handler:           s.routes(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      s.cfg.WriteTimeout + 5*time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	s.log.Info("leader replica serving", "listen", ln.Addr().String(), "advertise", addr, "zone", s.router.Zone(), "consul", s.cfg.Consul.Address)

	s.router.Subscribe(s.viewPublished)
	bg, stopBG := context.WithCancel(context.Background())
	elect, stopElect := context.WithCancel(context.Background())
	var wg, election sync.WaitGroup
	wg.Go(func() { s.router.Run(bg, s.client) })
	wg.Go(func() { s.reconcileLoop(bg) })
	wg.Go(func() { s.auditLoop(bg, s.kv) })
	if s.geo != nil {
		wg.Go(func() { s.geo.watch(bg, s.cfg.GeoIP.CheckInterval) })
		defer s.geo.close()
	}
	if s.upgrade.Successor {
		// Until it gives the lock up, the process this one replaces
		// leads: the election runs meanwhile, as a standby's.
		s.awaiting.Store(true)
		s.elector.keepRegistered.Store(true)
	}
	election.Go(func() {
		// A replica campaigns once its view has synced: it cannot place
		// a tenant before, and reading a million tenants for the first
		// time takes the process seconds in which its check could miss
		// its TTL and cost it the lock again and again.
		select {
		case <-s.router.Ready():
		case <-elect.Done():
			return
		}
		s.elector.Run(elect)
	})
	served := make(chan error, 1)
	go func() {
		if !s.serveAfterSync(ctx) {
			served <- nil
			return
		}
		served <- srv.Serve(ln)
	}()

	var err error
	serving := true
	select {
	case <-ctx.Done():
	case err = <-served:
		serving = false
		if err != nil {
			err = fmt.Errorf("serve: %w", err)
		}
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	drain := func() {
		drained := make(chan error, 1)
		go func() { drained <- srv.Shutdown(shutdown) }()
		fresh.closeAll()
		if e := <-drained; e != nil && !errors.Is(e, http.ErrServerClosed) {
			s.log.Warn("requests still in flight at shutdown were cut", "error", e.Error())
		}
	}
	s.stopReads()
	if s.handover.Load() {
		// The upgraded process accepts on the same listener and waits
		// for the lock: finish the writes in flight while leading, then
		// give the lock up to it.
		s.log.Info("handing over to the upgraded process: finishing requests, then giving up leadership")
		s.elector.keepRegistered.Store(true) // the upgraded process uses the same service
		s.handOff(srv, ln, fresh, serving, served)
		drain()
		stopElect()
		election.Wait()
	} else {
		s.log.Info("stopping: giving up leadership, then draining requests")
		stopElect()
		election.Wait()
		drain()
	}
	ln.Close() // when ctx ended before Serve took it
	s.fwd.close()
	stopBG()
	wg.Wait()
	return err
}

// leadershipChanged runs on every change of leadership. It must not block:
// it may run while a write holds the store.
func (s *Server) leadershipChanged(st LeaderState) {
	if s.awaiting.Load() && (st.IsLeader || st.Leader != "" && st.Leader != s.advertise) {
		// The predecessor gave the lock up: it is gone, or going, and
		// this process stands for the replica alone.
		s.awaiting.Store(false)
		if !s.handover.Load() {
			s.elector.keepRegistered.Store(false)
		}
	}
	s.changesMu.Lock()
	close(s.changes)
	s.changes = make(chan struct{})
	s.changesMu.Unlock()
	if st.IsLeader {
		s.kickReconcile()
	}
}

// reconcileLoop reconciles the internal keys when leadership is won and
// every ReconcileInterval while leading. A reconciliation that failed is
// tried again soon, with a backoff, rather than at the next write: the
// auditor starts once one succeeded.
func (s *Server) reconcileLoop(ctx context.Context) {
	var tick <-chan time.Time
	if s.cfg.ReconcileInterval > 0 {
		t := time.NewTicker(s.cfg.ReconcileInterval)
		defer t.Stop()
		tick = t.C
	}
	var again <-chan time.Time
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case <-tick:
		case <-again:
		}
		again = nil
		if _, leading := s.elector.Session(); !leading {
			failures = 0
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, s.cfg.WriteTimeout)
		err := s.store.Reconcile(rctx)
		cancel()
		if err == nil || errors.Is(err, errNotLeader) {
			failures = 0
			continue
		}
		if reading := s.store.reading(); reading != nil {
			// A read of the whole platform outlived the attempt: its
			// result is for the next one, which runs once it is in.
			s.log.Info("reconciliation waits for its read of the platform", "error", err.Error())
			select {
			case <-reading:
				s.kickReconcile()
			case <-ctx.Done():
				return
			}
			continue
		}
		failures++
		s.log.Warn("reconciliation failed; it runs again soon, or before the next write", "error", err.Error())
		again = time.After(retry.Backoff(250*time.Millisecond, 5*time.Second, failures))
	}
}

func (s *Server) kickReconcile() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// freshConns tracks connections that have not sent a request yet. Shutdown
// waits up to 5s for those (Go issue 22682), and a standby's HTTP client
// keeps such connections open in its pool; nothing is lost by closing them.
type freshConns struct {
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	empty chan struct{} // closed once conns is empty, when waited for
}

func (f *freshConns) track(c net.Conn, st http.ConnState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if st == http.StateNew {
		f.conns[c] = struct{}{}
	} else {
		delete(f.conns, c)
	}
	if len(f.conns) == 0 && f.empty != nil {
		close(f.empty)
		f.empty = nil
	}
}

// wait waits until no connection is fresh, or for at most grace.
func (f *freshConns) wait(grace time.Duration) {
	f.mu.Lock()
	if len(f.conns) == 0 {
		f.mu.Unlock()
		return
	}
	if f.empty == nil {
		f.empty = make(chan struct{})
	}
	empty := f.empty
	f.mu.Unlock()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-empty:
	case <-t.C:
	}
}

func (f *freshConns) closeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		c.Close()
	}
}
