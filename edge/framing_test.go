package edge

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder is an app server that records the target of every request it
// is sent, to tell one request from two.
type recorder struct {
	*backend
	mu      sync.Mutex
	targets []string
}

func newRecorder(t *testing.T) *recorder {
	r := &recorder{}
	r.backend = newBackend(t, "rec", func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.Copy(io.Discard, req.Body)
		r.mu.Lock()
		r.targets = append(r.targets, req.Method+" "+req.RequestURI)
		r.mu.Unlock()
		_, _ = io.WriteString(w, "ok")
	})
	return r
}

func (r *recorder) seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.targets...)
}

// readAll reads every response the edge sends on conn until it closes it,
// and reports whether it did close it.
func readAll(t *testing.T, conn net.Conn) (statuses []int, closed bool) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	for {
		resp, err := http.ReadResponse(br, &http.Request{Method: "POST"})
		if err != nil {
			return statuses, err == io.EOF || err == io.ErrUnexpectedEOF || isReset(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		statuses = append(statuses, resp.StatusCode)
		if resp.Close {
			_, err := br.ReadByte()
			return statuses, err != nil
		}
	}
}

// Heads whose lines end, or begin, where one reader of HTTP/1.1 and another
// could disagree are refused on both engines before anything reaches the
// app server, and the connection is closed: no request smuggled behind
// them arrives (RFC 9112, sections 2.2, 5.1, 5.2 and 6.1).
func TestAmbiguousFramingIsRefused(t *testing.T) {
	const host = "Host: acme.example.test\r\n"
	const smuggled = "GET /smuggled HTTP/1.1\r\n" + host + "\r\n"
	cases := []struct {
		name   string
		raw    string
		status int
	}{
		{"bare LF ends the head", "POST /x HTTP/1.1\r\n" + host + "\nContent-Length: 51\r\n\r\n" + smuggled, 400},
		{"LF CR LF ends the head", "POST /x HTTP/1.1\r\n" + host + "\n\r\nContent-Length: 51\r\n\r\n" + smuggled, 400},
		// (A bare LF after the request line, too, on the event loops:
		// fasthttp keeps no copy of the request line to check; see
		// TestBareLFAfterTheRequestLine.)
		{"bare LF ends a header line", "POST /x HTTP/1.1\r\n" + host + "X-A: 1\nContent-Length: 51\r\n\r\n" + smuggled, 400},
		{"bare CR within a line", "POST /x HTTP/1.1\r\n" + host + "X-A: 1\rContent-Length: 51\r\n\r\n" + smuggled, 400},
		{"folded line hides a length", "POST /x HTTP/1.1\r\n" + host + "X-A: 1\r\n Content-Length: 51\r\n\r\n" + smuggled, 400},
		{"folded continuation", "GET /x HTTP/1.1\r\n" + host + "X-A: 1\r\n\t2\r\n\r\n", 400},
		{"space before the colon", "POST /x HTTP/1.1\r\n" + host + "Content-Length : 51\r\n\r\n" + smuggled, 400},
		{"space within a name", "POST /x HTTP/1.1\r\n" + host + "Content Length: 51\r\n\r\n" + smuggled, 400},
		{"line without a colon", "GET /x HTTP/1.1\r\n" + host + "X-A\r\n\r\n", 400},
		{"transfer coding identity", "POST /x HTTP/1.1\r\n" + host + "Transfer-Encoding: identity\r\nContent-Length: 51\r\n\r\n" + smuggled, 501},
		{"transfer coding gzip then chunked", "POST /x HTTP/1.1\r\n" + host + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" + smuggled, 501},
		{"a Host with two ports", "GET /x HTTP/1.1\r\nHost: acme.example.test:80:80\r\n\r\n", 400},
		{"a Host port that is no number", "GET /x HTTP/1.1\r\nHost: acme.example.test:http\r\n\r\n", 400},
		{"chunked twice in one line", "POST /x HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n" + smuggled, 501},
	}
	forEngines(t, func(t *testing.T, engine string) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				rec := newRecorder(t)
				h := newHarnessOn(t, engine, &Proxy{}, onePod(rec.backend))
				conn := rawConn(t, h.addr)
				if _, err := io.WriteString(conn, c.raw); err != nil {
					t.Fatal(err)
				}
				statuses, closed := readAll(t, conn)
				if len(statuses) != 1 || statuses[0] != c.status || !closed {
					t.Errorf("responses %v, closed %v; want one %d and the connection closed", statuses, closed, c.status)
				}
				if got := rec.seen(); len(got) != 0 {
					t.Errorf("the app server received %v; want nothing", got)
				}
			})
		}
	})
}

// The event loops refuse a request line that ends in a bare LF; fasthttp
// takes it (its parser keeps no copy of the line to check), and since it
// writes the request out again from what it parsed, the app server gets one
// well-framed request either way.
func TestBareLFAfterTheRequestLine(t *testing.T) {
	raw := "POST /x HTTP/1.1\nHost: acme.example.test\r\nContent-Length: 2\r\n\r\nok"
	want := map[string]int{EngineLoop: 400, EngineFasthttp: 200}
	forEngines(t, func(t *testing.T, engine string) {
		rec := newRecorder(t)
		h := newHarnessOn(t, engine, &Proxy{}, onePod(rec.backend))
		conn := rawConn(t, h.addr)
		io.WriteString(conn, raw)
		if resp := readResponse(t, conn, "POST"); resp.StatusCode != want[engine] {
			t.Fatalf("status %d, want %d", resp.StatusCode, want[engine])
		}
		if got := rec.seen(); want[engine] == 200 && (len(got) != 1 || got[0] != "POST /x") {
			t.Fatalf("the app server received %v; want one POST /x", got)
		}
	})
}

// A head with no field whose blank line is a bare LF: the loops refuse
// it; fasthttp, which keeps nothing of an empty field block to check,
// reads on, and here finds no tenant (no Host). Nothing reaches the app
// server on either path.
func TestBareLFEndingAHeadWithoutFields(t *testing.T) {
	want := map[string]int{EngineLoop: 400, EngineFasthttp: 404}
	forEngines(t, func(t *testing.T, engine string) {
		rec := newRecorder(t)
		h := newHarnessOn(t, engine, &Proxy{}, onePod(rec.backend))
		conn := rawConn(t, h.addr)
		io.WriteString(conn, "GET / HTTP/1.0\r\n\n\r\n\r\n")
		if resp := readResponse(t, conn, "GET"); resp.StatusCode != want[engine] {
			t.Fatalf("status %d, want %d", resp.StatusCode, want[engine])
		}
		if got := rec.seen(); len(got) != 0 {
			t.Fatalf("the app server received %v", got)
		}
	})
}

// Empty lines before a request line are ignored, as RFC 9112 (section 2.2)
// has a server do, on both engines.
func TestEmptyLinesBeforeARequestAreIgnored(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		rec := newRecorder(t)
		h := newHarnessOn(t, engine, &Proxy{}, onePod(rec.backend))
		conn := rawConn(t, h.addr)
		io.WriteString(conn, "\r\n\r\nGET /a HTTP/1.1\r\nHost: acme.example.test\r\n\r\n")
		if resp := readResponse(t, conn, "GET"); resp.StatusCode != 200 {
			t.Fatalf("status %d, want 200", resp.StatusCode)
		}
		if got := rec.seen(); len(got) != 1 || got[0] != "GET /a" {
			t.Fatalf("the app server received %v; want GET /a", got)
		}
	})
}

// dribble writes msg a byte at a time, every pace, until the edge answers;
// it returns the answer's status and how many bytes had been written.
func dribble(t *testing.T, conn net.Conn, msg string, pace time.Duration) (status, written int) {
	t.Helper()
	answered := make(chan int, 1)
	go func() {
		_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: "GET"})
		if err != nil {
			answered <- 0
			return
		}
		answered <- resp.StatusCode
	}()
	tick := time.NewTicker(pace)
	defer tick.Stop()
	for written < len(msg) {
		select {
		case status := <-answered:
			return status, written
		case <-tick.C:
		}
		if _, err := conn.Write([]byte{msg[written]}); err != nil {
			break
		}
		written++
	}
	return <-answered, written
}

// A head, or a body the event loops buffer, sent a byte at a time gets 408
// once its clock runs out, however steadily the bytes come: the clock
// starts with the part's first byte and is not set again by later ones.
func TestDribbledRequestTimesOut(t *testing.T) {
	head := "GET /slow HTTP/1.1\r\nHost: acme.example.test\r\nX-Padding: " + strings.Repeat("p", 200) + "\r\n\r\n"
	forEngines(t, func(t *testing.T, engine string) {
		t.Run("head", func(t *testing.T) {
			rec := newRecorder(t)
			h := newHarnessOn(t, engine, &Proxy{Timeouts: Timeouts{ClientHeader: 500 * time.Millisecond}}, onePod(rec.backend))
			status, written := dribble(t, rawConn(t, h.addr), head, 20*time.Millisecond)
			if status != 408 || written == len(head) {
				t.Fatalf("status %d after %d of %d bytes; want 408 before the head is whole", status, written, len(head))
			}
		})
		if engine != EngineLoop {
			return // fasthttp streams bodies past 8 KiB, each pause bounded (edge/README.md)
		}
		t.Run("buffered body", func(t *testing.T) {
			rec := newRecorder(t)
			h := newHarnessOn(t, engine, &Proxy{Timeouts: Timeouts{ClientBody: 500 * time.Millisecond}}, onePod(rec.backend))
			body := strings.Repeat("b", 200)
			conn := rawConn(t, h.addr)
			io.WriteString(conn, "POST /slow HTTP/1.1\r\nHost: acme.example.test\r\nContent-Length: 200\r\n\r\n")
			status, written := dribble(t, conn, body, 20*time.Millisecond)
			if status != 408 || written == len(body) {
				t.Fatalf("status %d after %d of %d body bytes; want 408 before the body is whole", status, written, len(body))
			}
			if got := rec.seen(); len(got) != 0 {
				t.Fatalf("the app server received %v", got)
			}
		})
	})
}
