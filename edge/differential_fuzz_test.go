//go:build linux

package edge

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podedge/podedge/internal/h1"
)

// FuzzEngines sends the same bytes to the two data paths, the event loops
// and fasthttp's server, each in front of an app server of its own that
// records what it is sent. Both must answer the client with the same
// statuses, and hand their app servers the same requests: method, target,
// headers (as net/http reads them, X-Request-Id left out) and body. Where
// the two paths disagree, one of them reads the bytes as the other does
// not: the root of request smuggling.
func FuzzEngines(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	for _, s := range differentialSeeds {
		f.Add([]byte(s))
	}
	loop := newDiffSide(f, EngineLoop)
	fast := newDiffSide(f, EngineFasthttp)
	f.Fuzz(func(t *testing.T, in []byte) {
		if knownDifference(in) {
			t.Skip("a difference edge/README.md lists as intended")
		}
		if len(bytes.TrimLeft(in, "\r\n")) == 0 {
			// No request: fasthttp answers 408 to a connection that sent
			// nothing when client_header passes, the loops close it
			// silently at client_idle. Neither reaches the app.
			t.Skip("no request in the input")
		}
		a := loop.exchange(t, in)
		b := fast.exchange(t, in)
		if !sameRefusals(a, b) || !slices.Equal(a.requests, b.requests) {
			t.Fatalf("the engines disagree on %q:\nloop:     statuses %v, app saw %q\nfasthttp: statuses %v, app saw %q",
				in, a.statuses, a.requests, b.statuses, b.requests)
		}
	})
}

// differentialSeeds are inputs whose framing two readers of HTTP/1.1 could
// read apart.
var differentialSeeds = []string{
	"POST /x HTTP/1.1\r\nHost: acme.example.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
	"POST /x HTTP/1.1\r\nHost: acme.example.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
	"POST /x HTTP/1.1\r\nHost: acme.example.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
	"POST /x HTTP/1.1\r\nHost: acme.example.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
	"POST /x HTTP/1.1\r\nHost: acme.example.test\r\nTransfer-Encoding: identity\r\n\r\n",
	"POST /x HTTP/1.1\r\nHost: acme.example.test\r\nContent-Length: +3\r\n\r\nabc",
	"POST /x HTTP/1.1\r\nHost: acme.example.test\r\nContent-Length: 3 \r\n\r\nabc",
	"POST /x HTTP/1.1\r\nHost: acme.example.test\r\nContent Length: 3\r\n\r\nabc",
	"POST /x HTTP/1.1\r\nHost: acme.example.test\r\nContent-Length : 3\r\n\r\nabc",
	"GET / HTTP/1.1\r\nHost: acme.example.test\r\nHost: other.example.test\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: acme.example.test\r\nX-A: 1\r\n 2\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: acme.example.test\r\nX-A: 1\n\r\n",
	"GET / HTTP/1.1\r\nHost: acme.example.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: acme.example.test\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: acme.example.test\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: acme.example.test\r\n\r\n",
	"POST /x HTTP/1.1\r\nHost: acme.example.test\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n",
	"POST /x HTTP/1.1\r\nHost: acme.example.test\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
	"GET /%2e%2e/x HTTP/1.1\r\nHost: acme.example.test\r\n\r\n",
	"get / HTTP/1.1\r\nHost: acme.example.test\r\n\r\n",
	"GET / HTTP/1.2\r\nHost: acme.example.test\r\n\r\n",
	"GET  / HTTP/1.1\r\nHost: acme.example.test\r\n\r\n",
}

// knownDifference reports inputs that edge/README.md lists as read apart
// on purpose, both after the empty lines both paths ignore: a bare LF
// ending the request line, or ending a head that has no field at all.
// The loops refuse either; fasthttp keeps no copy of the request line, nor
// of an empty field block, to check.
func knownDifference(in []byte) bool {
	line, rest, found := bytes.Cut(in[h1.SkipEmptyLines(in):], []byte("\n"))
	return found && (!bytes.HasSuffix(line, []byte("\r")) || bytes.HasPrefix(rest, []byte("\n")))
}

// sameRefusals compares the statuses the client got. One difference is
// intended (edge/README.md, "Framing"): a head that fasthttp's parser
// reads as unfinished (a bare LF before the blank line) waits there for
// client_header and gets 408, where the loops see the bare LF and answer
// 400 at once. Nothing reaches the app server either way.
func sameRefusals(a, b diffOutcome) bool {
	if len(a.statuses) != len(b.statuses) {
		return false
	}
	for i, s := range a.statuses {
		if s != b.statuses[i] && !(s == 400 && b.statuses[i] == 408 && len(a.requests) == 0 && len(b.requests) == 0) {
			return false
		}
	}
	return true
}

// diffSide is one engine in front of its own recording app server.
type diffSide struct {
	addr string
	mu   sync.Mutex
	seen []string
	// inflight counts the requests the app server is handling: one whose
	// body never came ends only when the edge gives up on it, and must be
	// counted with its own input, not the next.
	inflight atomic.Int64
}

func newDiffSide(f *testing.F, engine string) *diffSide {
	s := &diffSide{}
	app := newBackend(f, engine+"-app", func(w http.ResponseWriter, r *http.Request) {
		s.inflight.Add(1)
		defer s.inflight.Add(-1)
		body, err := io.ReadAll(r.Body)
		if err != nil {
			// A streamed body the edge cut off (malformed, or the client
			// left): not a request the app server received. When the
			// head goes out before the body fails depends on how the
			// bytes arrived, on either path.
			return
		}
		s.mu.Lock()
		s.seen = append(s.seen, describe(r, body))
		s.mu.Unlock()
		_, _ = io.WriteString(w, "app says hi\n")
	})
	// Client timeouts short enough that every input ends soon, long
	// enough that a loaded machine answers a whole request within them.
	p := fuzzProxy()
	wait := 250 * time.Millisecond
	p.Timeouts.ClientHeader, p.Timeouts.ClientBody, p.Timeouts.ClientIdle = wait, wait, wait
	st := fuzzState(app.addr(), "127.0.0.1:1")
	s.addr = newHarnessOn(f, engine, p, st).addr
	return s
}

// describe is a request as an app server sees it, normalised: the header
// lines sorted, X-Request-Id left out (each engine draws its own), and a
// "Content-Length: 0" on a request without a body too (fasthttp's client
// writes one for methods other than GET and HEAD; a request without a
// length has no body either, RFC 9112, section 6.3).
func describe(r *http.Request, body []byte) string {
	var lines []string
	for k, vs := range r.Header {
		if k == "X-Request-Id" || k == "Content-Length" && len(body) == 0 && len(vs) == 1 && vs[0] == "0" {
			continue
		}
		lines = append(lines, k+": "+strings.Join(vs, ", "))
	}
	slices.Sort(lines)
	sum := sha256.Sum256(body)
	return fmt.Sprintf("%s %s %s host=%s len=%d body=%s [%s]", r.Method, r.RequestURI, r.Proto, r.Host,
		len(body), hex.EncodeToString(sum[:6]), strings.Join(lines, "; "))
}

type diffOutcome struct {
	statuses []int
	requests []string
}

// exchange sends in and reads every response until the edge closes the
// connection, at the latest when its short client timeouts pass. (A half
// close would race the exchange: the loops, as nginx, abandon a request
// whose client left; fasthttp serves it.)
func (s *diffSide) exchange(t *testing.T, in []byte) diffOutcome {
	t.Helper()
	s.settle(t, "an earlier input")
	s.mu.Lock()
	s.seen = nil
	s.mu.Unlock()
	c, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(in); err != nil && !isReset(err) {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var out diffOutcome
	br := bufio.NewReader(c)
	for {
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
		if err != nil {
			if isTimeout(err) {
				t.Fatalf("the edge held the connection for 5s after %q", in)
			}
			break
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		out.statuses = append(out.statuses, resp.StatusCode)
	}
	s.settle(t, fmt.Sprintf("%q", in))
	s.mu.Lock()
	out.requests = append(out.requests, s.seen...)
	s.mu.Unlock()
	return out
}

// settle waits for the app server to finish the requests it is handling,
// which the edge ends within its client timeouts when their bodies stall.
func (s *diffSide) settle(t *testing.T, what string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); s.inflight.Load() > 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the app server still handles a request of %s after 5s", what)
		}
	}
}
