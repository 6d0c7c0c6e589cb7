package edge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/podedge/podedge/internal/evloop"
	"github.com/podedge/podedge/internal/h1"
	"github.com/podedge/podedge/router"
	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"
)

// defaultEngine is the plain-HTTP data path on Linux.
const defaultEngine = EngineLoop

// loopServer is the plain-HTTP listener on event loops, as nginx and HAProxy
// run theirs: one goroutine per CPU runs an epoll loop (internal/evloop) over
// its own listening socket (SO_REUSEPORT) and every connection it accepted,
// client and endpoint alike. No goroutine parks per request, and timeouts are
// timers on the loop's wheel rather than deadlines on each connection.
//
// The proxy's logic is the fasthttp path's own: the loop parses each request
// head into a fasthttp.RequestCtx and hands it to the same routing, header
// rules, passive health, retry policy, error path, metrics and access log.
// What the loop does itself is the I/O: it buffers request bodies of up to
// limits.buffer_bytes, sends the request to a pooled or new connection of
// its own to the endpoint, and relays the response, buffered when small and
// streamed (with flow control) when large, chunked or ended by the
// connection's close.
//
// A connection whose request the loop does not take (a chunked or larger
// body, Expect: 100-continue, an Upgrade, HTTP/1.0) leaves the loop at that
// request, with the bytes already read, for the fasthttp server, which serves
// it for the rest of its life.
type loopServer struct {
	p       *Proxy
	hook    func(*fasthttp.RequestCtx) bool
	handoff *handoffListener
	log     *slog.Logger
	fastLog fasthttp.Logger
	loops   []*edgeLoop
	addr    *net.TCPAddr
	wg      sync.WaitGroup
	// clients counts the client connections the loops hold, for the drain.
	clients atomic.Int64
}

// listenLoops opens one listening socket and loop per CPU on addr.
func listenLoops(addr string, p *Proxy, hook func(*fasthttp.RequestCtx) bool, log *slog.Logger, sockets Sockets) (*loopServer, error) {
	p.init()
	tcp, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return nil, err
	}
	ip, _ := netip.AddrFromSlice(tcp.IP)
	if !ip.IsValid() {
		ip = netip.IPv6Unspecified() // every address, IPv4 included
	}
	ap := netip.AddrPortFrom(ip.Unmap(), uint16(tcp.Port))
	s := &loopServer{p: p, hook: hook, log: log.With("component", "loop")}
	s.fastLog = fasthttpLogger{s.log}
	for i := 0; i < runtime.GOMAXPROCS(0); i++ {
		l, err := s.newLoop(ap, sockets, fmt.Sprintf("loop %s #%d", addr, i))
		if err != nil {
			s.closeLoops()
			return nil, err
		}
		s.loops = append(s.loops, l)
		if i == 0 {
			// Port 0 picked a port: the other loops listen on the same.
			if ap, err = evloop.LocalAddr(l.lfd); err != nil {
				s.closeLoops()
				return nil, err
			}
			s.addr = net.TCPAddrFromAddrPort(ap)
		}
	}
	s.handoff = newHandoffListener(s.addr)
	return s, nil
}

// opened and closed count a client connection in and out, for the drain and
// the metrics.
func (s *loopServer) opened() {
	s.clients.Add(1)
	s.p.metrics.loopConns.Inc()
}

func (s *loopServer) closed() {
	s.clients.Add(-1)
	s.p.metrics.loopConns.Dec()
}

// Handoff is the listener that yields the connections the loops hand over,
// for the fasthttp server to Serve.
func (s *loopServer) Handoff() net.Listener { return s.handoff }

// Addr is the address the loops listen on.
func (s *loopServer) Addr() net.Addr { return s.addr }

// close releases a server whose loops never ran.
func (s *loopServer) close() {
	s.closeLoops()
	s.handoff.Close()
}

// closeLoops releases loops whose run never started.
func (s *loopServer) closeLoops() {
	for _, l := range s.loops {
		l.ev.Close()
		unix.Close(l.lfd)
	}
}

// run starts the loops.
func (s *loopServer) run() {
	for _, l := range s.loops {
		s.wg.Go(l.run)
	}
}

// shutdown stops accepting, closes idle connections, lets the exchanges in
// flight finish (their responses carry Connection: close, the proxy is
// draining) until ctx ends, then closes whatever is left and stops the loops.
func (s *loopServer) shutdown(ctx context.Context) error {
	for _, l := range s.loops {
		l.ev.Post(l.stopAccepting)
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var err error
wait:
	for s.clients.Load() > 0 {
		select {
		case <-ctx.Done():
			err = fmt.Errorf("%d connections still open: %w", s.clients.Load(), ctx.Err())
			break wait
		case <-tick.C:
		}
	}
	for _, l := range s.loops {
		l.ev.Close()
	}
	s.wg.Wait()
	return err
}

// edgeLoop is one event loop and what only its goroutine touches.
type edgeLoop struct {
	s        *loopServer
	p        *Proxy
	ev       *evloop.Loop
	lfd      int
	parser   *h1.Parser
	idle     map[*upstream][]*upConn // most recently used last
	free     []*loopExchange
	draining bool
	// acceptPaused: the listening socket is out of the loop until
	// resumeTimer fires (pauseAccept).
	acceptPaused bool
	resumeTimer  *evloop.Timer
	// Buffers client connections give back between requests, so that an
	// idle keep-alive connection holds none; bufBytes is their total size.
	bufs     [][]byte
	bufBytes int
	// Connections whose writes wait for the end of the round (flushRound).
	clientWrites []*clientConn
	upWrites     []*upConn
}

// Client connection buffers: borrowed with this room, and kept between
// requests only up to maxPooledBufBytes per loop.
const (
	clientBufSize     = 16 << 10
	maxPooledBufBytes = 16 << 20
)

// borrow returns an empty buffer, from the pool when it has one.
func (l *edgeLoop) borrow() []byte {
	if n := len(l.bufs); n > 0 {
		b := l.bufs[n-1]
		l.bufs[n-1] = nil
		l.bufs = l.bufs[:n-1]
		l.bufBytes -= cap(b)
		return b
	}
	return make([]byte, 0, clientBufSize)
}

// giveBack pools b, unless the pool is full.
func (l *edgeLoop) giveBack(b []byte) {
	if cap(b) == 0 || l.bufBytes+cap(b) > maxPooledBufBytes {
		return
	}
	l.bufs = append(l.bufs, b[:0])
	l.bufBytes += cap(b)
}

func (s *loopServer) newLoop(ap netip.AddrPort, sockets Sockets, name string) (*edgeLoop, error) {
	p := s.p
	l := &edgeLoop{s: s, p: p, lfd: -1, idle: map[*upstream][]*upConn{}}
	l.parser = h1.NewParser(max(p.cur().Limits.MaxHeaderBytes, 4096))
	lfd, err := loopSocket(sockets, name, ap)
	if err != nil {
		return nil, err
	}
	if l.ev, err = evloop.NewOnListener(lfd, l.accept); err != nil {
		unix.Close(lfd)
		return nil, err
	}
	l.lfd = lfd
	l.ev.AtRoundEnd(l.flushRound)
	return l, nil
}

func (l *edgeLoop) run() {
	if err := l.ev.Run(); err != nil {
		l.s.log.Error("event loop failed; its connections are closed", "error", err.Error())
	}
	for fd := range l.ev.Descriptors() {
		if _, ok := l.ev.Handler(fd).(*clientConn); ok {
			l.s.closed()
		}
		unix.Close(fd)
	}
	if l.acceptPaused && l.lfd >= 0 {
		unix.Close(l.lfd) // out of the loop while paused
	}
}

// stopAccepting closes the listening socket and the idle client
// connections; the others close after their exchange. A connection that
// has sent no request yet is not idle: it was accepted moments ago, and
// its request may be in flight (an upgrade hands the socket on while
// clients connect). It gets freshGrace to send it, answered with
// Connection: close.
func (l *edgeLoop) stopAccepting() {
	l.draining = true
	if l.lfd >= 0 {
		if l.acceptPaused {
			l.ev.Cancel(l.resumeTimer)
			unix.Close(l.lfd) // out of the loop already
		} else {
			l.ev.Drop(l.lfd, nil)
		}
		l.lfd = -1
	}
	for _, c := range l.clientsIdle() {
		if c.fresh {
			l.ev.Schedule(c.timer, freshGrace)
			continue
		}
		l.dropClient(c)
	}
}

// freshGrace is how long a drain waits for the first request of a
// connection accepted just before it.
const freshGrace = time.Second

// clientsIdle lists the client connections between requests.
func (l *edgeLoop) clientsIdle() []*clientConn {
	var idle []*clientConn
	for fd := range l.ev.Descriptors() {
		if c, ok := l.ev.Handler(fd).(*clientConn); ok && c.ex == nil && len(c.out) == 0 && len(c.in) == 0 {
			idle = append(idle, c)
		}
	}
	return idle
}

func (l *edgeLoop) accept() {
	for l.lfd >= 0 && !l.acceptPaused {
		fd, peer, err := evloop.Accept(l.lfd)
		switch err {
		case nil:
		case unix.EAGAIN, unix.EINTR, unix.ECONNABORTED:
			return
		default:
			// Out of descriptors or memory: the listening socket stays
			// readable, and accepting again at once would spin. Pause,
			// as nginx does, and let connections end meanwhile.
			l.pauseAccept(err)
			return
		}
		c := &clientConn{l: l, fd: fd}
		c.timer = evloop.NewTimer(c.timedOut)
		local, _ := evloop.LocalAddr(fd)
		c.addrs.remote = net.TCPAddrFromAddrPort(peer)
		c.addrs.local = net.TCPAddrFromAddrPort(local)
		if err := l.ev.Add(fd, c); err != nil {
			unix.Close(fd)
			continue
		}
		l.s.opened()
		c.state, c.fresh = clientIdle, true
		l.ev.Schedule(c.timer, l.p.cur().Timeouts.ClientIdle)
	}
}

// acceptPause is how long a loop stops accepting after accept(2) failed
// for want of descriptors or memory.
const acceptPause = 100 * time.Millisecond

func (l *edgeLoop) pauseAccept(err error) {
	if err := l.ev.Detach(l.lfd); err != nil {
		l.s.log.Error("cannot pause accepting; closing the listening socket", "error", err.Error())
		unix.Close(l.lfd)
		l.lfd = -1
		return
	}
	l.acceptPaused = true
	l.p.metrics.acceptPauses.Inc()
	l.s.log.Warn("accept failed; not accepting for a while", "error", err.Error(), "pause", acceptPause)
	if l.resumeTimer == nil {
		l.resumeTimer = evloop.NewTimer(l.resumeAccept)
	}
	l.ev.Schedule(l.resumeTimer, acceptPause)
}

func (l *edgeLoop) resumeAccept() {
	l.acceptPaused = false
	if l.lfd < 0 {
		return // the drain closed it meanwhile
	}
	if err := l.ev.AddListener(l.lfd, evloop.Acceptor(l.accept)); err != nil {
		l.s.log.Error("cannot accept again; closing the listening socket", "error", err.Error())
		unix.Close(l.lfd)
		l.lfd = -1
		return
	}
	l.accept()
}

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

// clientConn is a client's connection while the loop holds it.
type clientConn struct {
	l     *edgeLoop
	fd    int
	in    []byte // received and not yet served
	out   []byte // still to send
	timer *evloop.Timer
	addrs connAddrs
	state clientState
	// scan checks the request head as it arrives, from where it stopped.
	scan h1.HeadScanner
	ex   *loopExchange // the exchange in flight
	// eof: the client sent all it will; closeAfter: close once out is sent.
	eof, closeAfter, closed bool
	// unread: data is waiting in the socket that was left there while an
	// exchange was in flight and in was full enough.
	unread bool
	// peerClosed: epoll said the client closed; its end of file is still
	// to be read.
	peerClosed bool
	// queued: out waits in the loop's clientWrites.
	queued bool
	// fresh: no request has begun on the connection yet.
	fresh bool
}

func (c *clientConn) Event(ev evloop.Events) {
	if ev.Has(evloop.Writable) && !c.closed {
		c.l.flushClient(c)
	}
	if ev.Has(evloop.PeerClosed) {
		c.peerClosed = true
	}
	if ev.Has(evloop.Readable) && !c.closed {
		c.l.readClient(c)
	}
}

// maxPipelined bounds what a client may send ahead while its exchange is in
// flight; the rest stays in the socket until the exchange is done.
const maxPipelined = 64 << 10

func (l *edgeLoop) readClient(c *clientConn) {
	if c.ex != nil && len(c.in) >= maxPipelined {
		c.unread = true
		return
	}
	c.unread = false
	if c.in == nil {
		c.in = l.borrow()
	}
	_, err := evloop.ReadInto(c.fd, &c.in, l.p.cur().Limits.MaxHeaderBytes+l.p.cur().Limits.BufferBytes+maxPipelined, c.peerClosed)
	switch err {
	case nil:
	case evloop.ErrBufferFull:
		c.unread = true
	case io.EOF:
		if c.ex != nil {
			// The client left while its request was being served: as
			// nginx does, the exchange is abandoned (499), not finished
			// for no one. A request that came with the end of file is
			// still served.
			l.dropClient(c)
			return
		}
		c.eof = true
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
	for !c.closed && c.ex == nil && len(c.out) == 0 && !c.closeAfter {
		if len(c.in) == 0 {
			if c.eof {
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
			if c.eof {
				l.dropClient(c)
			}
			return false
		}
	}
	head, err := c.scan.Scan(c.in, p.cur().Limits.MaxHeaderBytes, true)
	if err != nil {
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
		l.refuse(c, fasthttp.StatusBadRequest, err)
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
	c.ex, c.state, c.fresh = ex, clientExchange, false
	l.ev.Cancel(c.timer)

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
		l.ev.Schedule(c.timer, p.cur().TenantLimits.QueueTimeout)
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

// slotFreed is the wake of a request waiting for its tenant's concurrency
// slot: it goes to an endpoint if it gets one now. A wake may come late,
// for an exchange that waits no more; it is ignored.
func (l *edgeLoop) slotFreed(ex *loopExchange) {
	c := ex.c
	if c == nil || c.closed || c.ex != ex || c.state != clientQueued || ex.x == nil {
		return
	}
	if !ex.x.adm.slotTaken() {
		return
	}
	c.state = clientExchange
	l.ev.Cancel(c.timer)
	l.p.cur().budget.request(l.ev.Now())
	l.nextAttempt(ex)
}

var (
	errHeadTooLarge  = errors.New("request head larger than limits.max_header_bytes")
	errUpgradeOnLoop = errors.New("an upgrade reached the event loop")
	errClientGone    = errors.New("the client closed the connection before the response")
	errIncomplete    = errors.New("the client ended its side of the connection within a request")
)

// awaitRequest bounds the wait for the rest of a request: its head, from
// its first byte, by client_header; its body, which the loop reads only
// when it fits limits.buffer_bytes, from the head's end by client_body.
// Each clock starts when its part begins, whatever arrives after, so that
// a client dribbling a byte at a time cannot hold the connection. A client
// that stopped sending (eof) with half a request gets 400, as on fasthttp's
// path, and the connection ends.
func (l *edgeLoop) awaitRequest(c *clientConn, part clientState) {
	if c.eof {
		l.refuse(c, fasthttp.StatusBadRequest, errIncomplete)
		return
	}
	if c.state == part {
		return
	}
	c.state = part
	if part == clientHead {
		l.ev.Schedule(c.timer, l.p.cur().Timeouts.ClientHeader)
	} else {
		l.ev.Schedule(c.timer, l.p.cur().Timeouts.ClientBody)
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

// sendOwn sends a response the edge wrote itself (an error, the HTTP hook's
// answer) and ends the exchange.
func (l *edgeLoop) sendOwn(ex *loopExchange) {
	resp := &ex.ctx.Response
	if !noBody(resp.StatusCode()) && !ex.head {
		resp.Header.SetContentLength(len(resp.Body()))
	}
	l.sendResponse(ex, true)
	l.endExchange(ex)
}

// sendResponse appends the response head in ex.ctx to the client's output
// and, with body, its buffered body.
func (l *edgeLoop) sendResponse(ex *loopExchange, body bool) {
	c := ex.c
	resp := &ex.ctx.Response
	if c.closeAfter || l.draining {
		resp.Header.SetConnectionClose()
	}
	if resp.Header.ConnectionClose() {
		c.closeAfter = true
	}
	if c.out == nil {
		c.out = l.borrow()
	}
	alone := len(c.out) == 0
	c.out = resp.Header.AppendBytes(c.out)
	if !body || ex.head || noBody(resp.StatusCode()) {
		return
	}
	b := resp.Body()
	if alone && len(b) >= writeThroughBytes {
		// A large body goes out now, after its head, rather than be
		// copied whole to wait for the round's end; what the socket does
		// not take waits, and a failure shows at the next flush.
		_ = evloop.WriteThrough(c.fd, &c.out, b)
		return
	}
	c.out = append(c.out, b...)
}

// writeThroughBytes is the size from which a buffered response's body is
// written at once rather than copied to the client's output.
const writeThroughBytes = 16 << 10

// noBody reports whether a response with status has no body whatever its
// head says (RFC 9110, sections 6.4.1).
func noBody(status int) bool {
	return status < 200 || status == fasthttp.StatusNoContent || status == fasthttp.StatusNotModified
}

// finish ends an exchange whose response is buffered, or which failed with
// err before its response began: the proxy's end path readies the response
// (the error's, after err), which then goes to the client.
func (l *edgeLoop) finish(ex *loopExchange, err error) {
	failed := l.p.end(&ex.ctx, ex.x, err)
	ex.x = nil
	if failed {
		l.sendOwn(ex)
		return
	}
	l.sendResponse(ex, true)
	l.endExchange(ex)
}

// endExchange is the end of the request in flight on its client
// connection: the request leaves c.in, the response is on its way out, and
// the next request, if any, may start once it is sent.
func (l *edgeLoop) endExchange(ex *loopExchange) {
	c := ex.c
	if ex.up != nil {
		l.releaseUpstream(ex.up)
		ex.up = nil
	}
	if !c.closed && ex.reqLen > 0 {
		c.in = c.in[:copy(c.in, c.in[ex.reqLen:])]
	}
	c.scan.Reset()
	c.ex = nil
	c.state = clientSending
	l.release(ex)
	if !c.closed && !c.queued {
		c.queued = true
		l.clientWrites = append(l.clientWrites, c)
	}
}

// flushRound sends the writes the round's events left. Responses go first,
// then requests: an endpoint woken by its request may take the CPU, and
// the clients' answers should not wait for it. Each flush may start more
// work (a pipelined request, a retry), whose writes join the lists.
func (l *edgeLoop) flushRound() {
	for len(l.clientWrites) > 0 || len(l.upWrites) > 0 {
		for i := 0; i < len(l.clientWrites); i++ {
			c := l.clientWrites[i]
			l.clientWrites[i] = nil
			c.queued = false
			if !c.closed {
				l.flushClient(c)
			}
		}
		l.clientWrites = l.clientWrites[:0]
		for i := 0; i < len(l.upWrites); i++ {
			up := l.upWrites[i]
			l.upWrites[i] = nil
			up.queued = false
			if !up.closed && up.ex != nil && !up.sent && !up.connecting {
				l.writeUpstream(up)
			}
		}
		l.upWrites = l.upWrites[:0]
	}
}

// flushClient sends what c.out holds; the rest waits for room in the socket,
// under the write timeout.
func (l *edgeLoop) flushClient(c *clientConn) {
	if err := evloop.Flush(c.fd, &c.out); err != nil {
		l.dropClient(c)
		return
	}
	if len(c.out) > 0 {
		l.ev.Schedule(c.timer, l.p.cur().Timeouts.ClientWrite)
		return
	}
	if ex := c.ex; ex != nil {
		// A streamed response: its endpoint may go on.
		l.ev.Cancel(c.timer)
		if ex.up != nil && ex.up.paused {
			ex.up.paused = false
			l.readUpstream(ex.up)
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
	l.ev.Schedule(c.timer, l.p.cur().Timeouts.ClientIdle)
	l.giveBack(c.out)
	c.out = nil
	if len(c.in) == 0 {
		l.giveBack(c.in)
		c.in = nil
	}
	if len(c.in) > 0 || c.eof {
		l.serveClient(c) // a pipelined request, or the end
	}
	if c.unread && !c.closed {
		l.readClient(c)
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
	if c.closed {
		return
	}
	c.closed = true
	l.ev.Drop(c.fd, c.timer)
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
	c.closed = true
	l.ev.Cancel(c.timer)
	l.s.closed()
	l.p.metrics.handoffs.Inc()
	if err := l.ev.Detach(c.fd); err != nil {
		c.addrs.limit.release()
		unix.Close(c.fd)
		l.s.log.Warn("could not hand a connection over; closed it", "error", err.Error())
		return
	}
	f := os.NewFile(uintptr(c.fd), "client")
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

func (a *connAddrs) connLimit() *connLimit { return &a.limit }

func (a *connAddrs) Read([]byte) (int, error)         { return 0, errNotAConn }
func (a *connAddrs) Write([]byte) (int, error)        { return 0, errNotAConn }
func (a *connAddrs) Close() error                     { return nil }
func (a *connAddrs) LocalAddr() net.Addr              { return a.local }
func (a *connAddrs) RemoteAddr() net.Addr             { return a.remote }
func (a *connAddrs) SetDeadline(time.Time) error      { return nil }
func (a *connAddrs) SetReadDeadline(time.Time) error  { return nil }
func (a *connAddrs) SetWriteDeadline(time.Time) error { return nil }

var errNotAConn = errors.New("the event loop owns this connection")

// loopExchange is a request in flight on a loop, pooled per loop.
type loopExchange struct {
	ctx fasthttp.RequestCtx
	exchangeState
	// waiter is the exchange's wait for a concurrency slot; its Wake,
	// called from any goroutine, posts resume to the loop. Both are made
	// once with the exchange.
	waiter router.Waiter
	resume func()
}

// exchangeState is what a loopExchange clears for its next request.
type exchangeState struct {
	x    *exchange
	c    *clientConn
	up   *upConn
	pool *router.Pool
	// stale counts fresh connections tried after pooled ones turned out
	// dead.
	stale       int
	attemptOpen bool  // an attempt on x.member awaits its verdict
	reqLen      int   // the request's bytes at the start of c.in
	head        bool  // a HEAD request: no response body
	bodyBytes   int64 // of a streamed response, relayed so far
	// The response body while it streams.
	stream    streamMode
	left      int64 // bytes left, with streamLength
	chunked   h1.Chunked
	streaming bool
}

type streamMode uint8

const (
	streamLength  streamMode = iota // Content-Length, longer than buffer_bytes
	streamChunked                   // chunked, relayed as it is
	streamToClose                   // delimited by the connection's end
)

func (l *edgeLoop) acquire(c *clientConn) *loopExchange {
	var ex *loopExchange
	if n := len(l.free); n > 0 {
		ex = l.free[n-1]
		l.free = l.free[:n-1]
	} else {
		ex = &loopExchange{}
		ex.ctx.Response.Header.SetNoDefaultContentType(true)
		ex.resume = func() { l.slotFreed(ex) }
		ex.waiter.Wake = func() { l.ev.Post(ex.resume) }
	}
	ex.c = c
	ex.ctx.Init2(&c.addrs, l.s.fastLog, false)
	return ex
}

func (l *edgeLoop) release(ex *loopExchange) {
	ex.ctx.Request.Reset()
	ex.ctx.Response.Reset()
	ex.ctx.Response.Header.SetNoDefaultContentType(true)
	ex.exchangeState = exchangeState{}
	if len(l.free) < 1024 {
		l.free = append(l.free, ex)
	}
}
