// Package edge is podedge's HTTP data plane: a fasthttp load balancer that
// sends each request, by its Host, to a healthy app server of its tenant's
// pod (or to an edge of that pod), with retries, passive health, streaming
// bodies, WebSocket tunnels, Prometheus metrics and a JSON access log; and
// the edge's life in Consul, from registration to a graceful drain.
//
// Proxy is the request handler and can be used on its own; Edge wires it to
// a router, Consul, the listeners and the admin endpoints.
package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/router"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

// Options are what an Edge takes besides its configuration.
type Options struct {
	// Logger receives the edge's logs. Nil means slog.Default().
	Logger *slog.Logger
	// AccessLog is where access log lines go when access_log.enabled.
	// Nil means io.Discard.
	AccessLog io.Writer
	// TLSConfig, if set, serves HTTPS on the https listener. Without it an
	// https address is not listened on (TLS is enabled by the ACME
	// integration). New puts h2 first in its NextProtos when http2 is
	// enabled, and takes it out otherwise.
	TLSConfig *tls.Config
	// HTTPHook, if set, sees every plain-HTTP request first and returns
	// true when it answered it: ACME HTTP-01 challenges, redirects to
	// https.
	HTTPHook func(ctx *fasthttp.RequestCtx) bool
	// Consul is the Consul client; nil makes one from the consul section.
	Consul *api.Client
	// Sockets, if set, opens the listening sockets or inherits them from
	// the process this one upgrades (tableflip). Nil opens them.
	Sockets Sockets
	// ServeAfterSync makes Run accept connections only once the router
	// matched Consul: a process taking over live sockets in an upgrade
	// must not answer 503 for want of a snapshot.
	ServeAfterSync bool
	// OnServing, if set, is called once Run serves every listener.
	OnServing func()
}

// Edge is a running edge: listeners, proxy, router and Consul membership.
type Edge struct {
	cfg    Config
	opts   Options
	log    *slog.Logger
	proxy  *Proxy
	router *router.Router
	consul *api.Client
	reg    *prometheus.Registry
	access *bufferedWriter

	server   *fasthttp.Server
	h2       *h2Server // HTTP/2 on the https listener; nil when off
	admin    *http.Server
	loops    *loopServer // the plain-HTTP listener with engine loop
	httpAddr net.Addr
	httpLn   net.Listener
	httpsLn  net.Listener
	adminLn  net.Listener
	member   *membership
	draining atomic.Bool
	// handover: the stop is an upgrade's (HandOver).
	handover atomic.Bool
}

// New builds an edge from a validated configuration. Nothing listens until
// Listen.
func New(cfg Config, opts Options) (*Edge, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	e := &Edge{cfg: cfg, opts: opts, log: log, reg: prometheus.NewRegistry(), consul: opts.Consul}
	if e.consul == nil {
		c, err := cfg.Consul.Client()
		if err != nil {
			return nil, err
		}
		e.consul = c
	}
	trusted, _ := ParsePrefixes(cfg.TrustedProxies)
	e.proxy = &Proxy{
		Pod:            cfg.Pod,
		Timeouts:       cfg.Timeouts,
		Limits:         cfg.Limits,
		Retries:        cfg.Retries,
		TenantLimits:   cfg.TenantLimits,
		TrustedProxies: trusted,
		RetryAfter:     cfg.RetryAfter,
		Metrics:        NewMetrics(e.reg),
		Logger:         log,
	}
	if cfg.AccessLog.Enabled {
		out := opts.AccessLog
		if out == nil {
			out = io.Discard
		}
		if cfg.AccessLog.BufferBytes > 0 {
			e.access = newBufferedWriter(out, cfg.AccessLog.BufferBytes, cfg.AccessLog.FlushInterval)
			out = e.access
		}
		e.proxy.AccessLog = NewAccessLogHandler(out)
	}
	kv, err := cfg.Consul.KVLister()
	if err != nil {
		return nil, err
	}
	r, err := router.New(router.Config{
		Zone:       cfg.Zone,
		KV:         kv,
		Prefix:     cfg.Consul.Prefix,
		Policy:     cfg.Policy,
		Health:     cfg.PassiveHealth,
		Consistent: cfg.Consul.Consistent,
		Registry:   e.proxy.Registry(),
		Logger:     log,
	})
	if err != nil {
		return nil, err
	}
	e.router = r
	r.Subscribe(e.proxy.SetSnapshot)
	e.reg.MustRegister(NewStateCollector(e.proxy.Snapshot, r.Status), router.LogCollector("edge", r))
	e.server = e.proxy.newServer(e.handle, log)
	if opts.TLSConfig != nil && cfg.HTTPS != "" && cfg.HTTP2.Enabled {
		if e.h2, err = newH2Server(cfg.HTTP2, e.proxy, e.handle, log); err != nil {
			return nil, fmt.Errorf("http2: %w", err)
		}
		e.h2.register(e.server, opts.TLSConfig)
	} else {
		setALPN(opts.TLSConfig, false)
	}
	return e, nil
}

// Listen opens the listeners, so that a taken port fails before anything
// runs and tests can listen on port 0.
func (e *Edge) Listen() error {
	var err error
	if e.cfg.Engine == EngineLoop {
		if e.loops, err = listenLoops(e.cfg.HTTP, e.proxy, e.opts.HTTPHook, e.log, e.opts.Sockets); err != nil {
			return fmt.Errorf("http: %w", err)
		}
		e.httpAddr = e.loops.Addr()
	} else {
		if e.httpLn, err = e.listen(e.cfg.HTTP); err != nil {
			return fmt.Errorf("http: %w", err)
		}
		e.httpAddr = e.httpLn.Addr()
	}
	if e.cfg.HTTPS != "" {
		if e.opts.TLSConfig == nil {
			e.log.Warn("https listener configured but TLS is not enabled; not listening", "https", e.cfg.HTTPS)
		} else if e.httpsLn, err = e.listen(e.cfg.HTTPS); err != nil {
			e.closeListeners()
			return fmt.Errorf("https: %w", err)
		}
	}
	if e.adminLn, err = e.listen(e.cfg.Admin); err != nil {
		e.closeListeners()
		return fmt.Errorf("admin: %w", err)
	}
	checkAddr := e.adminLn.Addr().(*net.TCPAddr)
	adminHost := checkAddr.IP.String()
	if checkAddr.IP.IsUnspecified() {
		adminHost = "127.0.0.1"
	}
	advertised := e.cfg.advertised(e.httpAddr.String())
	e.member, err = newMembership(e.consul.Agent(), &e.cfg, advertised,
		net.JoinHostPort(adminHost, fmt.Sprint(checkAddr.Port)), e.log.With("component", "membership"))
	if err != nil {
		e.closeListeners()
		return err
	}
	e.admin = &http.Server{Handler: adminHandler(e, e.reg, e.routes), ReadHeaderTimeout: 10 * time.Second}
	return nil
}

func (e *Edge) closeListeners() {
	for _, l := range []net.Listener{e.httpLn, e.httpsLn, e.adminLn} {
		if l != nil {
			l.Close()
		}
	}
	if e.loops != nil {
		e.loops.close()
	}
}

// HTTPAddr, HTTPSAddr and AdminAddr are the listeners' addresses once
// Listen returned (HTTPSAddr is nil without TLS).
func (e *Edge) HTTPAddr() net.Addr { return e.httpAddr }
func (e *Edge) HTTPSAddr() net.Addr {
	if e.httpsLn == nil {
		return nil
	}
	return e.httpsLn.Addr()
}
func (e *Edge) AdminAddr() net.Addr { return e.adminLn.Addr() }

// ServiceID is the edge's service ID in Consul.
func (e *Edge) ServiceID() string { return e.member.ID() }

// Router is the edge's router; Proxy its request handler.
func (e *Edge) Router() *router.Router { return e.router }
func (e *Edge) Proxy() *Proxy          { return e.proxy }

// Registry holds the edge's metrics, served on the admin /metrics.
func (e *Edge) Registry() *prometheus.Registry { return e.reg }

// healthy is /healthz: failing until the first Consul sync, then passing,
// even while Consul is unreachable, until the edge starts to drain.
func (e *Edge) healthy() string {
	switch {
	case e.draining.Load():
		return "draining"
	case !e.router.Status().Synced:
		return "waiting for the first consul sync"
	}
	return ""
}

func (e *Edge) routes() any {
	return routesOf(e.proxy.Snapshot(), e.router.Zone(), e.cfg.Pod, time.Now())
}

// handle is the server's handler: the HTTP hook on plain HTTP, then the
// proxy.
func (e *Edge) handle(ctx *fasthttp.RequestCtx) {
	if e.opts.HTTPHook != nil && !ctx.IsTLS() && e.opts.HTTPHook(ctx) {
		return
	}
	e.proxy.ServeHTTP(ctx)
}

// Run serves until ctx ends, then stops gracefully: it leaves Consul and
// fails /healthz, keeps serving for drain_delay so that DNS and other edges
// move traffic away, stops accepting, lets in-flight requests finish within
// shutdown_timeout, and returns nil. A listener that fails ends it early
// with the error.
func (e *Edge) Run(ctx context.Context) error {
	if e.httpAddr == nil {
		if err := e.Listen(); err != nil {
			return err
		}
	}
	routerCtx, stopRouter := context.WithCancel(context.Background())
	memberCtx, stopMember := context.WithCancel(context.Background())
	var bg, member sync.WaitGroup
	bg.Go(func() { _ = e.router.Run(routerCtx, e.consul) })
	member.Go(func() { e.member.run(memberCtx) })
	defer func() {
		stopRouter()
		bg.Wait()
	}()
	// stopMembership stops re-registering and waits, so that a registration
	// in flight cannot land after the deregistration.
	stopMembership := func() {
		stopMember()
		member.Wait()
	}

	failed := make(chan error, 3)
	serve := func(name string, f func() error) {
		go func() {
			if err := f(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				failed <- fmt.Errorf("%s listener: %w", name, err)
			}
		}()
	}
	if e.opts.ServeAfterSync {
		select {
		case <-e.router.Ready():
		case <-ctx.Done():
		}
	}
	serve("admin", func() error { return e.admin.Serve(e.adminLn) })
	if e.loops != nil {
		e.loops.run()
		serve("http", func() error { return e.server.Serve(e.loops.Handoff()) })
	} else {
		serve("http", func() error { return e.server.Serve(trackListener{e.httpLn}) })
	}
	if e.httpsLn != nil {
		serve("https", func() error { return e.server.Serve(tls.NewListener(trackListener{e.httpsLn}, e.opts.TLSConfig)) })
	}
	if e.opts.OnServing != nil {
		e.opts.OnServing()
	}
	e.log.Info("edge serving", "pod", e.cfg.Pod, "http", e.httpAddr.String(), "engine", e.cfg.Engine, "admin", e.adminLn.Addr().String(),
		"service_id", e.member.ID(), "public_ip", e.cfg.PublicIP)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-failed:
		e.log.Error("listener failed; stopping", "error", runErr.Error())
	}
	e.drain(stopMembership)
	return runErr
}

// HandOver makes the coming stop (Run's ctx ending) an in-place
// upgrade's: another process serves the same sockets and registered the
// same service in Consul, so the edge neither deregisters nor waits
// drain_delay, and leaves /healthz to it. It stops accepting at once and
// finishes what is in flight, answering with Connection: close.
func (e *Edge) HandOver() { e.handover.Store(true) }

// drain is the graceful stop.
func (e *Edge) drain(stopMembership func()) {
	start := time.Now()
	e.proxy.SetDraining(true)
	if e.handover.Load() {
		stopMembership()
		actx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = e.admin.Shutdown(actx) // the next process answers Consul's checks
		cancel()
		e.log.Info("handing over to the upgraded process; finishing in-flight requests")
	} else {
		e.draining.Store(true)
		stopMembership()
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := e.member.deregister(dctx); err != nil {
			e.log.Warn("could not deregister from consul; its check will fail instead", "error", err.Error())
		} else {
			e.log.Info("deregistered from consul; draining", "drain_delay", e.cfg.DrainDelay)
		}
		cancel()
		time.Sleep(e.cfg.DrainDelay)
	}

	sctx, cancel := context.WithTimeout(context.Background(), e.cfg.ShutdownTimeout)
	defer cancel()
	if e.loops != nil {
		if err := e.loops.shutdown(sctx); err != nil {
			e.log.Warn("in-flight requests still running at shutdown_timeout; closing them", "error", err.Error())
		}
	}
	if e.h2 != nil {
		e.h2.shutdown(sctx)
	}
	if err := e.server.ShutdownWithContext(sctx); err != nil {
		e.log.Warn("in-flight requests still running at shutdown_timeout; closing them", "error", err.Error())
	}
	if e.h2 != nil {
		if n := e.h2.closeAll(); n > 0 {
			e.log.Info("closed http/2 connections", "count", n)
		}
	}
	if n := e.proxy.CloseTunnels(); n > 0 {
		e.log.Info("closed websocket tunnels", "count", n)
	}
	actx, cancel2 := context.WithTimeout(context.Background(), time.Second)
	_ = e.admin.Shutdown(actx)
	cancel2()
	if e.access != nil {
		_ = e.access.Close()
	}
	e.log.Info("edge stopped", "took", time.Since(start).Round(time.Millisecond))
}

// newServer is the fasthttp server for the proxy's listeners.
func (p *Proxy) newServer(h fasthttp.RequestHandler, log *slog.Logger) *fasthttp.Server {
	p.init()
	maxBody := math.MaxInt32
	if p.cur().Limits.MaxBodyBytes > 0 && p.cur().Limits.MaxBodyBytes < math.MaxInt32 {
		maxBody = int(p.cur().Limits.MaxBodyBytes)
	}
	return &fasthttp.Server{
		Handler:      h,
		ErrorHandler: p.ServerError,
		// A client that waits for 100 Continue is refused a body too large
		// before it sends any.
		ExpectHandler: func(ctx *fasthttp.RequestCtx) int {
			if p.cur().Limits.MaxBodyBytes > 0 && int64(ctx.Request.Header.ContentLength()) > p.cur().Limits.MaxBodyBytes {
				return fasthttp.StatusRequestEntityTooLarge
			}
			return fasthttp.StatusContinue
		},
		Logger: fasthttpLogger{log.With("component", "server")},
		// The buffer a request head must fit in: the header limit.
		ReadBufferSize: p.cur().Limits.MaxHeaderBytes,
		// From a request's first byte to the end of its head (and of a body
		// short enough to arrive with it); longer bodies move the
		// deadline as they stream (reqBody).
		ReadTimeout:  p.cur().Timeouts.ClientHeader,
		WriteTimeout: p.cur().Timeouts.ClientWrite,
		IdleTimeout:  p.cur().Timeouts.ClientIdle,
		// Bodies stream to the endpoint as they arrive; the limit is
		// enforced by the proxy, which fasthttp's streaming mode leaves to it.
		StreamRequestBody:            true,
		MaxRequestBodySize:           maxBody,
		DisablePreParseMultipartForm: true,
		// The endpoint's response goes out as it came: no Server or
		// Content-Type of fasthttp's own.
		NoDefaultServerHeader: true,
		NoDefaultContentType:  true,
		CloseOnShutdown:       true,
		TCPKeepalive:          true,
	}
}

// fasthttpLogger sends fasthttp's rare log lines (connection errors) to slog
// at debug level.
type fasthttpLogger struct{ l *slog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	if f.l.Enabled(context.Background(), slog.LevelDebug) {
		f.l.Debug(fmt.Sprintf(format, args...))
	}
}
