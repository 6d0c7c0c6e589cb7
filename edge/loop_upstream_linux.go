package edge

import (
	"errors"
	"io"
	"os"
	"slices"

	"github.com/podedge/podedge/internal/evloop"
	"github.com/podedge/podedge/internal/h1"
	"github.com/valyala/fasthttp"
)

// upConn is a loop's connection to an endpoint. Each loop keeps its own
// pool of them per endpoint (edgeLoop.idle), so that nothing is shared
// between loops but the count against limits.max_conns_per_endpoint, which
// fasthttp's pool shares too (upstream.open).
//
// Its socket and timer are evloop.Conn's; how far its exchange has gone is
// its state. The request is all sent once out is empty: an endpoint may
// answer before, and its response is then read while the rest goes.
type upConn struct {
	evloop.Conn
	l     *edgeLoop
	u     *upstream
	in    []byte        // received and not yet relayed
	out   []byte        // the request, still to send
	ex    *loopExchange // the exchange in flight; nil while idle
	state upState
	// skip is the length of the final head at the start of in, parsed
	// already: a buffered body is sent from where it lies rather than
	// moved first.
	skip int
	// reused: it served an exchange before this one.
	reused bool
	// queued: out waits in the loop's upWrites.
	queued bool
}

// upState is how far a connection to an endpoint is in its exchange.
type upState uint8

const (
	upConnecting upState = iota // connect(2) is under way
	upIdle                      // in the loop's pool, no exchange
	upRequest                   // a request is going out or out; no byte of its response yet
	upHead                      // the response has begun; its head is not whole
	upBody                      // its head is parsed; its body is being read
	upPaused                    // a streamed body waits for the client to take what it was given
	upDone                      // the response is whole, and the connection may serve another
)

func (up *upConn) Event(ev evloop.Events) {
	if ev.Has(evloop.Writable) && !up.Closed() {
		up.l.writableUpstream(up)
	}
	if up.Pending() {
		up.l.readUpstream(up)
	}
}

// relayShare bounds what one connection to an endpoint relays in one turn
// of its loop: a fast endpoint streaming to a fast client yields the loop
// to its other connections, and goes on next round.
const relayShare = 256 << 10

// nextAttempt sends the request to the next endpoint the pool picks.
func (l *edgeLoop) nextAttempt(ex *loopExchange) {
	x := ex.x
	m, err := x.next(ex.pool)
	if err != nil {
		l.finish(ex, err)
		return
	}
	u, err := x.startAttempt(m)
	if err != nil {
		l.finish(ex, err)
		return
	}
	ex.attemptOpen = true
	l.send(ex, u)
}

// failed ends the attempt in flight with err: the request goes on to
// another endpoint when the retry policy and budget allow, or fails.
func (l *edgeLoop) failed(ex *loopExchange, err error) {
	x := ex.x
	ex.attemptOpen = false
	x.endAttempt(err)
	x.lastErr = err
	if l.p.retry(x, &ex.ctx.Request, err) {
		l.nextAttempt(ex)
		return
	}
	l.finish(ex, err)
}

// send writes the request to a connection to u: a pooled one, or a new one
// once it is established.
func (l *edgeLoop) send(ex *loopExchange, u *upstream) {
	up, err := l.upstreamConn(u)
	if err != nil {
		l.failed(ex, err)
		return
	}
	ex.up, up.ex = up, ex
	req := &ex.ctx.Request
	up.out = req.Header.AppendBytes(up.out[:0])
	up.out = append(up.out, req.Body()...)
	if up.state == upConnecting {
		up.Schedule(l.p.cur().Timeouts.Dial)
		return
	}
	up.state = upRequest
	if !up.queued {
		up.queued = true
		l.upWrites = append(l.upWrites, up)
	}
}

// upstreamConn returns the loop's most recently used idle connection to u,
// or a new one, perhaps still connecting.
func (l *edgeLoop) upstreamConn(u *upstream) (*upConn, error) {
	if list := l.idle[u]; len(list) > 0 {
		up := list[len(list)-1]
		l.idle[u] = list[:len(list)-1]
		u.loopIdle.Add(-1)
		up.reused = true
		up.Cancel()
		return up, nil
	}
	if !u.ap.IsValid() {
		return nil, &DialError{Addr: u.addr, Err: errNotIPPort}
	}
	if !u.take() {
		// fasthttp's pool may be what holds them, idle: they go first.
		u.hc.CloseIdleConnections()
		if !u.take() {
			return nil, errNoFreeConns
		}
	}
	fd, connecting, err := evloop.Connect(u.ap)
	if err != nil {
		u.give()
		return nil, &DialError{Addr: u.addr, Err: err}
	}
	up := &upConn{l: l, u: u}
	if err := l.ev.Open(&up.Conn, fd, up, up.timedOut); err != nil {
		u.give()
		return nil, &DialError{Addr: u.addr, Err: err}
	}
	up.state = upIdle
	if connecting {
		up.state = upConnecting
	}
	return up, nil
}

func (l *edgeLoop) writableUpstream(up *upConn) {
	if up.state == upConnecting {
		done, err := evloop.Connected(up.Fd())
		if err != nil {
			l.upstreamFailed(up, &DialError{Addr: up.u.addr, Err: err})
			return
		}
		if !done {
			return
		}
		up.state = upRequest // a connection is made for an exchange
	}
	if up.ex != nil && len(up.out) > 0 {
		l.writeUpstream(up)
	}
}

// writeUpstream sends the request; a body that does not fit the socket
// waits for room, each wait bounded by upstream_idle.
func (l *edgeLoop) writeUpstream(up *upConn) {
	if err := up.Flush(&up.out); err != nil {
		l.upstreamError(up, err)
		return
	}
	if len(up.out) > 0 {
		up.Schedule(l.p.cur().Timeouts.UpstreamIdle)
		return
	}
	if up.state == upRequest {
		up.Schedule(l.p.cur().Timeouts.ResponseHeader)
	}
}

// readUpstream reads the endpoint's answer and relays it, up to relayShare
// bytes a turn.
func (l *edgeLoop) readUpstream(up *upConn) {
	if up.ex == nil {
		l.dropUpstream(up) // an idle connection has nothing to say: it closed, or it is broken
		return
	}
	limit := l.p.cur().Limits.MaxHeaderBytes + l.p.cur().Limits.BufferBytes
	relayed := 0
	for !up.Closed() && up.ex != nil && up.state != upPaused {
		if relayed >= relayShare {
			up.Again()
			return
		}
		n, err := up.Read(&up.in, limit)
		if err == evloop.ErrBufferFull && n == 0 {
			// A full buffer that the last relay left as it was would be
			// read and relayed again forever.
			l.upstreamError(up, errRespStuck)
			return
		}
		eof := err == io.EOF
		if err != nil && !eof && err != evloop.ErrBufferFull {
			l.upstreamError(up, err)
			return
		}
		if n > 0 && up.state == upRequest {
			up.state = upHead
		}
		relayed += n
		l.relay(up, eof)
		if err != evloop.ErrBufferFull {
			return // the socket is drained, or closed
		}
	}
}

// relay moves what up.in holds toward the client: the response head once it
// is whole, then the body, whole when short, streamed otherwise.
func (l *edgeLoop) relay(up *upConn, eof bool) {
	ex := up.ex
	if up.state < upBody && !l.readHead(up, eof) {
		return
	}
	if ex.streaming {
		l.pump(up, eof)
		return
	}
	// A body short enough to buffer, read whole under response_header.
	need := int(ex.left)
	body := up.in[up.skip:]
	if len(body) < need {
		if eof {
			l.upstreamError(up, io.ErrUnexpectedEOF)
		}
		return
	}
	resp := &ex.ctx.Response
	if need > 0 {
		resp.SetBodyRaw(body[:need])
	}
	// An answer that came before the whole request was sent leaves the
	// connection mid-request: it cannot serve another.
	if len(up.out) == 0 && !eof && len(body) == need && !resp.Header.ConnectionClose() {
		up.state = upDone
	}
	ex.attemptOpen = false
	ex.x.endAttempt(nil)
	l.finish(ex, nil)
}

// readHead parses the response head at the start of up.in, skipping interim
// responses; it returns true once the head is parsed and removed from
// up.in, with ex.left or ex.stream saying how the body is framed.
func (l *edgeLoop) readHead(up *upConn, eof bool) bool {
	ex := up.ex
	resp := &ex.ctx.Response
	for {
		head, err := h1.CompleteHead(up.in, l.p.cur().Limits.MaxHeaderBytes, false)
		if err == h1.ErrHeadTooLarge {
			err = errRespHeadTooLarge
		}
		if err != nil {
			l.upstreamError(up, err)
			return false
		}
		if head == nil {
			if eof {
				l.upstreamError(up, io.EOF)
			}
			return false
		}
		if err := l.parser.Parse(&resp.Header, head); err != nil {
			l.upstreamError(up, err)
			return false
		}
		status := resp.StatusCode()
		if status == fasthttp.StatusSwitchingProtocols {
			l.upstreamError(up, errUnaskedSwitch)
			return false
		}
		if status >= 200 {
			// The final head stays where it is, its body after it.
			ex.x.respKeys, ex.x.respKeysRead = headKeys(head), true
			up.skip = len(head)
			break
		}
		// An interim response (100 Continue, 103 Early Hints) is not
		// passed on: the edge answered Expect itself. It leaves the
		// buffer, which then holds at most one head and the body.
		up.in = up.in[:copy(up.in, up.in[len(head):])]
		resp.Header.Reset()
		resp.Header.SetNoDefaultContentType(true)
	}
	up.state = upBody
	status := resp.StatusCode()
	ex.x.upStatus = status
	up.Schedule(l.p.cur().Timeouts.ResponseHeader)
	cl := resp.Header.ContentLength()
	if ex.head || noBody(status) {
		cl = 0
	}
	if cl >= 0 && cl <= l.p.cur().Limits.BufferBytes {
		ex.left = int64(cl)
		return true
	}
	up.in, up.skip = up.in[:copy(up.in, up.in[up.skip:])], 0
	return l.startStream(up, cl)
}

var (
	errRespHeadTooLarge = errors.New("response head larger than limits.max_header_bytes")
	errUnaskedSwitch    = errors.New("switched protocols without being asked to")
	errRespStuck        = errors.New("response does not fit limits.max_header_bytes + limits.buffer_bytes")
)

// streamHighWater is how much of a streamed body may wait for the client
// before the loop stops reading the endpoint.
const streamHighWater = 256 << 10

// startStream sends the response head to the client and starts relaying a
// body that is too long to buffer, chunked, or ended by the connection's
// close. The exchange is recorded when the body ends.
func (l *edgeLoop) startStream(up *upConn, cl int) bool {
	ex := up.ex
	x := ex.x
	resp := &ex.ctx.Response
	switch {
	case cl == -1:
		ex.stream = streamChunked
	case cl == -2:
		ex.stream = streamToClose
	default:
		ex.stream, ex.left = streamLength, int64(cl)
	}
	ex.streaming = true
	x.refs.Add(1) // the stream's hold, let go when the body ends
	if l.p.end(&ex.ctx, x, nil) {
		// The error path replaced the response: the body is not relayed.
		ex.attemptOpen = false
		x.member.Done()
		x.done()
		ex.x = nil
		ex.streaming = false
		l.sendOwn(ex)
		return false
	}
	switch ex.stream {
	case streamChunked:
		resp.Header.SetContentLength(-1) // relayed as it comes, chunk framing and all
	case streamToClose:
		resp.Header.SetConnectionClose()
	}
	l.sendResponse(ex, false)
	up.Schedule(l.p.cur().Timeouts.UpstreamIdle)
	return true
}

// pump relays the body bytes in up.in to the client, stopping the reads
// from the endpoint while the client has streamHighWater bytes to take.
func (l *edgeLoop) pump(up *upConn, eof bool) {
	ex := up.ex
	c := ex.c
	n, done := len(up.in), false
	switch ex.stream {
	case streamLength:
		n = int(min(int64(n), ex.left))
		ex.left -= int64(n)
		done = ex.left == 0
	case streamChunked:
		var err error
		if n, done, err = ex.chunked.Scan(up.in); err != nil {
			l.upstreamError(up, err)
			return
		}
	case streamToClose:
		done = eof
	}
	// What comes goes on at once (copied only in the part the client's
	// socket does not take), since a streamed body's pace is the client's.
	if err := c.WriteThrough(&c.out, up.in[:n]); err != nil {
		l.dropClient(c)
		return
	}
	ex.bodyBytes += int64(n)
	up.in = up.in[:copy(up.in, up.in[n:])]
	if !done && eof {
		l.upstreamError(up, io.ErrUnexpectedEOF)
		return
	}
	if done {
		if len(up.out) == 0 && ex.stream != streamToClose && !eof && len(up.in) == 0 &&
			!ex.ctx.Response.Header.ConnectionClose() {
			up.state = upDone
		}
		l.endStream(ex, nil)
		l.endExchange(ex)
		return
	}
	up.Schedule(l.p.cur().Timeouts.UpstreamIdle)
	if len(c.out) > 0 {
		c.Schedule(l.p.cur().Timeouts.ClientWrite)
	}
	if len(c.out) >= streamHighWater {
		up.state = upPaused // flushClient resumes it
	}
}

// endStream settles the exchange of a streamed response that ended, whole
// or (err) cut off: the attempt's verdict, the bytes relayed, the record.
func (l *edgeLoop) endStream(ex *loopExchange, err error) {
	x := ex.x
	ex.attemptOpen = false
	x.endAttempt(err)
	if err != nil {
		x.err = err
	}
	x.bytes = ex.bodyBytes
	x.done()
	ex.x = nil
}

// upstreamError ends the attempt on up with a failure of the connection,
// at the stage the exchange had reached.
func (l *edgeLoop) upstreamError(up *upConn, err error) {
	st := stageWait
	switch {
	case up.state >= upBody:
		st = stageBody
	case up.state == upHead:
		st = stageHead
	case len(up.out) > 0:
		st = stageWrite
	}
	l.upstreamFailed(up, &UpstreamError{Addr: up.u.addr, stage: st, Err: err})
}

// upstreamFailed closes up and settles its exchange: a request whose
// response has begun to reach the client can only be cut off; one on a
// pooled connection the endpoint had closed is sent again on a fresh one
// when it can be replayed; any other goes to the retry policy.
func (l *edgeLoop) upstreamFailed(up *upConn, err error) {
	ex := up.ex
	reused := up.reused
	if ex != nil {
		ex.up, up.ex = nil, nil
	}
	l.dropUpstream(up)
	if ex == nil {
		return
	}
	if ex.streaming {
		l.endStream(ex, err)
		l.dropClient(ex.c)
		return
	}
	x := ex.x
	if ue, ok := err.(*UpstreamError); ok && reused && ue.beforeResponse() && !ue.Timeout() && isReset(ue.Err) {
		// The endpoint closed a pooled connection as it was used: not the
		// endpoint's fault. The loop's other idle connections to it are
		// older still.
		l.closeIdle(up.u)
		if x.replayable(&ex.ctx.Request) && ex.stale < maxStaleRetries {
			ex.stale++
			l.send(ex, up.u)
			return
		}
		ue.stale = true
	}
	l.failed(ex, err)
}

// timedOut ends a wait on the endpoint that took too long; an idle
// connection past upstream_keepalive is closed.
func (up *upConn) timedOut() {
	l := up.l
	switch {
	case up.ex == nil:
		l.dropUpstream(up)
	case up.state == upConnecting:
		l.upstreamFailed(up, &DialError{Addr: up.u.addr, Err: os.ErrDeadlineExceeded})
	default:
		l.upstreamError(up, os.ErrDeadlineExceeded)
	}
}

// releaseUpstream pools a connection whose exchange is over, or closes it.
func (l *edgeLoop) releaseUpstream(up *upConn) {
	up.ex = nil
	if up.Closed() {
		return
	}
	if up.state != upDone || l.draining {
		l.dropUpstream(up)
		return
	}
	up.in, up.out, up.skip = up.in[:0], up.out[:0], 0
	up.state = upIdle
	up.u.loopIdle.Add(1)
	l.idle[up.u] = append(l.idle[up.u], up)
	up.Schedule(l.p.cur().Timeouts.UpstreamKeepalive)
}

// dropUpstream closes up, taking it out of the pool if it is there.
func (l *edgeLoop) dropUpstream(up *upConn) {
	if up.Closed() {
		return
	}
	up.Close()
	up.u.give()
	if up.state == upIdle {
		up.u.loopIdle.Add(-1)
		list := slices.DeleteFunc(l.idle[up.u], func(o *upConn) bool { return o == up })
		if len(list) == 0 {
			delete(l.idle, up.u)
		} else {
			l.idle[up.u] = list
		}
	}
}

// closeIdle closes the loop's idle connections to u.
func (l *edgeLoop) closeIdle(u *upstream) {
	for _, up := range slices.Clone(l.idle[u]) {
		l.dropUpstream(up)
	}
}
