// Package dnsd is podedge's authoritative DNS server: <pod>.pods.<zone>
// answers with up to 13 passing edges, rotated; <tenant>.<zone> with a
// CNAME to its pod, chased in the same answer; the apex with its SOA and NS.
//
// Answers come from the router's snapshot: every time one is published,
// dnsd packs the records of every name into a zone it swaps in atomically
// (build.go), and the hot path (Handler.Handle) only parses the query,
// copies bytes, patches the ID and the question, and picks a rotation. UDP
// is served by one goroutine per SO_REUSEPORT socket, TCP by one per
// connection, both through the same Handler.
package dnsd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/router"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Server is a running dnsd: a router kept current from Consul, the
// Handler answering from its snapshots, UDP and TCP listeners on one
// address, and the admin HTTP listener.
type Server struct {
	cfg     Config
	log     *slog.Logger
	router  *router.Router
	handler *Handler
	reg     *prometheus.Registry
	m       *Metrics
	// tcpLimits are the TCP section in force; a reload replaces them.
	tcpLimits atomic.Pointer[TCP]
	// notifier sends NOTIFYs to secondaries; nil without any.
	notifier *notifier

	// portableUDP makes Listen use the net package's UDP sockets even on
	// Linux, so that tests cover them too.
	portableUDP bool

	// upgrade is how the server takes part in in-place upgrades;
	// handover, that the coming stop is one (HandOver).
	upgrade  Upgrade
	handover atomic.Bool

	mu    sync.Mutex // guards the listeners until Run
	udp   []udpSocket
	tcp   net.Listener
	admin net.Listener
}

// New validates cfg and returns a Server that answers SERVFAIL until the
// first snapshot from Consul. log nil means slog.Default().
func New(cfg Config, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := NewMetrics(reg)
	h, err := NewHandler(cfg, m, log)
	if err != nil {
		return nil, err
	}
	kv, err := cfg.Consul.KVLister()
	if err != nil {
		return nil, err
	}
	r, err := router.New(router.Config{
		Zone:       cfg.Zone,
		KV:         kv,
		Prefix:     cfg.Consul.Prefix,
		Consistent: cfg.Consul.Consistent,
		Logger:     log,
	})
	if err != nil {
		return nil, err
	}
	reg.MustRegister(router.LogCollector("dnsd", r))
	s := &Server{cfg: cfg, log: log.With("component", "dnsd"), router: r, handler: h, reg: reg, m: m}
	s.tcpLimits.Store(&cfg.TCP)
	if len(cfg.Transfer.Notify) > 0 {
		s.notifier = newNotifier(h, cfg.Transfer, log)
		h.onSerial = s.notifier.changed
	}
	s.registerStatus()
	h.challenges.register(reg)
	r.Subscribe(h.Update)
	return s, nil
}

// Router is the server's router; tests publish snapshots through it.
func (s *Server) Router() *router.Router { return s.router }

// Handler is the server's query handler.
func (s *Server) Handler() *Handler { return s.handler }

// Registry holds the server's metrics.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// Listen binds the DNS address (UDP and TCP) and the admin address. Run
// calls it when it was not called before; calling it first lets a caller
// learn the bound addresses (with port 0) before serving.
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tcp != nil {
		return nil
	}
	var (
		udp []udpSocket
		tcp net.Listener
		err error
	)
	if sockets := s.upgrade.Sockets; sockets != nil {
		udp, tcp, err = listenInherited(sockets, s.cfg.Listen, s.cfg.udpSockets(), s.cfg.UDPReadBuffer, s.portableUDP)
	} else {
		udp, tcp, err = listen(s.cfg.Listen, s.cfg.udpSockets(), s.cfg.UDPReadBuffer, s.portableUDP)
	}
	if err != nil {
		return err
	}
	listenAdmin := net.Listen
	if s.upgrade.Sockets != nil {
		listenAdmin = s.upgrade.Sockets.Listen
	}
	admin, err := listenAdmin("tcp", s.cfg.Admin)
	if err != nil {
		tcp.Close()
		for _, c := range udp {
			c.close()
		}
		return fmt.Errorf("admin: %w", err)
	}
	s.udp, s.tcp, s.admin = udp, tcp, admin
	return nil
}

// Addr is the bound DNS address, "host:port", after Listen.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tcp == nil {
		return ""
	}
	return s.tcp.Addr().String()
}

// AdminAddr is the bound admin address after Listen.
func (s *Server) AdminAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.admin == nil {
		return ""
	}
	return s.admin.Addr().String()
}

// Run serves DNS and the admin endpoints, and keeps the answers in step
// with Consul through client, until ctx ends; then it stops gracefully and
// returns nil. While Consul is unreachable it answers from the last
// snapshot. A nil client watches nothing: the caller publishes snapshots
// through Router().Publish (benchmarks, tests of the protocol alone).
func (s *Server) Run(ctx context.Context, client *api.Client) error {
	if err := s.Listen(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.log.Info("serving", "listen", s.Addr(), "udp_sockets", len(s.udp), "admin", s.AdminAddr(), "zone", s.cfg.Zone)

	s.reserveProcs()

	var wg sync.WaitGroup
	wg.Go(func() { s.handler.clock.run(ctx.Done()) })
	if s.notifier != nil {
		wg.Go(func() { s.notifier.run(ctx) })
	}
	if s.cfg.DNSSEC.Enabled {
		wg.Go(func() { s.dnssecLoop(ctx, client) })
	}
	if client != nil {
		wg.Go(func() { s.router.Run(ctx, client) })
		wg.Go(func() { s.handler.challenges.run(ctx, client.KV(), s.router.Prefix()) })
	}
	if s.upgrade.ServeAfterSync {
		s.log.Info("waiting for the first zone before serving")
		select {
		case <-s.handler.Answering():
		case <-ctx.Done():
		}
	}
	for _, c := range s.udp {
		wg.Go(func() { c.serve(s) })
	}
	tcp := newTCPServer(s)
	wg.Go(func() { tcp.serve(s.tcp) })
	admin := &http.Server{Handler: s.adminHandler(), ReadHeaderTimeout: 5 * time.Second}
	adminErr := make(chan error, 1)
	wg.Go(func() {
		if err := admin.Serve(s.admin); !errors.Is(err, http.ErrServerClosed) {
			adminErr <- err
		}
	})

	if s.upgrade.OnServing != nil && ctx.Err() == nil {
		s.upgrade.OnServing()
	}

	var err error
	select {
	case <-ctx.Done():
	case err = <-adminErr:
		err = fmt.Errorf("admin: %w", err)
	}
	if s.handover.Load() {
		s.log.Info("handing over to the upgraded process; answering what was read")
		s.stopForHandOver(tcp)
	} else {
		s.log.Info("stopping")
		for _, c := range s.udp {
			c.close()
		}
		s.tcp.Close()
		tcp.close()
	}
	cancel()
	shutCtx, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	admin.Shutdown(shutCtx)
	wg.Wait()
	return err
}

// stopForHandOver stops reading from the sockets the upgraded process
// serves too: every UDP worker answers the datagrams it read, then stops
// (at once, in parallel: each may wait up to pollInterval); TCP stops
// accepting and finishes the queries in flight (tcpServer.drain). The
// router still runs meanwhile, so the answers stay current.
func (s *Server) stopForHandOver(tcp *tcpServer) {
	var wg sync.WaitGroup
	for _, c := range s.udp {
		wg.Go(c.stop)
	}
	s.tcp.Close()
	tcp.drain(handOverGrace)
	wg.Wait()
}

// resignEvery is how often the signatures are checked for renewal;
// resignBatch bounds the tenants signed again at once, so that a renewal
// never holds the zone's builder for long.
const (
	resignEvery = time.Minute
	resignBatch = 20_000
)

// dnssecLoop loads the key from Consul when it lives there (retrying with
// backoff: until then dnsd answers SERVFAIL rather than unsigned answers),
// then renews signatures before they expire, until ctx ends.
func (s *Server) dnssecLoop(ctx context.Context, client *api.Client) {
	if s.handler.needKeyNow() {
		path := s.cfg.consulKeyPath()
		if client == nil {
			s.log.Error("DNSSEC key is in Consul, but dnsd runs without it", "key", path)
			return
		}
		delay := 250 * time.Millisecond
		for {
			pemKey, err := loadConsulKey(ctx, client.KV(), path, s.cfg.DNSSEC)
			if err == nil {
				err = s.handler.setKey(pemKey)
			}
			if err == nil {
				break
			}
			s.log.Warn("cannot load the DNSSEC key; answering SERVFAIL meanwhile", "key", path, "error", err.Error(), "retry_in", delay)
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
			delay = min(2*delay, 10*time.Second)
		}
	}
	s.log.Info("zone signed", "dnskey", s.handler.DNSKEY(), "ds", s.handler.DS())
	t := time.NewTicker(resignEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for s.handler.resign(resignBatch) && ctx.Err() == nil {
		}
	}
}

// reserveProcs raises GOMAXPROCS to one more than the UDP workers when they
// block in system calls (Linux). Each such worker holds a P while it waits
// in recvmmsg; with every P held, the runtime's monitor takes them back on
// every query and the workers must win one again when their call returns:
// under load that cost 12,000 futex calls in 4 s and 16% more CPU per
// query than with one P to spare (see README, "Performance"). The spare P
// also keeps TCP, the admin listener and the router running.
func (s *Server) reserveProcs() {
	if !blockingWorkers || s.portableUDP {
		return
	}
	if want, have := len(s.udp)+1, runtime.GOMAXPROCS(0); want > have {
		runtime.GOMAXPROCS(want)
		s.log.Info("raised GOMAXPROCS to keep a P free beside the blocking UDP workers", "from", have, "to", want)
	}
}
