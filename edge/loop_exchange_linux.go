package edge

import (
	"github.com/podedge/podedge/internal/h1"
	"github.com/podedge/podedge/router"
	"github.com/valyala/fasthttp"
)

// The loop's exchanges: a request from its routing to its response, in
// order on its client connection.
// slotFreed is the wake of a request waiting for its tenant's concurrency
// slot: it goes to an endpoint if it gets one now. A wake may come late,
// for an exchange that waits no more; it is ignored.
func (l *edgeLoop) slotFreed(ex *loopExchange) {
	c := ex.c
	if c == nil || c.Closed() || c.ex != ex || c.state != clientQueued || ex.x == nil {
		return
	}
	if !ex.x.adm.slotTaken() {
		return
	}
	c.state = clientExchange
	c.Cancel()
	l.p.cur().budget.request(l.ev.Now())
	l.nextAttempt(ex)
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
		_ = c.WriteThrough(&c.out, b)
		return
	}
	c.out = append(c.out, b...)
}

// writeThroughBytes is the size from which a buffered response's body is
// written at once rather than copied to the client's output.
const writeThroughBytes = 16 << 10

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
	if !c.Closed() && ex.reqLen > 0 {
		c.in = c.in[:copy(c.in, c.in[ex.reqLen:])]
	}
	c.scan.Reset()
	c.ex = nil
	c.state = clientSending
	l.release(ex)
	if !c.Closed() && !c.queued {
		c.queued = true
		l.clientWrites = append(l.clientWrites, c)
	}
}

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
