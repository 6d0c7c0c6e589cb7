package edge

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/podedge/podedge/internal/h1"
	"github.com/podedge/podedge/router"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

// Proxy is the edge's request handler: Host → tenant → pod → a healthy
// endpoint, with retries, passive health, streaming bodies and WebSocket
// tunnels. Every field is optional; the zero value serves (once given a
// snapshot) with DefaultConfig's timeouts and limits, and no access log.
//
// Feed it snapshots with SetSnapshot (Router.Subscribe does) and give its
// Registry to the router, so that endpoints carry the Proxy's connection
// pools. A Proxy must not be copied after first use.
type Proxy struct {
	// Pod is the pod this edge serves. A request for a tenant of another
	// pod goes to a passing edge of that pod, once: a request that an edge
	// already forwarded is refused with 502. Empty means every pod is
	// served directly (tests, benchmarks).
	Pod string
	// Timeouts, Limits and Retries: zero fields take DefaultConfig's values.
	Timeouts Timeouts
	Limits   Limits
	Retries  Retries
	// TrustedProxies are peers whose X-Forwarded-* headers are kept and
	// appended to; other peers' are replaced. Edges in the snapshot are
	// trusted too, so that a request forwarded from another pod keeps its
	// client's address. Nil trusts no one else.
	TrustedProxies []netip.Prefix
	// TenantLimits is the default of the tenants' traffic limits, for
	// tenants that set none; its QueueTimeout applies to all. The zero
	// value limits no one and queues for DefaultConfig's time.
	TenantLimits TenantLimits
	// RetryAfter is the Retry-After of a 503. Zero means 5s.
	RetryAfter time.Duration
	// Metrics receives the request metrics. Nil keeps them in a private
	// registry that nothing exports.
	Metrics *Metrics
	// AccessLog receives one JSON line per request (see accessLogger).
	// Nil logs no requests.
	AccessLog slog.Handler
	// Logger receives the proxy's own logs. Nil means slog.Default().
	Logger *slog.Logger
	// Dial opens a connection to an endpoint. Nil dials TCP within
	// Timeouts.Dial. Tests and benchmarks dial in-memory listeners.
	Dial func(addr string) (net.Conn, error)
	// ErrorHandler writes the response of a request that failed: status is
	// 404, 502, 503, 504 or a 4xx of the client's making, err says why (it
	// may name internal addresses: log it, never send it). Nil writes one
	// line of plain text and, with 503, Retry-After.
	ErrorHandler func(ctx *fasthttp.RequestCtx, status int, err error)
	// ModifyResponse, if set, may change an endpoint's response before it
	// is sent. An error sends the request down the error path with 502.
	ModifyResponse func(ctx *fasthttp.RequestCtx) error

	once      sync.Once
	view      atomic.Pointer[view]
	registry  *router.Registry
	metrics   *Metrics
	access    *accessLogger
	log       *slog.Logger
	live      atomic.Pointer[live] // what SetSettings publishes
	draining  atomic.Bool
	exchanges sync.Pool
	copyBufs  sync.Pool // *[]byte of 32 KiB, for streamed bodies
	tunnels   tunnelSet
	// epoch is the origin of the rate limiters' clock.
	epoch time.Time
	// reclaimIdle closes the event loops' idle connections to an
	// endpoint, for fasthttp's path when they hold its every connection;
	// set by listenLoops before anything is served.
	reclaimIdle func(*upstream)
}

// view is a snapshot with what the proxy derives from it once per publish.
type view struct {
	snap *router.Snapshot
	pods map[*router.PodState]*podStats
	none *podStats
	// edges are the addresses of every edge in the snapshot, trusted as
	// forwarders.
	edges map[netip.Addr]struct{}
}

func (p *Proxy) init() { p.once.Do(p.setup) }

func (p *Proxy) setup() {
	// The fields are the first settings; SetSettings replaces them.
	p.store(Settings{Timeouts: p.Timeouts, Limits: p.Limits, Retries: p.Retries, RetryAfter: p.RetryAfter,
		TrustedProxies: p.TrustedProxies, TenantLimits: p.TenantLimits})
	p.epoch = time.Now()
	l := p.cur()
	p.Timeouts, p.Limits, p.Retries, p.RetryAfter = l.Timeouts, l.Limits, l.Retries, l.RetryAfter
	p.metrics = p.Metrics
	if p.metrics == nil {
		p.metrics = NewMetrics(prometheus.NewRegistry())
	}
	if p.AccessLog != nil {
		p.access = &accessLogger{h: p.AccessLog}
	}
	p.log = p.Logger
	if p.log == nil {
		p.log = slog.Default()
	}
	p.log = p.log.With("component", "proxy")
	p.copyBufs.New = func() any { b := make([]byte, 32<<10); return &b }
	p.registry = &router.Registry{
		NewValue: func(addr string) any { return p.newUpstream(addr) },
		ReleaseValue: func(addr string, v any) {
			u := v.(*upstream)
			u.hc.CloseIdleConnections()
			if s := u.stats.Load(); s != nil {
				p.metrics.forget(s.pod, addr)
			}
		},
	}
	p.view.Store(p.newView(nil))
}

// Registry is the endpoint registry to give the router (router.Config), so
// that every endpoint carries its connection pool across snapshots.
func (p *Proxy) Registry() *router.Registry {
	p.init()
	return p.registry
}

// SetSnapshot makes s the routing view. Router.Subscribe(p.SetSnapshot)
// keeps it current.
func (p *Proxy) SetSnapshot(s *router.Snapshot) {
	p.init()
	p.view.Store(p.newView(s))
}

// Snapshot returns the snapshot in use; nil before the first.
func (p *Proxy) Snapshot() *router.Snapshot {
	p.init()
	return p.view.Load().snap
}

func (p *Proxy) newView(s *router.Snapshot) *view {
	v := &view{snap: s, pods: map[*router.PodState]*podStats{}, edges: map[netip.Addr]struct{}{}}
	if old := p.view.Load(); old != nil {
		v.none = old.none
	} else {
		v.none = p.metrics.pod("")
	}
	if s == nil {
		return v
	}
	for _, ps := range s.Pods() {
		v.pods[ps] = p.metrics.pod(ps.Name)
		for _, e := range ps.Edges {
			if ap, err := netip.ParseAddrPort(e.Addr); err == nil {
				v.edges[ap.Addr().Unmap()] = struct{}{}
			}
			if e.PublicIP.IsValid() {
				v.edges[e.PublicIP] = struct{}{}
			}
			if e.PublicIPv6.IsValid() {
				v.edges[e.PublicIPv6] = struct{}{}
			}
		}
	}
	return v
}

// SetDraining marks the edge as stopping: responses then carry
// Connection: close, so that keep-alive clients reconnect elsewhere.
func (p *Proxy) SetDraining(on bool) { p.draining.Store(on) }

// ServeHTTP is the fasthttp.RequestHandler.
func (p *Proxy) ServeHTTP(ctx *fasthttp.RequestCtx) {
	// fasthttp reads a bare LF as a line's end and joins folded lines; the
	// event loops refuse both (h1.HeadScanner), and so does this path, from
	// the header lines as they came.
	if err := h1.CheckFields(ctx.Request.Header.RawHeaders(), true); err != nil {
		p.init()
		p.refuse(ctx, err.(*h1.FramingError).Status, err)
		ctx.SetConnectionClose()
		return
	}
	// The request goes on as HTTP/1.1 whatever the client speaks.
	http10 := !ctx.Request.Header.IsHTTP11()
	x, v := p.begin(ctx)
	p.end(ctx, x, p.serve(ctx, x, v))
	if s, ok := ctx.Response.BodyStream().(*respStream); ok && http10 && s.length < 0 && !ctx.IsHead() {
		closeDelimited(ctx, s)
	}
}

// begin starts an exchange for the request in ctx, with the routing view to
// serve it from.
func (p *Proxy) begin(ctx *fasthttp.RequestCtx) (*exchange, *view) {
	p.init()
	p.metrics.inflight.Inc()
	x := p.acquireExchange(ctx)
	v := p.view.Load()
	x.pod = v.none
	return x, v
}

// end readies the response in ctx, an endpoint's or, after err, the error
// path's, and lets go of the handler's hold on x. failed tells that the
// error path wrote the response.
func (p *Proxy) end(ctx *fasthttp.RequestCtx, x *exchange, err error) (failed bool) {
	if err == nil {
		err = p.finishResponse(ctx, x)
	}
	if err != nil {
		p.fail(ctx, x, err)
	}
	x.status = ctx.Response.StatusCode()
	if !ctx.Response.IsBodyStream() {
		x.bytes = int64(len(ctx.Response.Body()))
	}
	if p.access != nil {
		x.record(ctx)
	}
	x.body.ctx = nil
	x.done()
	return err != nil
}

// serve routes and forwards the request; an error goes down the error path.
func (p *Proxy) serve(ctx *fasthttp.RequestCtx, x *exchange, v *view) error {
	x.conn = connLimitOf(ctx.Conn())
	x.adm.w = &x.waiter
	pool, err := p.route(ctx, x, v, requestKeys(&ctx.Request.Header))
	if err == errSlotWait {
		err = p.awaitSlot(x)
	}
	if err != nil {
		return err
	}
	// fasthttp's client writes the target from the parsed URI: it must go
	// out as the client wrote it. (The event loops write the raw target.)
	ctx.Request.URI().DisablePathNormalizing = true
	if x.upgrade {
		return p.tunnel(ctx, x, pool)
	}
	return p.forward(ctx, x, pool)
}

// route finds the pool that serves the request, its pod's apps or, for a
// tenant of another pod, that pod's edges, and readies the request for it.
//
// found is the requestKeys of the request, which the caller has.
func (p *Proxy) route(ctx *fasthttp.RequestCtx, x *exchange, v *view, found uint32) (*router.Pool, error) {
	h := &ctx.Request.Header
	x.found = found
	if x.found&hRequestID != 0 {
		if id := h.Peek("X-Request-Id"); validRequestID(id) {
			x.reqID = append(x.reqID[:0], id...)
		}
	}
	if len(x.reqID) == 0 {
		x.reqID = appendRequestID(x.reqID[:0])
	}
	if h.IsConnect() {
		return nil, &clientError{status: fasthttp.StatusMethodNotAllowed, err: errConnect}
	}
	if v.snap == nil {
		return nil, errUnknownHost
	}
	host := requestHost(&ctx.Request)
	route, ok := v.snap.Lookup(host)
	if !ok || route.Pod == nil {
		return nil, errUnknownHost
	}
	if s := v.pods[route.Pod]; s != nil {
		x.pod = s
	}
	pool, local := route.Pod.Apps, p.Pod == "" || route.Pod.Name == p.Pod
	if !local {
		if x.found&hVia != 0 && viaHasEdge(h.PeekAll("Via")) {
			return nil, errLoop
		}
		pool = route.Pod.EdgePool
	}
	if pool.Len() == 0 {
		return nil, errNoEndpoint
	}
	if !bytes.EqualFold(host, h.Host()) {
		// An absolute-form request target names the host (RFC 9112
		// section 3.2.2); the endpoint gets it as Host.
		h.SetHostBytes(host)
	}
	if err := p.prepareRequest(ctx, x, v, local); err != nil {
		return nil, err
	}
	if local {
		// A wait for a concurrency slot returns the pool with errSlotWait.
		if err := p.admit(x, v, route); err != nil {
			return pool, err
		}
	}
	return pool, nil
}

// requestHost is the host a request is for: its Host header or, for an
// absolute-form target (RFC 9112, section 3.2.2), the target's host. Only
// the latter needs the target parsed.
func requestHost(req *fasthttp.Request) []byte {
	if uri := req.Header.RequestURI(); len(uri) > 0 && uri[0] == '/' {
		return req.Header.Host()
	}
	return req.URI().Host()
}

// forward sends the request to an endpoint of pool, and on failure to
// others, as the retry policy allows.
func (p *Proxy) forward(ctx *fasthttp.RequestCtx, x *exchange, pool *router.Pool) error {
	now := time.Now()
	p.cur().budget.request(now)
	for {
		m, err := x.next(pool)
		if err != nil {
			return err
		}
		err = p.attempt(ctx, x, m)
		if err == nil {
			return nil
		}
		x.lastErr = err
		if !p.retry(x, &ctx.Request, err) {
			return err
		}
	}
}

// retry reports whether a failed attempt goes on to another endpoint: the
// policy allows it and the budget has room.
func (p *Proxy) retry(x *exchange, req *fasthttp.Request, err error) bool {
	if !p.mayRetry(x, req, err) {
		return false
	}
	if !p.cur().budget.withdraw(time.Now()) {
		p.metrics.budgetExhausted.Inc()
		return false
	}
	x.pod.retries.Inc()
	return true
}

// attempt runs the request once on m. A streamed response leaves the
// verdict on m to the stream's end.
func (p *Proxy) attempt(ctx *fasthttp.RequestCtx, x *exchange, m *router.Member) error {
	u, err := x.startAttempt(m)
	if err != nil {
		return err
	}
	streaming, err := u.roundTrip(x, &ctx.Request, &ctx.Response)
	if err == nil {
		x.upStatus = ctx.Response.StatusCode()
	}
	if !streaming {
		x.endAttempt(err)
	}
	return err
}

// mayRetry reports whether a failed attempt may be repeated on another
// endpoint: when nothing was sent (refused connection, full pool), or when
// an idempotent request without a body failed before any response byte.
func (p *Proxy) mayRetry(x *exchange, req *fasthttp.Request, err error) bool {
	if x.attempts > p.cur().Retries.Max {
		return false
	}
	if isDial(err) || err == errNoFreeConns {
		return true
	}
	ue, ok := err.(*UpstreamError)
	return ok && ue.beforeResponse() && x.replayable(req)
}

// finishResponse readies an endpoint's response for the client.
func (p *Proxy) finishResponse(ctx *fasthttp.RequestCtx, x *exchange) error {
	h := &ctx.Response.Header
	var keep uint32
	if x.tunnel.conn != nil {
		keep = hUpgrade | hConnection
	}
	found := x.respKeys
	if !x.respKeysRead {
		found = scanKeys(h.PeekKeys())
	}
	x.scratch = removeHopByHop(h, found, keep, x.scratch)
	h.SetCanonical(keyXRequestID, x.reqID)
	if p.draining.Load() && x.tunnel.conn == nil {
		h.SetConnectionClose()
	}
	if p.ModifyResponse != nil {
		if err := p.ModifyResponse(ctx); err != nil {
			return &UpstreamError{Addr: x.upstreamAddr, stage: stageHead, Err: err}
		}
	}
	return nil
}

// fail is the one error path: it logs, replaces whatever the endpoint sent
// with the error response, and returns the request ID.
func (p *Proxy) fail(ctx *fasthttp.RequestCtx, x *exchange, err error) {
	status := statusFor(err)
	x.err = err
	if x.tunnel.conn != nil {
		x.tunnel.release()
		x.tunnel = tunnelConn{}
	}
	ctx.Response.Reset()
	if p.ErrorHandler != nil {
		p.ErrorHandler(ctx, status, err)
	} else {
		writeError(ctx, status, err, p.cur().retryAfter)
	}
	if len(x.reqID) > 0 {
		ctx.Response.Header.SetCanonical(keyXRequestID, x.reqID)
	}
	if x.adm.refused != limitNone {
		setRetryAfter(ctx, x.adm.retryAfter)
	}
	if p.draining.Load() || x.adm.refused == limitConns || status == fasthttp.StatusRequestEntityTooLarge || status == fasthttp.StatusRequestTimeout {
		ctx.Response.Header.SetConnectionClose()
	}
	if status >= 500 && p.log.Enabled(context.Background(), slog.LevelDebug) {
		p.log.Debug("request failed", "status", status, "error", err.Error(), "request_id", string(x.reqID))
	}
}

// ServerError is the fasthttp.Server ErrorHandler: requests that could not
// be read get a one-line answer, counted but never routed.
func (p *Proxy) ServerError(ctx *fasthttp.RequestCtx, err error) {
	p.init()
	p.refuse(ctx, readErrorStatus(err), err)
}

// readErrorStatus is the status of a request fasthttp could not read, on
// either data path.
func readErrorStatus(err error) int {
	switch {
	case isSmallBuffer(err):
		return fasthttp.StatusRequestHeaderFieldsTooLarge
	case isTimeout(err):
		return fasthttp.StatusRequestTimeout
	case err == fasthttp.ErrBodyTooLarge:
		return fasthttp.StatusRequestEntityTooLarge
	case strings.Contains(err.Error(), "unsupported transfer-encoding"):
		// A coding fasthttp does not know: 501, as h1.ErrCoding on the
		// event loops (RFC 9110, section 15.6.2).
		return fasthttp.StatusNotImplemented
	}
	return fasthttp.StatusBadRequest
}

// refuse answers a request that could not be read with status, counted but
// never routed.
func (p *Proxy) refuse(ctx *fasthttp.RequestCtx, status int, err error) {
	p.metrics.serverErrors.WithLabelValues(strconv.Itoa(status)).Inc()
	ctx.Response.Reset()
	writeError(ctx, status, err, nil)
}

func isSmallBuffer(err error) bool {
	_, ok := err.(*fasthttp.ErrSmallBuffer)
	return ok
}
