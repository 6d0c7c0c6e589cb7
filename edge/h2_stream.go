package edge

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/valyala/fasthttp"
)

// h2Stream turns one HTTP/2 stream into a fasthttp.RequestCtx for the
// proxy's handler, and the handler's fasthttp response back into the
// stream. Pooled: nothing of it outlives the stream.
type h2Stream struct {
	ctx  fasthttp.RequestCtx
	conn streamConn
	// src is the request body as the proxy reads it: without the Close
	// of x/net's body, which fasthttp would call when the proxy wraps the
	// stream (Request.SetBodyStream closes the stream it replaces).
	src bodyReader
	// small holds a short body with a declared length, read before the
	// handler runs, as fasthttp's server prefetches one on HTTP/1.1.
	small []byte
	fw    flushWriter
	// trailers is the app server's trailer section, copied as the body
	// ends.
	trailers []byte
}

// serve converts the request, runs the handler and writes its response;
// abort reports that the stream must be reset rather than ended.
func (st *h2Stream) serve(s *h2Server, c net.Conn, w http.ResponseWriter, r *http.Request) (abort bool) {
	d, _ := w.(deadliner)
	st.conn = streamConn{c: c, d: d, tls: r.TLS}
	ctx := &st.ctx
	ctx.Init2(&st.conn, s.flog, false)
	if err := st.readRequest(s, r); err != nil {
		s.p.ServerError(ctx, err)
	} else {
		s.handler(ctx)
	}
	return st.writeResponse(s, w, r)
}

func (st *h2Stream) reset() {
	st.ctx.Request.Reset()
	st.ctx.Response.Reset()
	st.conn = streamConn{}
	st.src = bodyReader{}
	st.fw = flushWriter{}
	st.trailers = st.trailers[:0]
}

// readRequest fills ctx.Request from r: :method, :path as the request
// target, :authority (or Host) as Host, the header fields, and the body as
// a stream, or read whole when it is short and declares its length.
func (st *h2Stream) readRequest(s *h2Server, r *http.Request) error {
	req := &st.ctx.Request
	h := &req.Header
	h.SetMethod(r.Method)
	h.SetRequestURI(r.RequestURI)
	h.SetHost(r.Host)
	for k, vs := range r.Header {
		if k == "Host" || k == "Content-Length" {
			continue
		}
		for _, v := range vs {
			h.Add(k, v)
		}
	}
	cl := r.ContentLength
	if r.Body == nil || r.Body == http.NoBody || cl == 0 {
		return nil
	}
	if limit := s.p.Limits.MaxBodyBytes; cl > 0 && cl <= prefetched && (limit == 0 || cl <= limit) {
		if cap(st.small) < int(cl) {
			st.small = make([]byte, prefetched)
		}
		b := st.small[:cl]
		_ = st.conn.SetReadDeadline(time.Now().Add(s.p.cur().Timeouts.ClientBody))
		_, err := io.ReadFull(r.Body, b)
		_ = st.conn.SetReadDeadline(time.Time{})
		if err != nil {
			return err
		}
		req.SetBodyRaw(b)
		return nil
	}
	st.src = bodyReader{r.Body}
	req.SetBodyStream(&st.src, int(cl)) // -1: chunked to the app server
	return nil
}

// bodyReader hides everything of a body but Read.
type bodyReader struct{ r io.Reader }

func (b *bodyReader) Read(p []byte) (int, error) { return b.r.Read(p) }

// errorFlusher is x/net's ResponseWriter flushing with an error.
type errorFlusher interface{ FlushError() error }

// flushWriter sends every write of a streamed body at once, so that an
// event stream is not held in x/net's buffer.
type flushWriter struct {
	w io.Writer
	f errorFlusher
}

func (f *flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil {
		err = f.flush()
	}
	return n, err
}

func (f *flushWriter) flush() error {
	if f.f == nil {
		return nil
	}
	return f.f.FlushError()
}

// deadliner is x/net's ResponseWriter moving a stream's deadlines.
type deadliner interface {
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// streamConn is the net.Conn of a stream's RequestCtx: the connection's
// addresses and TLS state (ctx.IsTLS, X-Forwarded-Proto), and the stream's
// deadlines, which the proxy moves as bodies flow. Its bytes are x/net's:
// Read and Write fail.
type streamConn struct {
	c   net.Conn
	d   deadliner
	tls *tls.ConnectionState
}

// connLimit is the HTTP/2 connection's place in tenants' connection
// counts, which its streams share.
func (c *streamConn) connLimit() *connLimit { return connLimitOf(c.c) }

var errStreamConn = errors.New("an HTTP/2 stream is not read or written as a connection")

func (s *streamConn) Read([]byte) (int, error)  { return 0, errStreamConn }
func (s *streamConn) Write([]byte) (int, error) { return 0, errStreamConn }
func (s *streamConn) Close() error              { return nil }
func (s *streamConn) LocalAddr() net.Addr       { return s.c.LocalAddr() }
func (s *streamConn) RemoteAddr() net.Addr      { return s.c.RemoteAddr() }

func (s *streamConn) SetDeadline(t time.Time) error {
	if err := s.SetReadDeadline(t); err != nil {
		return err
	}
	return s.SetWriteDeadline(t)
}

func (s *streamConn) SetReadDeadline(t time.Time) error {
	if s.d == nil {
		return nil
	}
	return s.d.SetReadDeadline(t)
}

func (s *streamConn) SetWriteDeadline(t time.Time) error {
	if s.d == nil {
		return nil
	}
	return s.d.SetWriteDeadline(t)
}

// Handshake and ConnectionState make fasthttp see a TLS connection.
func (s *streamConn) Handshake() error { return nil }

func (s *streamConn) ConnectionState() tls.ConnectionState {
	if s.tls == nil {
		return tls.ConnectionState{}
	}
	return *s.tls
}
