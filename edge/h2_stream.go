package edge

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
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
}

// serve converts the request, runs the handler and writes its response.
func (st *h2Stream) serve(s *h2Server, c net.Conn, w http.ResponseWriter, r *http.Request) {
	d, _ := w.(deadliner)
	st.conn = streamConn{c: c, d: d, tls: r.TLS}
	ctx := &st.ctx
	ctx.Init2(&st.conn, s.flog, false)
	if err := st.readRequest(s, r); err != nil {
		s.p.ServerError(ctx, err)
	} else {
		s.handler(ctx)
	}
	st.writeResponse(s, w, r)
}

func (st *h2Stream) reset() {
	st.ctx.Request.Reset()
	st.ctx.Response.Reset()
	st.conn = streamConn{}
	st.src = bodyReader{}
	st.fw = flushWriter{}
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
		_ = st.conn.SetReadDeadline(time.Now().Add(s.p.Timeouts.ClientBody))
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

// bufferedWrite is how much of a response x/net takes without waiting for
// the client's flow-control window (its handler write buffer): a body no
// longer than that needs no write deadline.
const bufferedWrite = 4 << 10

// writeResponse writes the handler's response to the stream: status, the
// header fields less those HTTP/2 forbids (RFC 9113, section 8.2.2), and
// the body, flushed as it streams.
func (st *h2Stream) writeResponse(s *h2Server, w http.ResponseWriter, r *http.Request) {
	resp := &st.ctx.Response
	hdr := w.Header()
	for k, v := range resp.Header.All() {
		if connectionSpecific(k) {
			continue
		}
		key := headerKey(k)
		hdr[key] = append(hdr[key], string(v))
	}
	if _, ok := hdr["Content-Type"]; !ok {
		// None from the app: none from the edge either (x/net would sniff one).
		hdr["Content-Type"] = nil
	}
	if s.p.draining.Load() {
		// x/net reads it as "send GOAWAY once the streams are done", the
		// HTTP/2 counterpart of a draining edge's Connection: close.
		hdr["Connection"] = closeValue
	}
	status := resp.StatusCode()
	if resp.IsBodyStream() {
		if n := resp.Header.ContentLength(); n >= 0 {
			hdr["Content-Length"] = []string{strconv.Itoa(n)}
		}
		w.WriteHeader(status)
		st.fw = flushWriter{w: w}
		st.fw.f, _ = w.(errorFlusher)
		// The head goes out now, not with the first piece of the body
		// (event streams, long polls); BodyWriteTo ends the proxy's stream.
		_ = st.fw.flush()
		_ = resp.BodyWriteTo(&st.fw)
		return
	}
	body := resp.Body()
	switch {
	case r.Method == http.MethodHead:
		if n := resp.Header.ContentLength(); n >= 0 {
			hdr["Content-Length"] = []string{strconv.Itoa(n)}
		}
	case !noBody(status):
		hdr["Content-Length"] = []string{strconv.Itoa(len(body))}
	default:
		body = nil
	}
	if len(body) > bufferedWrite {
		_ = st.conn.SetWriteDeadline(time.Now().Add(s.p.Timeouts.ClientWrite))
	}
	w.WriteHeader(status)
	if len(body) > 0 && r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

var closeValue = []string{"close"}

// connectionSpecific reports whether a response field may not go out on
// HTTP/2 (RFC 9113, section 8.2.2), or is the edge's to write: the length,
// which it sets from the body, and Trailer, whose fields it does not relay.
func connectionSpecific(k []byte) bool {
	switch len(k) {
	case 2:
		return bytes.EqualFold(k, []byte("Te"))
	case 7:
		return bytes.EqualFold(k, []byte("Upgrade")) || bytes.EqualFold(k, []byte("Trailer"))
	case 10:
		return bytes.EqualFold(k, []byte("Connection")) || bytes.EqualFold(k, []byte("Keep-Alive"))
	case 14:
		return bytes.EqualFold(k, []byte("Content-Length"))
	case 16:
		return bytes.EqualFold(k, []byte("Proxy-Connection"))
	case 17:
		return bytes.EqualFold(k, []byte("Transfer-Encoding"))
	}
	return false
}

// headerKey is k as a string, without allocating for the fields most
// responses carry.
func headerKey(k []byte) string {
	switch string(k) {
	case "Content-Type":
		return "Content-Type"
	case "Date":
		return "Date"
	case "Server":
		return "Server"
	case "X-Request-Id":
		return "X-Request-Id"
	case "Cache-Control":
		return "Cache-Control"
	case "Set-Cookie":
		return "Set-Cookie"
	case "Etag":
		return "Etag"
	case "Last-Modified":
		return "Last-Modified"
	case "Content-Encoding":
		return "Content-Encoding"
	case "Vary":
		return "Vary"
	case "Location":
		return "Location"
	case "Retry-After":
		return "Retry-After"
	}
	return string(k)
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
