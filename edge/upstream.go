package edge

import (
	"bufio"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

// upstream is the edge's connection pool to one endpoint address. The
// router's Registry attaches one to every address it routes to
// (Registry.NewValue), so pools and their idle connections survive snapshot
// swaps, and it drops them (Registry.ReleaseValue) once the address has been
// gone from Consul for a while.
//
// fasthttp.HostClient keeps the pool; the exchange itself is the edge's own
// (roundTrip), because HostClient.Do can neither tell a dead pooled
// connection from a dead endpoint, nor decide to stream a body only once the
// response head shows it is large, nor time out a long download per read
// rather than as a whole.
type upstream struct {
	addr  string
	p     *Proxy
	hc    *fasthttp.HostClient
	conns connOps
	// ap is addr parsed, for the event loops' own connections.
	ap netip.AddrPort
	// open counts the connections to the endpoint, the loops' and the
	// fasthttp pool's together, against limits.max_conns_per_endpoint;
	// loopIdle, those of them idle in a loop's pool.
	open, loopIdle atomic.Int32
	// stats are the metric children for the pod that last used the
	// address; an address moving to another pod rebinds them.
	stats atomic.Pointer[upstreamStats]
}

func (p *Proxy) newUpstream(addr string) *upstream {
	u := &upstream{addr: addr, p: p}
	u.ap, _ = netip.ParseAddrPort(addr) // not ip:port: the loops refuse it (errNotIPPort)
	u.hc = &fasthttp.HostClient{
		Addr:                     addr,
		Dial:                     u.dial,
		MaxConns:                 p.cur().Limits.MaxConnsPerEndpoint,
		MaxIdleConnDuration:      p.cur().Timeouts.UpstreamKeepalive,
		ReadBufferSize:           p.cur().Limits.MaxHeaderBytes,
		NoDefaultUserAgentHeader: true,
		DisablePathNormalizing:   true,
		// The most recently used connection is the least likely to have
		// been closed by the endpoint's keep-alive timeout, and the idle
		// ones beyond what the load needs age out.
		ConnPoolStrategy: fasthttp.LIFO,
	}
	u.conns = bindConnOps(u.hc.AcquireConn, u.hc.ReleaseConn, u.hc.CloseConn)
	return u
}

// statsFor returns the metric children of the address within pod.
func (u *upstream) statsFor(pod string) *upstreamStats {
	if s := u.stats.Load(); s != nil && s.pod == pod {
		return s
	}
	s := u.p.metrics.upstream(pod, u.addr)
	u.stats.Store(s)
	return s
}

// dial opens a connection to the endpoint, wrapping any failure in a
// DialError: nothing was sent, so the request may go elsewhere.
func (u *upstream) dial(addr string) (net.Conn, error) {
	if u.p.Dial == nil && !u.ap.IsValid() {
		// As on the loops, which make no name lookups: one answer for an
		// endpoint registered by name, whichever path its request takes.
		return nil, &DialError{Addr: addr, Err: errNotIPPort}
	}
	if !u.take() {
		// The loops' idle connections may be what holds them.
		if u.loopIdle.Load() > 0 && u.p.reclaimIdle != nil {
			u.p.reclaimIdle(u)
		}
		if !u.take() {
			return nil, errNoFreeConns
		}
	}
	var c net.Conn
	var err error
	if u.p.Dial != nil {
		c, err = u.p.Dial(addr)
	} else {
		d := net.Dialer{Timeout: u.p.cur().Timeouts.Dial, KeepAlive: 30 * time.Second}
		c, err = d.Dial("tcp", addr)
	}
	if err != nil {
		u.give()
		return nil, &DialError{Addr: addr, Err: err}
	}
	return &countedConn{Conn: c, u: u}, nil
}

// take counts a new connection to the endpoint, unless
// limits.max_conns_per_endpoint are open already.
func (u *upstream) take() bool {
	limit := int32(u.p.cur().Limits.MaxConnsPerEndpoint)
	for {
		n := u.open.Load()
		if n >= limit {
			return false
		}
		if u.open.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// give counts a connection to the endpoint out.
func (u *upstream) give() { u.open.Add(-1) }

// countedConn is a connection of the fasthttp pool, counted out of
// upstream.open when it closes.
type countedConn struct {
	net.Conn
	u      *upstream
	closed atomic.Bool
}

func (c *countedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.u.give()
	}
	return c.Conn.Close()
}

// SyscallConn reaches the socket beneath, for the idle probe (peerClosed).
func (c *countedConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.ErrUnsupported
	}
	return sc.SyscallConn()
}

// connOps reach a HostClient's pooled connections. fasthttp returns them as
// an unexported type, which a struct field cannot name; bindConnOps captures
// that type once, through inference, in three small closures per endpoint.
type connOps struct {
	// acquire returns a pooled connection or dials one; reused tells which.
	acquire func() (cc any, c net.Conn, reused bool, err error)
	// release puts a healthy connection back; close drops a spent one.
	release func(cc any)
	close   func(cc any)
}

// probeIdle is how long a pooled connection may sit before it is checked for
// a close by the endpoint before use. Busy connections are never checked; a
// request on a connection that died within this time is caught by
// roundTrip instead.
const probeIdle = 50 * time.Millisecond

type pooledConn interface {
	Conn() net.Conn
	LastUseTime() time.Time
}

func bindConnOps[C pooledConn](acquire func(time.Duration, bool) (C, error), release, closeConn func(C)) connOps {
	return connOps{
		acquire: func() (any, net.Conn, bool, error) {
			for {
				cc, err := acquire(0, false)
				if err != nil {
					return nil, nil, false, err
				}
				// A connection fresh from the dialer has never been released.
				last := cc.LastUseTime()
				if !last.IsZero() && time.Since(last) > probeIdle && peerClosed(cc.Conn()) {
					closeConn(cc)
					continue
				}
				return cc, cc.Conn(), !last.IsZero(), nil
			}
		},
		release: func(cc any) { release(cc.(C)) },
		close:   func(cc any) { closeConn(cc.(C)) },
	}
}

// roundTrip sends req to the endpoint and reads the response head into resp,
// and its body when it declares at most Limits.BufferBytes. A longer or
// chunked body is left to stream: resp gets x.stream as its body stream,
// which hands the connection back once fasthttp has written it to the
// client. streaming reports which.
//
// A pooled connection the endpoint closed while it sat idle fails at once
// with a reset; the request is then sent again on a fresh connection when it
// can be replayed (bodiless GET, HEAD, OPTIONS), and otherwise fails with an
// UpstreamError marked stale, which is not held against the endpoint.
func (u *upstream) roundTrip(x *exchange, req *fasthttp.Request, resp *fasthttp.Response) (streaming bool, err error) {
	for stale := 0; ; stale++ {
		cc, conn, reused, err := u.conns.acquire()
		if err != nil {
			if errors.Is(err, fasthttp.ErrNoFreeConns) || errors.Is(err, errNoFreeConns) {
				return false, errNoFreeConns
			}
			if _, ok := err.(*DialError); !ok {
				err = &DialError{Addr: u.addr, Err: err}
			}
			return false, err
		}
		streaming, err = u.exchangeOn(x, cc, conn, req, resp)
		if err == nil {
			return streaming, nil
		}
		ue, ok := err.(*UpstreamError)
		if !ok || !reused || !ue.beforeResponse() || ue.Timeout() || !isReset(ue.Err) {
			return false, err
		}
		// The pool hands out the most recently used connection first, so
		// the other idle ones are older still: drop them all.
		u.hc.CloseIdleConnections()
		if !x.replayable(req) || stale == maxStaleRetries {
			ue.stale = true
			return false, ue
		}
	}
}

// maxStaleRetries bounds the fresh connections one request may try after
// pooled ones turned out dead; other requests may refill the pool meanwhile.
const maxStaleRetries = 2

// exchangeOn runs one request on an open connection, which it releases or
// closes (or hands to the response stream) before returning.
func (u *upstream) exchangeOn(x *exchange, cc any, conn net.Conn, req *fasthttp.Request, resp *fasthttp.Response) (bool, error) {
	p := u.p
	resp.Reset()
	// A request head fits in the socket buffer: only a body can block the
	// write, so only a body gets a write deadline, cleared once it is sent
	// so that it cannot fire on the connection's next request. The read
	// deadline is set on every request.
	if x.hasBody {
		if err := conn.SetWriteDeadline(time.Now().Add(p.cur().Timeouts.UpstreamIdle)); err != nil {
			u.conns.close(cc)
			return false, &UpstreamError{Addr: u.addr, stage: stageWrite, Err: err}
		}
		x.body.upstream = conn
	}
	bw := u.hc.AcquireWriter(conn)
	err := req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	u.hc.ReleaseWriter(bw)
	if x.hasBody {
		x.body.upstream = nil
		if err == nil {
			err = conn.SetWriteDeadline(time.Time{})
		}
	}
	if err != nil {
		u.conns.close(cc)
		if x.body.err != nil {
			return false, x.body.err
		}
		return false, &UpstreamError{Addr: u.addr, stage: stageWrite, Err: err}
	}

	if err := conn.SetReadDeadline(time.Now().Add(p.cur().Timeouts.ResponseHeader)); err != nil {
		u.conns.close(cc)
		return false, &UpstreamError{Addr: u.addr, stage: stageWait, Err: err}
	}
	br := u.hc.AcquireReader(conn)
	fail := func(st stage, err error) (bool, error) {
		u.hc.ReleaseReader(br)
		u.conns.close(cc)
		return false, &UpstreamError{Addr: u.addr, stage: st, Err: err}
	}
	if _, err := br.Peek(1); err != nil {
		return fail(stageWait, err)
	}
	for {
		if err := resp.Header.Read(br); err != nil {
			return fail(stageHead, err)
		}
		// Interim responses (100 Continue, 103 Early Hints) are not passed
		// on: the edge answered Expect itself.
		if sc := resp.StatusCode(); sc >= 200 || sc == fasthttp.StatusSwitchingProtocols {
			break
		}
	}
	status := resp.StatusCode()
	closeConn := resp.ConnectionClose()
	if status == fasthttp.StatusSwitchingProtocols && !x.upgrade {
		return fail(stageHead, errors.New("switched protocols without being asked to"))
	}
	if x.upgrade && status == fasthttp.StatusSwitchingProtocols {
		// The tunnel takes the connection over; it leaves the pool.
		x.tunnel = tunnelConn{conn: conn, br: br, release: func() { u.hc.ReleaseReader(br); u.conns.close(cc) }}
		return false, nil
	}
	if req.Header.IsHead() || noBody(status) {
		resp.SkipBody = true
		u.done(cc, br, closeConn)
		return false, nil
	}
	if cl := resp.Header.ContentLength(); cl >= 0 && cl <= p.cur().Limits.BufferBytes {
		// Small bodies are read whole, under the response deadline.
		if err := resp.ReadBody(br, p.cur().Limits.BufferBytes); err != nil {
			return fail(stageBody, err)
		}
		u.done(cc, br, closeConn)
		return false, nil
	}
	x.stream.start(x, u, cc, conn, br, resp, closeConn)
	return true, nil
}

// done returns a connection whose exchange completed to the pool, unless the
// endpoint asked to close it.
func (u *upstream) done(cc any, br *bufio.Reader, closeConn bool) {
	u.hc.ReleaseReader(br)
	if closeConn {
		u.conns.close(cc)
	} else {
		u.conns.release(cc)
	}
}
