package edge

import (
	"bufio"
	"io"
	"net"
	"time"

	"github.com/valyala/fasthttp"
)

// prefetched is how much of a request body fasthttp reads before calling the
// handler when it streams request bodies (http.go, readBodyWithStreaming).
// A body no longer than that is in memory already: no deadline to move.
const prefetched = 8 << 10

// reqBody is a request body on its way to an endpoint. It reads the server's
// body stream, enforces Limits.MaxBodyBytes on bodies without a declared
// length, and moves both connections' deadlines at every read, so that a
// long upload is bounded by its pauses rather than by its length. A client
// failure is kept in err, so that it is not blamed on the endpoint.
type reqBody struct {
	src io.Reader
	// ctx is the request being served; it is used only while the handler
	// runs, since the body is sent before the handler returns.
	ctx *fasthttp.RequestCtx
	// upstream is the endpoint connection being written, while it is.
	upstream     net.Conn
	limit        int64
	clientBody   time.Duration
	upstreamIdle time.Duration
	n            int64
	err          error
}

// Read returns a failure with no data, and again on every later call:
// fasthttp's chunked writer drops an error that comes with data and goes on
// reading, which would send the rest of a body over the limit to the
// endpoint as if nothing had happened.
func (b *reqBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	now := time.Now()
	_ = b.ctx.SetReadDeadline(now.Add(b.clientBody))
	if b.upstream != nil {
		_ = b.upstream.SetWriteDeadline(now.Add(b.upstreamIdle))
	}
	n, err := b.src.Read(p)
	b.n += int64(n)
	switch {
	case b.limit > 0 && b.n > b.limit:
		// Not a byte of this read goes on: part of it is over the limit.
		b.err = &clientError{status: fasthttp.StatusRequestEntityTooLarge, err: errBodyTooLarge}
		return 0, b.err
	case err != nil && err != io.EOF:
		status := fasthttp.StatusBadRequest
		if isTimeout(err) {
			status = fasthttp.StatusRequestTimeout
		}
		b.err = &clientError{status: status, err: err}
		return 0, b.err
	}
	return n, err
}

// respStream is a response body streaming from an endpoint to the client,
// for bodies too long to buffer or of unknown length. fasthttp reads it after
// the handler returned, while it writes the response, and then calls
// CloseWithError: that is when the endpoint's connection goes back to its
// pool (or is closed, if the body did not end cleanly), when passive health
// hears how the endpoint did, and when the request is logged.
//
// Each read moves the endpoint connection's read deadline and the client
// connection's write deadline, so that a 2 GiB download is bounded by its
// pauses, never by its length.
type respStream struct {
	x         *exchange
	u         *upstream
	cc        any
	conn      net.Conn
	br        *bufio.Reader
	client    net.Conn
	length    int // declared length, or -1
	closeConn bool
	eof       bool
	err       error
	// toClose: the body goes to an HTTP/1.0 client as it comes, ended by
	// the connection's close (closeDelimited), not through fasthttp.
	toClose bool
	// trailers, when set (HTTP/2 relays them), receives the trailer
	// section that followed the body, as the body ends.
	trailers *[]byte
}

// start turns resp, whose head was just read from conn, into a streamed
// response. fasthttp's own stream of the body lives in x.resp, a second
// Response with a copy of the head, because replacing resp's stream with
// ours would release fasthttp's.
func (s *respStream) start(x *exchange, u *upstream, cc any, conn net.Conn, br *bufio.Reader, resp *fasthttp.Response, closeConn bool) {
	length := resp.Header.ContentLength()
	if length < 0 {
		length = -1
		// A body delimited by the connection's end cannot be followed by
		// another response.
		closeConn = closeConn || resp.Header.ContentLength() == -2
	}
	*s = respStream{x: x, u: u, cc: cc, conn: conn, br: br, client: x.client, length: length, closeConn: closeConn}
	up := &x.resp
	up.Reset()
	resp.Header.CopyTo(&up.Header)
	up.StreamBody = true
	_ = up.ReadBody(br, 0) // in stream mode it only sets the stream up
	x.refs.Add(1)
	resp.SetBodyStream(s, length)
}

func (s *respStream) Read(p []byte) (int, error) {
	now := time.Now()
	_ = s.conn.SetReadDeadline(now.Add(s.u.p.cur().Timeouts.UpstreamIdle))
	if s.client != nil {
		_ = s.client.SetWriteDeadline(now.Add(s.u.p.cur().Timeouts.ClientWrite))
	}
	n, err := s.x.resp.BodyStream().Read(p)
	s.x.bytes += int64(n)
	switch {
	case err == io.EOF:
		s.eof = true
		if s.trailers != nil {
			*s.trailers = append((*s.trailers)[:0], s.x.resp.Header.TrailerHeader()...)
		}
	case err != nil:
		s.err = &UpstreamError{Addr: s.u.addr, stage: stageBody, Err: err}
		return n, s.err
	}
	return n, err
}

// WriteTo copies the body to w in reads of up to 32 KiB, with the same
// deadlines and accounting as Read: fasthttp's own copy reads 4 KiB at a
// time, and frames each read as a chunk of a chunked response.
func (s *respStream) WriteTo(w io.Writer) (int64, error) {
	bp := s.u.p.copyBufs.Get().(*[]byte)
	defer s.u.p.copyBufs.Put(bp)
	buf := *bp
	var total int64
	for {
		n, err := s.Read(buf)
		if n > 0 {
			wn, werr := w.Write(buf[:n])
			total += int64(wn)
			if werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// SupportsBodyWriteTo tells fasthttp that WriteTo may replace Read.
func (s *respStream) SupportsBodyWriteTo() bool { return true }

// CloseWithError is called once, by fasthttp, when the body is written or
// abandoned; werr is the error writing it to the client, if any. A body
// sent by closeDelimited ends there instead.
func (s *respStream) CloseWithError(werr error) error {
	if s.toClose {
		return nil
	}
	return s.end(werr)
}

// end lets the endpoint's connection go and settles the exchange.
func (s *respStream) end(werr error) error {
	x, u := s.x, s.u
	complete := s.err == nil && (s.eof || s.length >= 0 && x.bytes == int64(s.length))
	_ = x.resp.CloseBodyStream()
	u.hc.ReleaseReader(s.br)
	if complete && !s.closeConn {
		u.conns.release(s.cc)
	} else {
		u.conns.close(s.cc)
	}
	switch {
	case s.err != nil:
		x.endAttempt(s.err)
	case complete:
		x.endAttempt(nil)
	default:
		// The client left, or the request failed on the edge's side after
		// the head arrived: no verdict on the endpoint.
		x.member.Done()
		if werr != nil && x.err == nil {
			x.err = werr
		}
	}
	x.done()
	return nil
}

// closeDelimited sends a response body of unknown length to an HTTP/1.0
// client, which cannot read chunked framing (RFC 9112, section 6.1): as it
// comes, after a head with neither Content-Length nor Transfer-Encoding,
// and ended by closing the connection, as nginx sends it. fasthttp would
// chunk it, so the edge writes it on the hijacked connection.
func closeDelimited(ctx *fasthttp.RequestCtx, s *respStream) {
	s.toClose = true
	h := &ctx.Response.Header
	h.SetContentLength(-2)
	h.Del(fasthttp.HeaderTransferEncoding) // which -2 leaves
	h.SetConnectionClose()
	head := h.AppendBytes(nil)
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(c net.Conn) {
		_, err := c.Write(head)
		if err == nil {
			_, err = s.WriteTo(c)
		}
		// The response lets go of the stream (its close is a no-op while
		// toClose is set) before end hands the exchange back to the pool.
		ctx.Response.ResetBody()
		_ = s.end(err)
	})
}
