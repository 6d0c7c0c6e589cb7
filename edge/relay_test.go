package edge

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// How responses of every framing reach the client, and what the edge does
// with connections that end early, on either side.

// Requests sent back to back on one connection are answered in order, a
// HEAD among them without a body.
func TestPipelinedRequestsAnsweredInOrder(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		a := newBackend(t, "a", func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, "path "+r.URL.Path)
		})
		h := newHarnessOn(t, engine, &Proxy{}, onePod(a))
		conn := rawConn(t, h.addr)
		req := func(method, path string) string {
			return method + " " + path + " HTTP/1.1\r\nHost: acme.example.test\r\n\r\n"
		}
		if _, err := io.WriteString(conn, req("GET", "/1")+req("HEAD", "/2")+req("GET", "/3")); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(conn)
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		for _, want := range []struct{ method, body string }{{"GET", "path /1"}, {"HEAD", ""}, {"GET", "path /3"}} {
			resp, err := http.ReadResponse(br, &http.Request{Method: want.method})
			if err != nil {
				t.Fatalf("%s: %v", want.method, err)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != 200 || string(body) != want.body {
				t.Fatalf("%s: %d %q (%v), want 200 %q", want.method, resp.StatusCode, body, err, want.body)
			}
		}
	})
}

// rawBackend is an endpoint written by hand, for framings net/http does
// not produce on demand: serve gets each connection's reader and writer
// and returns false to close it.
func rawBackend(t *testing.T, serve func(n int, br *bufio.Reader, c net.Conn) bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for n := 0; ; n++ {
					if _, err := http.ReadRequest(br); err != nil || !serve(n, br, c) {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// A chunked response of any length is relayed chunk framing and all, and
// the connection serves the next request after it.
func TestChunkedResponseRelayedAndConnectionKept(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		piece := strings.Repeat("0123456789abcdef", 8<<10) // 128 KiB
		a := newBackend(t, "a", func(w http.ResponseWriter, r *http.Request) {
			for range 3 {
				_, _ = io.WriteString(w, piece)
				w.(http.Flusher).Flush()
			}
			w.Header().Set("X-Trailer-Checked", "no")
		})
		h := newHarnessOn(t, engine, &Proxy{}, onePod(a))
		conn := rawConn(t, h.addr)
		br := bufio.NewReader(conn)
		want := sha256.Sum256([]byte(strings.Repeat(piece, 3)))
		for i := range 2 {
			fmt.Fprintf(conn, "GET /%d HTTP/1.1\r\nHost: acme.example.test\r\n\r\n", i)
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
			if err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("request %d: body: %v", i, err)
			}
			if got := sha256.Sum256(body); got != want || len(resp.TransferEncoding) == 0 || resp.Close {
				t.Fatalf("request %d: %d bytes, chunked %v, close %v; want 384 KiB intact, chunked, kept open",
					i, len(body), resp.TransferEncoding, resp.Close)
			}
		}
	})
}

// A response whose body ends with the endpoint's connection reaches the
// client whole. The loop relays it as it comes and closes the client's
// connection after it; fasthttp's server frames it anew.
func TestResponseEndedByCloseRelayed(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		addr := rawBackend(t, func(_ int, _ *bufio.Reader, c net.Conn) bool {
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
			_, _ = io.WriteString(c, strings.Repeat("x", 300<<10))
			return false
		})
		h := newHarnessOn(t, engine, &Proxy{}, withApps(onePod(), addr))
		conn := rawConn(t, h.addr)
		io.WriteString(conn, "GET / HTTP/1.1\r\nHost: acme.example.test\r\n\r\n")
		resp := readResponse(t, conn, "GET")
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || len(body) != 300<<10 {
			t.Fatalf("%d, %d bytes; want 200, 300 KiB", resp.StatusCode, len(body))
		}
		if engine != EngineLoop {
			return
		}
		if !resp.Close {
			t.Fatal("no Connection: close on a response ended by the endpoint's close")
		}
		if _, err := conn.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("the client's connection stayed open: %v", err)
		}
	})
}

// An endpoint that closes a kept-alive connection just as the edge reuses
// it is not at fault: a GET goes again on a fresh connection, a POST gets
// 502, and passive health holds neither against the endpoint.
func TestStalePooledConnectionIsNotTheEndpointsFault(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		var answered atomic.Int64
		addr := rawBackend(t, func(n int, _ *bufio.Reader, c net.Conn) bool {
			if n > 0 {
				return false // the second request on a connection: closed unanswered
			}
			answered.Add(1)
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			return true
		})
		reg := prometheus.NewRegistry()
		h := newHarnessOn(t, engine, &Proxy{Metrics: NewMetrics(reg)}, withApps(onePod(), addr))
		c := client(t)
		for i := range 5 {
			if code, _, body := do(t, c, "GET", h.addr, "acme.example.test", "/", nil, nil); code != 200 || body != "ok" {
				t.Fatalf("GET %d: %d %q", i, code, body)
			}
		}
		for i := range 5 {
			code, _, _ := do(t, c, "POST", h.addr, "acme.example.test", "/", strings.NewReader("x"), nil)
			if code != 200 && code != 502 {
				t.Fatalf("POST %d: %d, want 200 or 502", i, code)
			}
		}
		// Five POSTs that met dead connections would have ejected the endpoint
		// (three failures) had they counted: the GET would get 503.
		if code, _, body := do(t, c, "GET", h.addr, "acme.example.test", "/", nil, nil); code != 200 || body != "ok" {
			t.Fatalf("GET after the POSTs: %d %q", code, body)
		}
		if n := metricValue(t, reg, "edge_upstream_ejections_total", nil); n != 0 {
			t.Fatalf("%v ejections", n)
		}
	})
}

// A client that leaves while its request is with the endpoint costs the
// endpoint nothing, and the edge serves the next client.
func TestClientGoneMidRequest(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		started := make(chan struct{}, 1)
		a := newBackend(t, "a", func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				started <- struct{}{}
				time.Sleep(300 * time.Millisecond)
			}
			_, _ = io.WriteString(w, "a")
		})
		var log lockedBuffer
		reg := prometheus.NewRegistry()
		h := newHarnessOn(t, engine, &Proxy{Metrics: NewMetrics(reg), AccessLog: NewAccessLogHandler(&log)}, onePod(a))
		conn := rawConn(t, h.addr)
		io.WriteString(conn, "GET /slow HTTP/1.1\r\nHost: acme.example.test\r\n\r\n")
		select {
		case <-started:
		case <-time.After(10 * time.Second):
			t.Fatal("the request never reached the endpoint")
		}
		conn.Close()
		if code, _, body := do(t, client(t), "GET", h.addr, "acme.example.test", "/", nil, nil); code != 200 || body != "a" {
			t.Fatalf("next client: %d %q", code, body)
		}
		// The abandoned request is logged once it is settled.
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(log.String(), `"path":"/slow"`) {
			if time.Now().After(deadline) {
				t.Fatalf("the abandoned request was never logged: %s", log.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
		if n := metricValue(t, reg, "edge_upstream_errors_total", nil); n != 0 {
			t.Fatalf("%v upstream errors counted for a client that left", n)
		}
		if engine == EngineLoop && !bytes.Contains([]byte(log.String()), []byte(`"status":499`)) {
			t.Fatalf("the loop logs a request whose client left as 499: %s", log.String())
		}
	})
}

// HTTP/1.0 clients are served, with or without keep-alive.
func TestHTTP10Client(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		a := newBackend(t, "a", nil)
		h := newHarnessOn(t, engine, &Proxy{}, onePod(a))
		conn := rawConn(t, h.addr)
		io.WriteString(conn, "GET / HTTP/1.0\r\nHost: acme.example.test\r\n\r\n")
		resp := readResponse(t, conn, "GET")
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(body) != "a" {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
	})
}

// An HTTP/1.0 client cannot read chunked framing (RFC 9112, section 6.1):
// a body of unknown length goes to it as it comes, with neither
// Content-Length nor Transfer-Encoding, ended by the connection's close.
func TestHTTP10ClientGetsNoChunkedBody(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		a := newBackend(t, "a", func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, "part one, ")
			w.(http.Flusher).Flush() // no length: chunked
			_, _ = io.WriteString(w, strings.Repeat("x", 200<<10))
		})
		h := newHarnessOn(t, engine, &Proxy{}, onePod(a))
		conn := rawConn(t, h.addr)
		io.WriteString(conn, "GET / HTTP/1.0\r\nHost: acme.example.test\r\n\r\n")
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		raw, err := io.ReadAll(conn)
		if err != nil {
			t.Fatalf("reading until the close: %v", err)
		}
		head, body, ok := strings.Cut(string(raw), "\r\n\r\n")
		if !ok || !strings.HasPrefix(head, "HTTP/1.1 200 ") {
			t.Fatalf("response %.200q", raw)
		}
		lower := strings.ToLower(head)
		if strings.Contains(lower, "transfer-encoding") || strings.Contains(lower, "content-length") ||
			!strings.Contains(lower, "connection: close") {
			t.Fatalf("head %q: want neither Transfer-Encoding nor Content-Length, and Connection: close", head)
		}
		if want := "part one, " + strings.Repeat("x", 200<<10); body != want {
			t.Fatalf("body of %d bytes, want the %d the app server sent, unframed", len(body), len(want))
		}
	})
}

// Bodies short enough to be read whole (their length declared) but large
// enough to be written straight from the endpoint's buffer, after their
// head, arrive intact and in order. (evloop's TestWriteThroughKeepsWhatThe-
// SocketRefuses checks what happens when the socket takes only part.)
func TestLargeBufferedResponsesInOrder(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		const n = 16
		body := func(path string) string {
			return strings.Repeat(path+" 0123456789abcdef", 100<<10/len(path+" 0123456789abcdef"))
		}
		a := newBackend(t, "a", func(w http.ResponseWriter, r *http.Request) {
			b := body(r.URL.Path)
			w.Header().Set("Content-Length", strconv.Itoa(len(b)))
			_, _ = io.WriteString(w, b)
		})
		h := newHarnessOn(t, engine, &Proxy{}, onePod(a))
		conn := rawConn(t, h.addr)
		var reqs strings.Builder
		for i := range n {
			fmt.Fprintf(&reqs, "GET /%d HTTP/1.1\r\nHost: acme.example.test\r\n\r\n", i)
		}
		if _, err := io.WriteString(conn, reqs.String()); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(conn)
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		for i := range n {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("response %d: %v", i, err)
			}
			got, err := io.ReadAll(resp.Body)
			want := body(fmt.Sprintf("/%d", i))
			if err != nil || resp.StatusCode != 200 || resp.ContentLength != int64(len(want)) || string(got) != want {
				t.Fatalf("response %d: %d, length %d, %d bytes (%v); want 200 and the %d bytes of /%d",
					i, resp.StatusCode, resp.ContentLength, len(got), err, len(want), i)
			}
		}
	})
}

// Interim responses (100 Continue, 103 Early Hints) are not passed on, and
// do not count against the room a buffered body has: here the two interim
// heads, the final head and the body are together more than
// max_header_bytes + buffer_bytes.
func TestInterimResponsesDropped(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		link := "Link: </" + strings.Repeat("a", 3000) + ".css>; rel=preload\r\n"
		body := strings.Repeat("b", 8<<10)
		addr := rawBackend(t, func(_ int, _ *bufio.Reader, c net.Conn) bool {
			_, _ = io.WriteString(c, "HTTP/1.1 100 Continue\r\n"+link+"\r\n"+
				"HTTP/1.1 103 Early Hints\r\n"+link+"\r\n"+
				"HTTP/1.1 200 OK\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n"+link+"\r\n"+body)
			return true
		})
		p := &Proxy{Limits: Limits{MaxHeaderBytes: 4096, BufferBytes: 8 << 10}}
		h := newHarnessOn(t, engine, p, withApps(onePod(), addr))
		conn := rawConn(t, h.addr)
		for i := range 2 {
			io.WriteString(conn, "GET / HTTP/1.1\r\nHost: acme.example.test\r\n\r\n")
			resp := readResponse(t, conn, "GET")
			got, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != 200 || string(got) != body {
				t.Fatalf("request %d: %d, %d bytes (%v); want 200 and the %d bytes after the interim responses",
					i, resp.StatusCode, len(got), err, len(body))
			}
		}
	})
}
