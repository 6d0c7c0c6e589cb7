// Package loopforwarder is the bench's forwarder rebuilt on event loops: the
// same job as bench/forwarder (every request, whatever its Host, round robin
// over fixed upstreams through keep-alive connections; Connection headers
// dropped both ways; fasthttp's header parser), but one goroutine per CPU
// runs an epoll loop over all of its connections, as nginx and HAProxy do,
// instead of one goroutine per connection on Go's poller.
//
// It exists to measure what such a data path would save the edge, on the
// same machine and workloads. It is not a proxy to run: it has the fasthttp
// forwarder's timeouts (Timeouts) but no retries, no TLS, no health, and it
// forwards only what the bench sends (bodies framed by Content-Length; a
// chunked or unframed message is refused). The loop itself is
// internal/evloop.
package loopforwarder

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/podedge/podedge/internal/evloop"
	"github.com/podedge/podedge/internal/h1"
	"github.com/valyala/fasthttp"
)

// Limits of what one message may hold; past them the client gets an error
// and its connection is closed.
const (
	maxHeadBytes = 64 << 10
	maxBodyBytes = 16 << 20
)

// Forwarder is a set of event loops, one per GOMAXPROCS, each with its own
// listening socket (SO_REUSEPORT) and epoll instance.
type Forwarder struct {
	addr  net.Addr
	loops []*loop
	wg    sync.WaitGroup
}

// Listen opens the listening sockets on addr ("ip:port"; port 0 picks one)
// and starts the loops over upstreams, each "ip:port".
func Listen(addr string, upstreams []string, timeouts Timeouts) (*Forwarder, error) {
	if len(upstreams) == 0 {
		return nil, errors.New("no upstreams")
	}
	if err := timeouts.check(); err != nil {
		return nil, err
	}
	var ups []netip.AddrPort
	for _, u := range upstreams {
		ap, err := netip.ParseAddrPort(u)
		if err != nil {
			return nil, fmt.Errorf("upstream %q is not ip:port", u)
		}
		ups = append(ups, ap)
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("listen address %q is not ip:port", addr)
	}
	f := &Forwarder{}
	fail := func(err error) (*Forwarder, error) {
		for _, l := range f.loops {
			l.close()
		}
		return nil, err
	}
	for i := 0; i < runtime.GOMAXPROCS(0); i++ {
		l, err := newLoop(ap, ups, timeouts)
		if err != nil {
			return fail(err)
		}
		f.loops = append(f.loops, l)
		if i == 0 {
			// Port 0 picked a port: the other loops listen on the same.
			if ap, err = evloop.LocalAddr(l.ev.Listener().Fd()); err != nil {
				return fail(err)
			}
			f.addr = net.TCPAddrFromAddrPort(ap)
		}
	}
	for _, l := range f.loops {
		f.wg.Go(l.run)
	}
	return f, nil
}

// Addr is the address the loops listen on.
func (f *Forwarder) Addr() net.Addr { return f.addr }

// Close stops the loops and closes every connection.
func (f *Forwarder) Close() {
	for _, l := range f.loops {
		l.stop()
	}
	f.wg.Wait()
}

// Serve runs until ctx is done.
func (f *Forwarder) Serve(ctx context.Context) {
	<-ctx.Done()
	f.Close()
}

// conn is one side of a proxied exchange: a client, or an upstream
// connection (upstream >= 0).
type conn struct {
	evloop.Conn
	l        *loop
	upstream int
	in       []byte // received and not yet used
	out      []byte // still to send
	peer     *conn  // the other side of the request in flight
	// reading is set once a request has begun to arrive: its read timeout
	// runs from then, not from each new piece.
	reading bool
	// head is set while the request in flight is a HEAD: its response
	// has no body whatever its Content-Length says.
	head       bool
	connecting bool
	// closeAfter closes the connection once out is sent.
	closeAfter bool
}

// Event is the connection's readiness, from the loop.
func (c *conn) Event(ev evloop.Events) {
	if ev.Has(evloop.Writable) {
		c.l.writable(c)
	}
	if c.Pending() {
		c.l.readable(c)
	}
}

type loop struct {
	ev       *evloop.Loop
	timeouts Timeouts
	ups      []netip.AddrPort
	idle     [][]*conn // per upstream, most recently used last
	next     int
	parser   *h1.Parser
	reqHead  fasthttp.RequestHeader
	respHead fasthttp.ResponseHeader
}

func newLoop(ap netip.AddrPort, ups []netip.AddrPort, timeouts Timeouts) (*loop, error) {
	l := &loop{idle: make([][]*conn, len(ups)), timeouts: timeouts, ups: ups}
	l.parser = h1.NewParser(maxHeadBytes)
	l.respHead.SetNoDefaultContentType(true)
	var err error
	if l.ev, _, err = evloop.NewListening(ap, l.accept); err != nil {
		return nil, err
	}
	return l, nil
}

// stop ends run.
func (l *loop) stop() { l.ev.Close() }

// close releases what newLoop opened, for a loop whose run never started.
func (l *loop) close() {
	l.ev.Close()
	l.ev.Listener().Close()
}

func (l *loop) run() {
	_ = l.ev.Run() // it only fails on a broken epoll descriptor; the loop ends either way
	l.ev.CloseAll()
}

// arm (re)starts c's one timer: when it fires, c has waited too long.
func (l *loop) arm(c *conn, d time.Duration) { c.Schedule(d) }

// timedOut ends a wait that took too long: an upstream that did not answer
// gets the client a 504; anything else is closed.
func (c *conn) timedOut() {
	c.l.end(c, "504 Gateway Timeout", "the upstream did not answer in time\n")
}

func (l *loop) accept() {
	for {
		fd, _, err := evloop.Accept(l.ev.Listener().Fd())
		if err != nil {
			return // EAGAIN: accepted all; anything else: try on the next event
		}
		c, err := l.newConn(fd, -1)
		if err != nil {
			continue // closed
		}
		l.arm(c, l.timeouts.Idle)
	}
}

// newConn registers fd with the loop for its life; fd is closed when it
// cannot be.
func (l *loop) newConn(fd, upstream int) (*conn, error) {
	c := &conn{l: l, upstream: upstream}
	if err := l.ev.Open(&c.Conn, fd, c, c.timedOut); err != nil {
		return nil, err
	}
	return c, nil
}

// drop closes c and, when a request is in flight, its peer: a client gone
// mid-exchange leaves the upstream connection in an unknown state, and an
// upstream gone mid-response leaves the client with half an answer.
func (l *loop) drop(c *conn) {
	if c.Closed() {
		return
	}
	c.Close()
	if p := c.peer; p != nil {
		c.peer, p.peer = nil, nil
		l.drop(p)
	}
}

// readable reads everything the socket holds and serves it.
func (l *loop) readable(c *conn) {
	switch _, err := c.Read(&c.in, maxHeadBytes+maxBodyBytes); err {
	case nil:
	case evloop.ErrBufferFull:
		l.drop(c) // more than any message it forwards: a peer to stop reading
		return
	default:
		l.lost(c) // the end of file, or a failed read
		return
	}
	if c.upstream < 0 {
		l.serveClient(c)
	} else {
		l.serveUpstream(c)
	}
}

// lost handles a connection the peer closed or reset.
func (l *loop) lost(c *conn) {
	l.end(c, "502 Bad Gateway", "the upstream closed the connection\n")
}

// end closes c. An upstream connection whose answer has not begun leaves
// its client with status and reason instead of a closed connection.
func (l *loop) end(c *conn, status, reason string) {
	if client := c.peer; c.upstream >= 0 && client != nil && len(c.in) == 0 {
		l.fail(c, client, status, reason)
		return
	}
	l.drop(c)
}

// serveClient sends the next complete request in c.in upstream, unless one
// is in flight or its answer is still being sent.
func (l *loop) serveClient(c *conn) {
	if c.Closed() || c.peer != nil || len(c.out) > 0 || c.closeAfter || len(c.in) == 0 {
		return
	}
	head, err := h1.CompleteHead(c.in, maxHeadBytes, true)
	if err == h1.ErrHeadTooLarge {
		l.answer(c, "431 Request Header Fields Too Large", "request head too large\n")
		return
	}
	if err != nil {
		l.answer(c, "400 Bad Request", "malformed request\n")
		return
	}
	if head == nil {
		l.awaitRequest(c)
		return
	}
	h := &l.reqHead
	headLen := len(head)
	if err := l.parser.Parse(h, head); err != nil {
		l.answer(c, "400 Bad Request", "malformed request\n")
		return
	}
	bodyLen := h.ContentLength()
	if bodyLen == -2 {
		bodyLen = 0 // no Content-Length, not chunked: no body (RFC 9112, 6.3)
	}
	switch {
	case bodyLen < 0:
		l.answer(c, "501 Not Implemented", "only bodies with a Content-Length are forwarded\n")
		return
	case bodyLen > maxBodyBytes:
		l.answer(c, "413 Request Entity Too Large", "request body too large\n")
		return
	case len(c.in) < headLen+bodyLen:
		l.awaitRequest(c) // the rest of the body is on its way
		return
	}
	c.head = h.IsHead()
	c.closeAfter = h.ConnectionClose()
	h.Del("Connection")
	u := l.upstreamConn()
	if u == nil {
		l.answer(c, "502 Bad Gateway", "cannot reach the upstream\n")
		return
	}
	u.out = h.AppendBytes(u.out[:0])
	u.out = append(u.out, c.in[headLen:headLen+bodyLen]...)
	c.in = c.in[:copy(c.in, c.in[headLen+bodyLen:])]
	c.peer, u.peer = u, c
	// The upstream's timer covers the exchange from here.
	c.reading = false
	c.Cancel()
	l.arm(u, l.timeouts.Read)
	if !u.connecting {
		l.flush(u)
	}
}

// awaitRequest starts the read timeout when a request begins to arrive.
func (l *loop) awaitRequest(c *conn) {
	if !c.reading {
		c.reading = true
		l.arm(c, l.timeouts.Read)
	}
}

// upstreamConn returns an idle connection to the next upstream, or a new
// one still connecting.
func (l *loop) upstreamConn() *conn {
	i := l.next
	l.next = (l.next + 1) % len(l.ups)
	for n := len(l.idle[i]); n > 0; n = len(l.idle[i]) {
		u := l.idle[i][n-1]
		l.idle[i] = l.idle[i][:n-1]
		if !u.Closed() {
			return u
		}
	}
	fd, connecting, err := evloop.Connect(l.ups[i])
	if err != nil {
		return nil
	}
	u, err := l.newConn(fd, i)
	if err != nil {
		return nil
	}
	u.connecting = connecting
	return u
}

func (l *loop) writable(c *conn) {
	if c.connecting {
		done, err := evloop.Connected(c.Fd())
		if err != nil {
			l.lost(c)
			return
		}
		if !done {
			return
		}
		c.connecting = false
	}
	if len(c.out) > 0 {
		l.flush(c)
	}
}

// flush sends what c.out holds; the rest waits for the socket to have room.
func (l *loop) flush(c *conn) {
	if err := c.Flush(&c.out); err != nil {
		l.lost(c)
		return
	}
	if len(c.out) > 0 {
		if c.upstream < 0 {
			l.arm(c, l.timeouts.Write) // the client must take its answer
		}
		return
	}
	if c.closeAfter {
		l.drop(c)
		return
	}
	if c.upstream < 0 && c.peer == nil {
		if len(c.in) == 0 {
			c.reading = false
			l.arm(c, l.timeouts.Idle)
			return
		}
		l.serveClient(c) // a pipelined request is waiting
	}
}

// serveUpstream hands a complete response to the client.
func (l *loop) serveUpstream(u *conn) {
	c := u.peer
	if c == nil {
		l.drop(u) // an idle connection has nothing to say
		return
	}
	head, err := h1.CompleteHead(u.in, maxHeadBytes, false)
	if err != nil {
		l.failUpstream(u, c, "response head too large or malformed\n")
		return
	}
	if head == nil {
		return
	}
	h := &l.respHead
	headLen := len(head)
	if err := l.parser.Parse(h, head); err != nil {
		l.failUpstream(u, c, "malformed response\n")
		return
	}
	bodyLen := h.ContentLength()
	status := h.StatusCode()
	if c.head || status == fasthttp.StatusNoContent || status == fasthttp.StatusNotModified {
		bodyLen = 0
	}
	switch {
	case status < 200:
		l.failUpstream(u, c, "interim responses are not forwarded\n")
		return
	case bodyLen < 0:
		l.failUpstream(u, c, "only responses with a Content-Length are forwarded\n")
		return
	case bodyLen > maxBodyBytes:
		l.failUpstream(u, c, "response too large\n")
		return
	case len(u.in) < headLen+bodyLen:
		return
	}
	reuse := !h.ConnectionClose() && len(u.in) == headLen+bodyLen
	h.Del("Connection")
	c.out = h.AppendBytes(c.out)
	c.out = append(c.out, u.in[headLen:headLen+bodyLen]...)
	u.in = u.in[:0]
	c.peer, u.peer = nil, nil
	if reuse {
		l.idle[u.upstream] = append(l.idle[u.upstream], u)
		l.arm(u, l.timeouts.UpstreamIdle)
	} else {
		l.drop(u)
	}
	l.flush(c)
}

// failUpstream gives up on u's answer: its client gets a 502.
func (l *loop) failUpstream(u, c *conn, reason string) { l.fail(u, c, "502 Bad Gateway", reason) }

// fail closes upstream connection u and answers its client c.
func (l *loop) fail(u, c *conn, status, reason string) {
	c.peer, u.peer = nil, nil
	l.drop(u)
	l.answer(c, status, reason)
}

// answer sends the proxy's own response and closes the connection after it.
func (l *loop) answer(c *conn, status, body string) {
	c.out = append(c.out, "HTTP/1.1 "+status+"\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: "+
		strconv.Itoa(len(body))+"\r\n\r\n"+body...)
	c.closeAfter = true
	c.in = c.in[:0]
	l.flush(c)
}
