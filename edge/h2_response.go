package edge

import (
	"bytes"
	"net/http"
	"strconv"
	"time"
	"unsafe"

	"github.com/valyala/fasthttp"
)

// bufferedWrite is how much of a response x/net takes without waiting for
// the client's flow-control window (its handler write buffer,
// handlerChunkWriteSize): a body no longer than that needs no write
// deadline, and reaches x/net whole when the handler returns, so that x/net
// sets its Content-Length itself and sends HEADERS and DATA with
// END_STREAM one after the other.
const bufferedWrite = 4 << 10

// writeResponse writes the handler's response to the stream: status, the
// header fields less those HTTP/2 forbids (RFC 9113, section 8.2.2), and
// the body, flushed as it streams, followed by the app server's trailer
// fields, if it sent any. It reports whether the stream must be reset
// rather than ended: a streamed body that failed part-way.
func (st *h2Stream) writeResponse(s *h2Server, w http.ResponseWriter, r *http.Request) (abort bool) {
	resp := &st.ctx.Response
	hdr := w.Header()
	f := s.fields.Get().(*h2Fields)
	f.fill(hdr, &resp.Header)
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
			hdr["Content-Length"] = f.length(n)
		}
		s.fields.Put(f)
		rs, _ := resp.BodyStream().(*respStream)
		if rs != nil {
			rs.trailers = &st.trailers
		}
		w.WriteHeader(status)
		st.fw = flushWriter{w: w}
		st.fw.f, _ = w.(errorFlusher)
		// The head goes out now, not with the first piece of the body
		// (event streams, long polls); BodyWriteTo ends the proxy's stream.
		_ = st.fw.flush()
		if err := resp.BodyWriteTo(&st.fw); err != nil {
			// Ending the stream would pass a truncated body off as whole.
			return true
		}
		addTrailers(hdr, st.trailers)
		return false
	}
	body := resp.Body()
	switch {
	case r.Method == http.MethodHead:
		if n := resp.Header.ContentLength(); n >= 0 {
			hdr["Content-Length"] = f.length(n)
		}
		body = nil
	case noBody(status):
		body = nil
	case len(body) > bufferedWrite:
		// x/net sets the length only of a body it holds whole when the
		// handler returns.
		hdr["Content-Length"] = f.length(len(body))
		_ = st.conn.SetWriteDeadline(time.Now().Add(s.p.cur().Timeouts.ClientWrite))
	}
	s.fields.Put(f)
	w.WriteHeader(status)
	if len(body) > 0 {
		_, _ = w.Write(body)
	}
	return false
}

var closeValue = []string{"close"}

// h2Fields makes the strings of x/net's http.Header out of a fasthttp
// response head without allocating. The map's values must stay as they are
// until x/net has written the stream's last frame, after the handler
// returned, so they are never rewritten: a field equal to the one at the
// same place in the previous head converted shares its strings (the
// Content-Type, the Date within its second, the app server's own fields),
// and new values are copied into an append-only arena, whose chunks are
// left to the collector once full. The server pools them, and a stream
// holds one only while it converts its head: the few in use stay in the
// CPUs' caches, where one per stream (hundreds, each reused after all the
// others) would be read from memory each time.
type h2Fields struct {
	last  []h2Field
	arena []byte
	one   []string // one-value slices: 1 long, 1 of capacity
	// clen is the string of the last length set, clenN that length.
	clen  []string
	clenN int
}

type h2Field struct {
	key  string
	vals []string // {value}
}

// Arena chunk sizes; a value longer than maxArenaValue is allocated on
// its own.
const (
	arenaBytes    = 16 << 10
	arenaSlices   = 256
	maxArenaValue = 512
)

// fill adds h's fields to hdr, less those HTTP/2 forbids or the edge sets.
func (f *h2Fields) fill(hdr http.Header, h *fasthttp.ResponseHeader) {
	i := 0
	for k, v := range h.All() {
		if connectionSpecific(k) {
			continue
		}
		if i == len(f.last) {
			f.last = append(f.last, h2Field{})
		}
		e := &f.last[i]
		i++
		if string(k) != e.key {
			e.key, e.vals = headerKey(k, f), nil
		}
		if e.vals == nil || string(v) != e.vals[0] {
			e.vals = f.slice(f.str(v))
		}
		if vs, ok := hdr[e.key]; ok {
			// A repeated field: a new slice (vs has no room beyond its length).
			hdr[e.key] = append(vs[:len(vs):len(vs)], e.vals[0])
		} else {
			hdr[e.key] = e.vals
		}
	}
}

// length is n as a Content-Length value.
func (f *h2Fields) length(n int) []string {
	if f.clen == nil || f.clenN != n {
		var b [20]byte
		f.clen, f.clenN = f.slice(f.str(strconv.AppendInt(b[:0], int64(n), 10))), n
	}
	return f.clen
}

// str is b as a string that nothing will overwrite.
func (f *h2Fields) str(b []byte) string {
	switch {
	case len(b) == 0:
		return ""
	case len(b) > maxArenaValue:
		return string(b)
	}
	if cap(f.arena)-len(f.arena) < len(b) {
		f.arena = make([]byte, 0, arenaBytes)
	}
	n := len(f.arena)
	f.arena = append(f.arena, b...)
	return unsafe.String(&f.arena[n], len(b))
}

// slice is {v}, of capacity 1 so that an append copies it.
func (f *h2Fields) slice(v string) []string {
	if len(f.one) == cap(f.one) {
		f.one = make([]string, 0, arenaSlices)
	}
	f.one = append(f.one, v)
	n := len(f.one)
	return f.one[n-1 : n : n]
}

// connectionSpecific reports whether a response field may not go out on
// HTTP/2 (RFC 9113, section 8.2.2), or is the edge's to write: the length,
// which it sets from the body, and Trailer, which is hop-by-hop on every
// path (the trailer fields themselves follow the body).
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

// headerKey is k as a string: a constant for the fields most responses
// carry, else from f's arena.
func headerKey(k []byte, f *h2Fields) string {
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
	return f.str(k)
}

// addTrailers declares the trailer fields in section (fasthttp's
// TrailerHeader: "Name: value" lines, then an empty one) to x/net, which
// sends them in a HEADERS frame that ends the stream once the handler
// returns. Trailers are rare: these strings are allocated.
func addTrailers(hdr http.Header, section []byte) {
	for len(section) > 0 {
		line := section
		if i := bytes.IndexByte(section, '\n'); i >= 0 {
			line, section = section[:i], section[i+1:]
		} else {
			section = nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok || len(k) == 0 {
			continue
		}
		key := http.TrailerPrefix + http.CanonicalHeaderKey(string(k))
		hdr[key] = append(hdr[key], string(bytes.TrimLeft(v, " \t")))
	}
}
