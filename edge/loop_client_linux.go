package edge

import (
	"errors"
	"io"
	"net"
	"os"
	"time"

	"github.com/podedge/podedge/internal/evloop"
	"github.com/podedge/podedge/internal/h1"
	"github.com/valyala/fasthttp"
)

// The loop's client connections: reading requests, their timers and states,
// refusals, and the hand-off to fasthttp's server.
// clientState is where a client connection is between its reads and writes.
type clientState uint8

const (
	clientIdle     clientState = iota // between requests
	clientHead                        // a request's head has begun to arrive
	clientBody                        // its head is whole, its body arriving
	clientQueued                      // a request waits for its tenant's concurrency slot
	clientExchange                    // a request is with an endpoint
	clientSending                     // its response is going out
)

// clientConn is a client's connection while the loop holds it. Its
// socket, timer, end of file and unread data are evloop.Conn's; where it is
// between requests is its state.
type clientConn struct {
	evloop.Conn
	l     *edgeLoop
	in    []byte // received and not yet served
	out   []byte // still to send
	addrs connAddrs
	state clientState
	// scan checks the request head as it arrives, from where it stopped.
	scan h1.HeadScanner
	ex   *loopExchange // the exchange in flight
	// closeAfter: the connection closes once out is sent (Connection:
	// close, either way, or a refusal).
	closeAfter bool
	// queued: out waits in the loop's clientWrites.
	queued bool
}

func (c *clientConn) Event(ev evloop.Events) {
	if ev.Has(evloop.Writable) && !c.Closed() {
		c.l.flushClient(c)
	}
	if c.Pending() { // not taken by the flush already
		c.l.readClient(c)
	}
}

// maxPipelined bounds what a client may send ahead while its exchange is in
// flight; the rest stays in the socket until the exchange is done.
const maxPipelined = 64 << 10

func (l *edgeLoop) readClient(c *clientConn) {
	if c.ex != nil && len(c.in) >= maxPipelined {
		return // the rest stays pending in the socket (flushClient reads it)
	}
	if c.in == nil {
		c.in = l.borrow()
	}
	_, err := c.Read(&c.in, l.p.cur().Limits.MaxHeaderBytes+l.p.cur().Limits.BufferBytes+maxPipelined)
	switch err {
	case nil, evloop.ErrBufferFull:
	case io.EOF:
		if c.ex != nil {
			// The client left while its request was being served: as
			// nginx does, the exchange is abandoned (499), not finished
			// for no one. A request that came with the end of file is
			// still served.
			l.dropClient(c)
			return
		}
	default:
		l.dropClient(c)
		return
	}
	if c.ex == nil {
		l.serveClient(c)
	}
}

// serveClient starts on the next request in c.in, if it is complete and the
// connection is free for it.
func (l *edgeLoop) serveClient(c *clientConn) {
	for !c.Closed() && c.ex == nil && len(c.out) == 0 && !c.closeAfter {
		if len(c.in) == 0 {
			if c.EOF() {
				l.dropClient(c)
			}
			return
		}
		if !l.startRequest(c) {
			return
		}
	}
}

// startRequest parses the request at the start of c.in and starts its
// exchange. It returns false when the request is incomplete or the
// connection left the loop; true when the request was answered at once (the
// caller may go on to the next one) or went to an endpoint.
func (l *edgeLoop) startRequest(c *clientConn) bool {
	p := l.p
	if c.state != clientHead && c.state != clientBody {
		// Empty lines before a request are ignored (RFC 9112, 2.2); they
		// do not start one, nor its head's clock.
		if n := h1.SkipEmptyLines(c.in); n > 0 {
			c.in = c.in[:copy(c.in, c.in[n:])]
		}
		if len(c.in) == 0 || len(c.in) == 1 && c.in[0] == '\r' {
			if c.EOF() {
				l.dropClient(c)
			}
			return false
		}
	}
	head, err := c.scan.Scan(c.in, p.cur().Limits.MaxHeaderBytes, true)
	// fasthttp's server refuses a request line it cannot parse as soon
	// as the line is whole, before it looks at any field; so do the
	// loops, with its parser, rather than wait for the rest of the head
	// or answer for a field after it.
	if line := c.scan.StartLine(c.in); line != nil && (head == nil || err != nil) {
		if err := l.checkStartLine(line); err != nil {
			l.refuse(c, fasthttp.StatusBadRequest, err)
			return false
		}
	}
	// A coding other than chunked is answered once the head parses, as
	// on fasthttp's path (where its parser and the URI come first).
	coding := err == h1.ErrCoding && head != nil
	if err != nil && !coding {
		l.refuseHead(c, err)
		return false
	}
	if head == nil {
		l.awaitRequest(c, clientHead)
		return false
	}
	ex := l.acquire(c)
	ctx := &ex.ctx
	req := &ctx.Request
	if err := l.parser.Parse(&req.Header, head); err != nil {
		l.release(ex)
		l.refuse(c, readErrorStatus(err), err)
		return false
	}
	// fasthttp's server refuses a Host or target its URI parser rejects
	// (a bad port, brackets, a bad escape); so do the loops (RFC 9112,
	// section 3.2: a bad Host gets 400).
	if err := l.uriCheck.Parse(req.Header.Host(), req.Header.RequestURI()); err != nil {
		l.release(ex)
		l.refuse(c, fasthttp.StatusBadRequest, err)
		return false
	}
	if coding {
		l.release(ex)
		l.refuseHead(c, h1.ErrCoding)
		return false
	}
	h := &req.Header
	bodyLen := h.ContentLength()
	if bodyLen == -2 {
		bodyLen = 0 // neither Content-Length nor chunked: no body (RFC 9112, 6.3)
	}
	// fasthttp's server takes what the loop does not: bodies it would not
	// buffer, or over the limit (its 413), and the rest named above.
	found := requestKeys(h)
	if bodyLen < 0 || bodyLen > p.cur().Limits.BufferBytes || !h.IsHTTP11() ||
		p.cur().Limits.MaxBodyBytes > 0 && int64(bodyLen) > p.cur().Limits.MaxBodyBytes ||
		found&(hUpgrade|hExpect) != 0 {
		l.release(ex)
		l.handOff(c)
		return false
	}
	if len(c.in) < len(head)+bodyLen {
		l.release(ex)
		l.awaitRequest(c, clientBody)
		return false
	}
	ex.reqLen = len(head) + bodyLen
	if bodyLen > 0 {
		req.SetBodyRaw(c.in[len(head):ex.reqLen])
	}
	ex.head = h.IsHead()
	c.closeAfter = h.ConnectionClose()
	c.ex, c.state = ex, clientExchange
	c.Cancel()

	if l.s.hook != nil && l.s.hook(ctx) {
		l.sendOwn(ex)
		return true
	}
	x, v := p.begin(ctx)
	ex.x = x
	x.conn, x.adm.w = &c.addrs.limit, &ex.waiter
	pool, err := p.route(ctx, x, v, found)
	if err == errSlotWait {
		ex.pool = pool
		c.state = clientQueued
		c.Schedule(p.cur().TenantLimits.QueueTimeout)
		return false
	}
	if err == nil && x.upgrade {
		err = errUpgradeOnLoop // handed off above; never here
	}
	if err != nil {
		l.finish(ex, err)
		return true
	}
	p.cur().budget.request(l.ev.Now())
	ex.pool = pool
	l.nextAttempt(ex)
	return c.ex == nil
}

var (
	errHeadTooLarge  = errors.New("request head larger than limits.max_header_bytes")
	errUpgradeOnLoop = errors.New("an upgrade reached the event loop")
	errClientGone    = errors.New("the client closed the connection before the response")
	errIncomplete    = errors.New("the client ended its side of the connection within a request")
)

// checkStartLine parses a request line alone, as a head whose only field
// is the Host an HTTP/1.1 request must have.
func (l *edgeLoop) checkStartLine(line []byte) error {
	l.lineBuf = append(append(l.lineBuf[:0], line...), "\r\nHost: h\r\n\r\n"...)
	l.lineHeader.Reset()
	return l.parser.Parse(&l.lineHeader, l.lineBuf)
}

// awaitRequest bounds the wait for the rest of a request: its head, from
// its first byte, by client_header; its body, which the loop reads only
// when it fits limits.buffer_bytes, from the head's end by client_body.
// Each clock starts when its part begins, whatever arrives after, so that
// a client dribbling a byte at a time cannot hold the connection. A client
// that stopped sending (eof) with half a request gets 400, as on fasthttp's
// path, and the connection ends.
func (l *edgeLoop) awaitRequest(c *clientConn, part clientState) {
	if c.EOF() {
		l.refuse(c, fasthttp.StatusBadRequest, errIncomplete)
		return
	}
	if c.state == part {
		return
	}
	c.state = part
	if part == clientHead {
		c.Schedule(l.p.cur().Timeouts.ClientHeader)
	} else {
		c.Schedule(l.p.cur().Timeouts.ClientBody)
	}
}

// refuseHead answers a head that cannot be read: too large (431), framed
// wrongly (400, or 501 for a transfer coding other than chunked).
func (l *edgeLoop) refuseHead(c *clientConn, err error) {
	if err == h1.ErrHeadTooLarge {
		l.refuse(c, fasthttp.StatusRequestHeaderFieldsTooLarge, errHeadTooLarge)
		return
	}
	status := fasthttp.StatusBadRequest
	if fe, ok := err.(*h1.FramingError); ok {
		status = fe.Status
	}
	l.refuse(c, status, err)
}

// refuse answers a request that could not be read and closes the
// connection after it.
func (l *edgeLoop) refuse(c *clientConn, status int, err error) {
	ex := l.acquire(c)
	l.p.refuse(&ex.ctx, status, err)
	c.closeAfter = true
	c.in = c.in[:0]
	c.scan.Reset()
	c.ex = ex
	l.sendOwn(ex)
}

// flushClient sends what c.out holds; the rest waits for room in the socket,
// under the write timeout.
func (l *edgeLoop) flushClient(c *clientConn) {
	if err := c.Flush(&c.out); err != nil {
		l.dropClient(c)
		return
	}
	if len(c.out) > 0 {
		c.Schedule(l.p.cur().Timeouts.ClientWrite)
		return
	}
	if ex := c.ex; ex != nil {
		// A streamed response: its endpoint may go on.
		c.Cancel()
		if up := ex.up; up != nil && up.state == upPaused {
			up.state = upBody
			l.readUpstream(up)
		}
		return
	}
	if c.state != clientSending {
		// Room in the socket with nothing to send (edge-triggered
		// writability): the connection's clock stays as its state set it.
		return
	}
	if c.closeAfter {
		l.dropClient(c)
		return
	}
	c.state = clientIdle
	c.Schedule(l.p.cur().Timeouts.ClientIdle)
	l.giveBack(c.out)
	c.out = nil
	if len(c.in) == 0 {
		l.giveBack(c.in)
		c.in = nil
	}
	if len(c.in) > 0 || c.EOF() {
		l.serveClient(c) // a pipelined request, or the end
	}
	if c.Pending() {
		l.readClient(c) // what was left in the socket while in was full
	}
}

// timedOut ends a wait that took too long: a request head or body that does
// not arrive gets 408, anything else is closed.
func (c *clientConn) timedOut() {
	l := c.l
	if c.state == clientQueued {
		ex := c.ex
		c.state = clientExchange
		l.finish(ex, l.p.giveUp(ex.x))
		return
	}
	if (c.state == clientHead || c.state == clientBody) && c.ex == nil && len(c.out) == 0 {
		l.refuse(c, fasthttp.StatusRequestTimeout, os.ErrDeadlineExceeded)
		return
	}
	l.dropClient(c)
}

// dropClient closes c and abandons its exchange, if one is in flight: the
// endpoint's connection goes too, with no verdict on the endpoint.
func (l *edgeLoop) dropClient(c *clientConn) {
	if c.Closed() {
		return
	}
	c.Close()
	l.s.closed()
	c.addrs.limit.release()
	l.giveBack(c.in)
	l.giveBack(c.out)
	c.in, c.out = nil, nil
	if ex := c.ex; ex != nil {
		if up := ex.up; up != nil {
			ex.up = nil
			up.ex = nil
			l.dropUpstream(up)
		}
		if x := ex.x; x != nil {
			if ex.attemptOpen {
				x.member.Done()
			}
			x.err = errClientGone
			x.status = statusClientGone
			if l.p.access != nil && !ex.streaming {
				x.record(&ex.ctx) // a streamed response's was, at its head
			}
			x.done()
			ex.x = nil
		}
		c.ex = nil
		l.release(ex)
	}
}

// statusClientGone is what the access log and metrics record for a request
// whose client left before its response was sent, as nginx does.
const statusClientGone = 499

// handOff gives the connection, with the bytes already read, to the
// fasthttp server, which serves it from here on.
func (l *edgeLoop) handOff(c *clientConn) {
	l.s.closed()
	l.p.metrics.handoffs.Inc()
	fd, err := c.Detach()
	if err != nil {
		c.addrs.limit.release()
		l.s.log.Warn("could not hand a connection over; closed it", "error", err.Error())
		return
	}
	f := os.NewFile(uintptr(fd), "client")
	nc, err := net.FileConn(f) // a duplicate of the descriptor, on Go's poller
	f.Close()
	if err != nil {
		c.addrs.limit.release()
		l.s.log.Warn("could not hand a connection over; closed it", "error", err.Error())
		return
	}
	tc := &trackedConn{Conn: &prefixedConn{Conn: nc, prefix: append([]byte(nil), c.in...)}}
	c.addrs.limit.moveTo(&tc.limit)
	l.s.handoff.push(tc)
	l.giveBack(c.in)
	c.in = nil
}

// prefixedConn is a connection whose first bytes were read already.
type prefixedConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixedConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// connAddrs is the net.Conn a RequestCtx of the loop carries: its
// addresses, for the client's address and the access log; nothing reads or
// writes through it.
type connAddrs struct {
	local, remote *net.TCPAddr
	limit         connLimit
}

func (a *connAddrs) connLimit() *connLimit            { return &a.limit }
func (a *connAddrs) Read([]byte) (int, error)         { return 0, errNotAConn }
func (a *connAddrs) Write([]byte) (int, error)        { return 0, errNotAConn }
func (a *connAddrs) Close() error                     { return nil }
func (a *connAddrs) LocalAddr() net.Addr              { return a.local }
func (a *connAddrs) RemoteAddr() net.Addr             { return a.remote }
func (a *connAddrs) SetDeadline(time.Time) error      { return nil }
func (a *connAddrs) SetReadDeadline(time.Time) error  { return nil }
func (a *connAddrs) SetWriteDeadline(time.Time) error { return nil }

var errNotAConn = errors.New("the event loop owns this connection")
