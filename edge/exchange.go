package edge

import (
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/podedge/podedge/router"
	"github.com/valyala/fasthttp"
)

// exchange is the edge's state for one request, pooled so that the request
// path allocates nothing. It lives until the handler has returned and, for a
// streamed response, until the body is written: refs counts those two
// owners, and the last one to let go records the request and pools it.
type exchange struct {
	p    *Proxy
	refs atomic.Int32

	start   time.Time
	elapsed time.Duration
	pod     *podStats
	found   uint32 // headerBit set of the request
	hasBody bool   // the request carries a body (so it cannot be replayed)
	upgrade bool   // the request asks for a protocol upgrade
	client  net.Conn
	peer    netip.Addr
	// conn is the client connection's place in tenants' connection
	// counts; nil when its connection has none.
	conn *connLimit
	adm  admission
	// waiter, ready and queueTimer are a goroutine's wait for a
	// concurrency slot (the loops wait with their own waiter).
	waiter     router.Waiter
	ready      chan struct{}
	queueTimer *time.Timer

	// respKeys is the headerBit set of the endpoint's response when the
	// loop read it off the head (respKeysRead); otherwise it is listed.
	respKeys     uint32
	respKeysRead bool

	// The attempt in progress or last made.
	member       *router.Member
	up           *upstream
	upStats      *upstreamStats
	upStatus     int
	upstreamAddr string
	attempts     int
	// tried are the members tried so far; lastErr is the last attempt's
	// failure.
	tried   uint64
	lastErr error

	status int
	bytes  int64
	err    error

	reqID   []byte
	scratch []byte
	xff     []byte

	// Copies of the request for the access log, which may be written after
	// the handler returned.
	host, method, uri, clientIP []byte
	attrs                       [13]slog.Attr

	body   reqBody
	stream respStream
	tunnel tunnelConn
	// resp holds the endpoint's response while its body streams.
	resp fasthttp.Response
}

func (p *Proxy) acquireExchange(ctx *fasthttp.RequestCtx) *exchange {
	x, _ := p.exchanges.Get().(*exchange)
	if x == nil {
		x = &exchange{p: p, ready: make(chan struct{}, 1)}
		x.waiter.Wake = func() {
			select {
			case x.ready <- struct{}{}:
			default:
			}
		}
	}
	x.refs.Store(1)
	x.start = ctx.Time()
	x.client = ctx.Conn()
	x.peer = clientAddr(ctx)
	return x
}

// next picks the next endpoint of pool that the request has not tried yet;
// with none left, it returns the error to answer with: the last attempt's,
// or errNoEndpoint.
func (x *exchange) next(pool *router.Pool) (*router.Member, error) {
	m := pool.Pick(x.tried)
	if m == nil {
		if x.lastErr != nil {
			return nil, x.lastErr
		}
		return nil, errNoEndpoint
	}
	x.tried |= m.Bit()
	return m, nil
}

// startAttempt makes m the endpoint of the next attempt and counts it.
func (x *exchange) startAttempt(m *router.Member) (*upstream, error) {
	u, ok := m.Value().(*upstream)
	if !ok {
		// The router was built without this proxy's Registry: a
		// configuration error, not the endpoint's fault.
		return nil, errNoRegistry
	}
	x.member, x.up, x.upstreamAddr = m, u, m.Addr
	x.upStats = u.statsFor(x.pod.name)
	x.attempts++
	x.upStats.requests.Inc()
	m.Begin()
	return u, nil
}

// replayable reports whether req may be sent again after reaching an
// endpoint: an idempotent method without a body.
func (x *exchange) replayable(req *fasthttp.Request) bool {
	return !x.hasBody && idempotent(&req.Header)
}

// endAttempt gives passive health and the metrics the outcome of the
// attempt on x.member: err, or the status the endpoint answered. A 502, 503
// or 504 from the endpoint counts as a failure; a client's fault, a stale
// pooled connection or a full pool count as nothing.
func (x *exchange) endAttempt(err error) {
	m, st := x.member, x.upStats
	if err == nil {
		switch x.upStatus {
		case fasthttp.StatusBadGateway, fasthttp.StatusServiceUnavailable, fasthttp.StatusGatewayTimeout:
			st.badStatus()
			x.failure(m, st)
		default:
			m.Success()
		}
		return
	}
	if ue, ok := err.(*UpstreamError); ok && ue.stale {
		m.Done()
		return
	}
	if _, ok := err.(*clientError); ok || err == errNoFreeConns {
		m.Done()
		return
	}
	st.failed(err)
	x.failure(m, st)
}

func (x *exchange) failure(m *router.Member, st *upstreamStats) {
	if m.Failure() {
		st.ejections.Inc()
		x.p.log.Warn("endpoint ejected by passive health", "pod", st.pod, "upstream", m.Addr,
			"until", m.EjectedUntil(time.Now()).Format(time.RFC3339Nano))
	}
}

// record copies what the access log needs out of the request before the
// handler returns.
func (x *exchange) record(ctx *fasthttp.RequestCtx) {
	x.host = append(x.host[:0], ctx.Request.Header.Host()...)
	x.method = append(x.method[:0], ctx.Request.Header.Method()...)
	x.uri = append(x.uri[:0], ctx.Request.Header.RequestURI()...)
	x.clientIP = x.clientIP[:0]
	if x.peer.IsValid() {
		x.clientIP = x.peer.AppendTo(x.clientIP)
	}
}

// done lets go of one reference; the last records the request and pools x.
func (x *exchange) done() {
	if x.refs.Add(-1) > 0 {
		return
	}
	p := x.p
	end := time.Now()
	x.elapsed = end.Sub(x.start)
	x.pod.observe(x.status, x.elapsed)
	p.metrics.inflight.Dec()
	if p.access != nil {
		p.access.log(x, end)
	}
	x.endAdmission()
	x.reset()
	p.exchanges.Put(x)
}

// reset clears x for its next request, keeping its buffers.
func (x *exchange) reset() {
	x.pod, x.found, x.hasBody, x.upgrade, x.client, x.peer, x.conn = nil, 0, false, false, nil, netip.Addr{}, nil
	x.respKeys, x.respKeysRead = 0, false
	x.member, x.up, x.upStats, x.upStatus, x.upstreamAddr, x.attempts = nil, nil, nil, 0, "", 0
	x.tried, x.lastErr = 0, nil
	x.status, x.bytes, x.err = 0, 0, nil
	x.reqID, x.scratch, x.xff = x.reqID[:0], x.scratch[:0], x.xff[:0]
	x.host, x.method, x.uri, x.clientIP = x.host[:0], x.method[:0], x.uri[:0], x.clientIP[:0]
	x.attrs = [len(x.attrs)]slog.Attr{}
	x.body = reqBody{}
	if x.stream.x != nil {
		x.resp.Reset() // only fasthttp's streamed responses use it
	}
	x.stream = respStream{}
	x.tunnel = tunnelConn{}
}

// noBody reports whether a response with status has no body whatever its
// head says (RFC 9110, section 6.4.1): the one list every path uses.
func noBody(status int) bool {
	return status < 200 || status == fasthttp.StatusNoContent || status == fasthttp.StatusNotModified
}
