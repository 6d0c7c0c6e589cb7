package edge

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podedge/podedge/internal/consultest"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http2"
)

// h2Do sends a request through c to the harness's TLS listener for host
// and returns the response with its body read.
func h2Do(t testing.TB, c *http.Client, method, addr, host, path string, body io.Reader, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	return send(t, c, method, "https://"+addr+path, host, body, hdr)
}

// Requests on one HTTP/2 connection go where their :authority says, through
// the proxy's routing, headers and retries; HTTP/1.1 over TLS is served by
// the same listener.
func TestHTTP2RoutesByAuthority(t *testing.T) {
	a := newBackend(t, "a", nil)
	b := newBackend(t, "b", nil)
	dead := newBackend(t, "dead", nil)
	dead.kill()
	reg := prometheus.NewRegistry()
	h := newTLSHarness(t, &Proxy{Metrics: NewMetrics(reg)}, twoPods([]*backend{a, dead}, []*backend{b}), defaultHTTP2())
	c := h.h2Client(t)
	for _, tc := range []struct{ host, want string }{
		{"acme.example.test", "a"}, {"beta.example.test", "b"}, {"ACME.example.test", "a"}, {"acme.com", "a"},
	} {
		for range 4 { // the dead endpoint's turn comes: retried on a
			resp, body := h2Do(t, c, "GET", h.addr, tc.host, "/p?q=1", nil, nil)
			if resp.ProtoMajor != 2 || resp.StatusCode != 200 || body != tc.want {
				t.Fatalf("%s: %s %d %q, want HTTP/2 200 %q", tc.host, resp.Proto, resp.StatusCode, body, tc.want)
			}
			if resp.Header.Get("X-Request-Id") == "" {
				t.Fatalf("%s: no X-Request-Id", tc.host)
			}
		}
	}
	got := a.lastRequest()
	if got.Host != "acme.com" || got.URI != "/p?q=1" || got.Header.Get("X-Forwarded-Proto") != "https" ||
		got.Header.Get("X-Forwarded-Host") != "acme.com" || !strings.HasPrefix(got.Header.Get("X-Forwarded-For"), "127.0.0.1") {
		t.Fatalf("the app got %+v", got)
	}
	if resp, body := h2Do(t, c, "GET", h.addr, "nobody.example.test", "/", nil, nil); resp.StatusCode != 404 || body != "unknown host\n" {
		t.Fatalf("unknown host: %d %q", resp.StatusCode, body)
	}
	if n := metricValue(t, reg, "edge_upstream_retries_total", nil); n == 0 {
		t.Fatal("no retry counted, though an endpoint is dead")
	}
	if n := metricValue(t, reg, "edge_http2_streams_total", map[string]string{"result": "complete"}); n != 17 {
		t.Fatalf("%v complete streams counted, want 17", n)
	}
	if n := metricValue(t, reg, "edge_requests_total", nil); n != 17 {
		t.Fatalf("%v requests counted, want 17", n)
	}

	h1 := h.h1Client(t)
	resp, body := h2Do(t, h1, "GET", h.addr, "beta.example.test", "/", nil, nil)
	if resp.ProtoMajor != 1 || resp.StatusCode != 200 || body != "b" {
		t.Fatalf("HTTP/1.1 over TLS: %s %d %q", resp.Proto, resp.StatusCode, body)
	}
}

// Request bodies stream to the app, with a length and without; response
// bodies stream back, long ones in pieces, each piece sent as it comes.
func TestHTTP2Bodies(t *testing.T) {
	next := make(chan struct{})
	a := newBackend(t, "a", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/events":
			_, _ = io.WriteString(w, "one\n")
			w.(http.Flusher).Flush()
			select {
			case <-next:
			case <-time.After(20 * time.Second):
			}
			_, _ = io.WriteString(w, "two\n")
		case "/big":
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", fmt.Sprint(4<<20))
			if r.Method != http.MethodHead {
				_, _ = w.Write(bytes.Repeat([]byte("0123456789abcdef"), 1<<18))
			}
		case "/echo":
			w.Header().Set("X-Len", fmt.Sprint(r.ContentLength))
			w.Header().Set("X-Te", strings.Join(r.TransferEncoding, ","))
			b, _ := io.ReadAll(r.Body)
			w.Header().Set("X-Read", fmt.Sprint(len(b)))
			_, _ = w.Write(b)
		}
	})
	h := newTLSHarness(t, &Proxy{}, onePod(a), defaultHTTP2())
	c := h.h2Client(t)

	t.Run("upload", func(t *testing.T) {
		payload := make([]byte, 8<<20)
		_, _ = rand.Read(payload)
		sum := sha256.Sum256(payload)
		want := hex.EncodeToString(sum[:])
		// Declared length.
		resp, _ := h2Do(t, c, "POST", h.addr, "acme.example.test", "/up", bytes.NewReader(payload), nil)
		if got := a.lastRequest(); resp.StatusCode != 200 || got.BodySHA != want || got.Header.Get("Content-Length") == "" {
			t.Fatalf("8 MiB with a length: %d, the app got %d bytes (%s)", resp.StatusCode, got.BodyLen, got.Header)
		}
		// No length: the stream's end ends it; chunked to the app.
		pr, pw := io.Pipe()
		go func() {
			for i := 0; i < len(payload); i += 1 << 20 {
				_, _ = pw.Write(payload[i : i+1<<20])
			}
			pw.Close()
		}()
		resp, _ = h2Do(t, c, "POST", h.addr, "acme.example.test", "/up", pr, nil)
		if got := a.lastRequest(); resp.StatusCode != 200 || got.BodySHA != want {
			t.Fatalf("8 MiB without a length: %d, the app got %d bytes", resp.StatusCode, got.BodyLen)
		}
	})
	t.Run("echo", func(t *testing.T) {
		for _, n := range []int{1, 100, 511, 512, 513, 4096, prefetched - 1, prefetched, prefetched + 1, 300 << 10} {
			in := strings.Repeat("x", n)
			resp, body := h2Do(t, c, "PATCH", h.addr, "acme.example.test", "/echo", strings.NewReader(in), nil)
			if resp.StatusCode != 200 || body != in || resp.Header.Get("X-Read") != fmt.Sprint(n) || resp.Header.Get("X-Len") != fmt.Sprint(n) || resp.Header.Get("X-Te") != "" {
				t.Fatalf("%d bytes: %d, %d back, app read %s of length %s, te %q", n, resp.StatusCode, len(body), resp.Header.Get("X-Read"), resp.Header.Get("X-Len"), resp.Header.Get("X-Te"))
			}
		}
	})
	t.Run("download", func(t *testing.T) {
		resp, body := h2Do(t, c, "GET", h.addr, "acme.example.test", "/big", nil, nil)
		want := strings.Repeat("0123456789abcdef", 1<<18)
		if resp.StatusCode != 200 || body != want || resp.ContentLength != int64(len(want)) || resp.Header.Get("Content-Type") != "application/octet-stream" {
			t.Fatalf("4 MiB: %d, %d bytes, length %d, type %q", resp.StatusCode, len(body), resp.ContentLength, resp.Header.Get("Content-Type"))
		}
		resp, body = h2Do(t, c, "HEAD", h.addr, "acme.example.test", "/big", nil, nil)
		if resp.StatusCode != 200 || body != "" || resp.ContentLength != int64(len(want)) {
			t.Fatalf("HEAD: %d, %d bytes, length %d", resp.StatusCode, len(body), resp.ContentLength)
		}
	})
	t.Run("events", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "https://"+h.addr+"/events", nil)
		req.Host = "acme.example.test"
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		buf := make([]byte, 4)
		if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "one\n" {
			t.Fatalf("first event: %q %v", buf, err)
		}
		close(next) // the app sends the second only once the first arrived
		rest, err := io.ReadAll(resp.Body)
		if err != nil || string(rest) != "two\n" {
			t.Fatalf("second event: %q %v", rest, err)
		}
	})
}

// Header fields up to the limit reach the app; a request over it gets 431
// and the connection serves on.
func TestHTTP2LargeHeaders(t *testing.T) {
	a := newBackend(t, "a", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Got", fmt.Sprint(len(r.Header.Get("X-Big"))))
		w.Header().Set("X-Big-Back", strings.Repeat("r", 8<<10))
	})
	h := newTLSHarness(t, &Proxy{}, onePod(a), defaultHTTP2())
	c := h.h2Client(t)
	resp, _ := h2Do(t, c, "GET", h.addr, "acme.example.test", "/", nil, map[string]string{"X-Big": strings.Repeat("v", 12<<10)})
	if resp.StatusCode != 200 || resp.Header.Get("X-Got") != fmt.Sprint(12<<10) || len(resp.Header.Get("X-Big-Back")) != 8<<10 {
		t.Fatalf("12 KiB field: %d, app got %s, %d back", resp.StatusCode, resp.Header.Get("X-Got"), len(resp.Header.Get("X-Big-Back")))
	}
	// Go's client will not send more than the edge advertises: by hand.
	raw := dialRawH2(t, h.addr, h.pool)
	// (x/net ends the connection with COMPRESSION_ERROR for one field
	// longer than the whole limit.)
	if err := raw.get(1, raw.block("acme.example.test", "/", "x-big", strings.Repeat("v", 10<<10), "x-big2", strings.Repeat("w", 10<<10))); err != nil {
		t.Fatal(err)
	}
	if st := raw.status(1); st != "431" {
		t.Fatalf("20 KiB of fields: %s, want 431", st)
	}
	if err := raw.get(3, raw.block("acme.example.test", "/")); err != nil {
		t.Fatal(err)
	}
	if st := raw.status(3); st != "200" {
		t.Fatalf("after the 431, on the same connection: %s", st)
	}
}

// 200 requests in flight at once on one connection, all at the app
// together.
func TestHTTP2ConcurrentStreamsOnOneConnection(t *testing.T) {
	const n = 200
	var inApp atomic.Int32
	all := make(chan struct{})
	var once sync.Once
	a := newBackend(t, "a", func(w http.ResponseWriter, r *http.Request) {
		if inApp.Add(1) == n {
			once.Do(func() { close(all) })
		}
		select {
		case <-all:
		case <-time.After(20 * time.Second):
		}
		_, _ = io.WriteString(w, r.URL.Path)
	})
	reg := prometheus.NewRegistry()
	h := newTLSHarness(t, &Proxy{Metrics: NewMetrics(reg)}, onePod(a), defaultHTTP2())
	c := h.h2Client(t)
	// Until the edge's SETTINGS arrive, the client assumes 100 streams per
	// connection and would open a second one.
	if resp, _ := h2Do(t, c, "GET", h.addr, "nobody.example.test", "/", nil, nil); resp.StatusCode != 404 {
		t.Fatal(resp.Status)
	}
	getAtOnce(t, c, h.addr, n, func(path string, resp *http.Response, b []byte, err error) error {
		if err != nil || resp.StatusCode != 200 || string(b) != path {
			return fmt.Errorf("%s: %d %q %v", path, resp.StatusCode, b, err)
		}
		return nil
	})
	select {
	case <-all:
	default:
		t.Fatalf("only %d requests were at the app at once", inApp.Load())
	}
	if v := metricValue(t, reg, "edge_http2_connections", nil); v != 1 {
		t.Fatalf("%v HTTP/2 connections open, want 1", v)
	}
}

// An edge with TLS and a real Consul: h2 offered first by ALPN, requests
// routed from Consul's view, logged and counted; HTTP/1.1 clients and
// acme-tls/1 still negotiated.
func TestIntegrationHTTP2(t *testing.T) {
	agent := consultest.Start(t)
	seedPods(t, agent, map[string]string{"acme": "pod-1"})
	a := newBackend(t, "a", nil)
	registerApp(t, agent, "app-a", "pod-1", a)
	cert, pool := testCert(t)
	var log lockedBuffer
	e := startEdgeWith(t, agent, "pod-1", "127.0.0.1", func(c *Config) {
		c.HTTPS = "127.0.0.1:0"
		c.AccessLog.Enabled, c.AccessLog.BufferBytes = true, 0
	}, Options{TLSConfig: testTLSConfig(cert), AccessLog: &log})
	waitApps(t, e, "pod-1", a)
	addr := e.HTTPSAddr().String()

	for _, tc := range []struct {
		offer []string
		want  string
	}{{[]string{"h2", "http/1.1"}, "h2"}, {[]string{"http/1.1", "h2"}, "h2"}, {[]string{"http/1.1"}, "http/1.1"}, {[]string{"acme-tls/1"}, "acme-tls/1"}} {
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "acme.example.test", NextProtos: tc.offer})
		if err != nil {
			t.Fatalf("offering %v: %v", tc.offer, err)
		}
		if got := conn.ConnectionState().NegotiatedProtocol; got != tc.want {
			t.Fatalf("offering %v: %q negotiated, want %q", tc.offer, got, tc.want)
		}
		conn.Close()
	}

	h := &tlsHarness{addr: addr, pool: pool}
	resp, body := h2Do(t, h.h2Client(t), "POST", addr, "acme.example.test", "/h2", strings.NewReader("hello"), nil)
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 || body != "a" || a.lastRequest().Header.Get("X-Forwarded-Proto") != "https" {
		t.Fatalf("h2: %s %d %q, app saw %+v", resp.Proto, resp.StatusCode, body, a.lastRequest())
	}
	resp, body = h2Do(t, h.h1Client(t), "GET", addr, "acme.example.test", "/h1", nil, nil)
	if resp.ProtoMajor != 1 || resp.StatusCode != 200 || body != "a" {
		t.Fatalf("http/1.1: %s %d %q", resp.Proto, resp.StatusCode, body)
	}
	consultest.WaitFor(t, 10*time.Second, "both requests logged", func() bool {
		s := log.String()
		return strings.Contains(s, `"path":"/h2"`) && strings.Contains(s, `"path":"/h1"`)
	})
	reg := e.Proxy().Metrics.Registry
	if n := metricValue(t, reg, "edge_http2_streams_total", map[string]string{"result": "complete"}); n != 1 {
		t.Fatalf("%v HTTP/2 streams counted, want 1", n)
	}
	if n := metricValue(t, reg, "edge_requests_total", map[string]string{"pod": "pod-1", "code": "2xx"}); n != 2 {
		t.Fatalf("%v requests counted, want 2", n)
	}
}

// A client that opens streams and resets them at once, faster than their
// requests finish (CVE-2023-44487), loses its connection with
// ENHANCE_YOUR_CALM; the requests already at the app finish, and no
// goroutine is left behind.
func TestHTTP2RapidResetClosesTheConnection(t *testing.T) {
	release := make(chan struct{})
	var atApp atomic.Int32
	a := newBackend(t, "a", func(w http.ResponseWriter, r *http.Request) {
		atApp.Add(1)
		select {
		case <-release:
		case <-time.After(20 * time.Second):
		}
	})
	reg := prometheus.NewRegistry()
	cfg := defaultHTTP2()
	cfg.MaxConcurrentStreams = 50
	h := newTLSHarness(t, &Proxy{Metrics: NewMetrics(reg)}, onePod(a), cfg)
	// Warm the harness up, so that its own goroutines are in the baseline.
	if resp, _ := h2Do(t, h.h2Client(t), "GET", h.addr, "nobody.example.test", "/", nil, nil); resp.StatusCode != 404 {
		t.Fatal(resp.Status)
	}
	before := runtime.NumGoroutine()

	raw := dialRawH2(t, h.addr, h.pool)
	blk := raw.block("acme.example.test", "/slow")
	written := make(chan int, 1)
	go func() {
		n := 0
		for id := uint32(1); id < 20000; id += 2 {
			if raw.get(id, blk) != nil || raw.fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
				break
			}
			n++
		}
		written <- n
	}()
	code, err := raw.closed(20 * time.Second)
	if err != nil {
		t.Fatalf("the connection is still open: %v", err)
	}
	if code != http2.ErrCodeEnhanceYourCalm {
		t.Fatalf("GOAWAY %v, want ENHANCE_YOUR_CALM", code)
	}
	_ = raw.conn.NetConn().Close()
	n := <-written
	if got := int(atApp.Load()); got > cfg.MaxConcurrentStreams {
		t.Fatalf("%d requests reached the app from %d reset streams; at most %d may run", got, n, cfg.MaxConcurrentStreams)
	}
	if v := metricValue(t, reg, "edge_http2_errors_total", map[string]string{"type": "conn_ENHANCE_YOUR_CALM_too_many_early_resets"}); v != 1 {
		t.Fatalf("too_many_early_resets counted %v times, want 1", v)
	}
	close(release)
	// The app's kept-alive connections are its goroutines, not the edge's.
	a.srv.CloseClientConnections()
	waitGoroutines(t, before)
	if v := metricValue(t, reg, "edge_http2_connections", nil); v != 1 {
		t.Fatalf("%v HTTP/2 connections counted, want 1 (the warm-up's)", v)
	}
	if v := metricValue(t, reg, "edge_http2_streams_total", map[string]string{"result": "reset"}); v == 0 {
		t.Fatal("no reset stream counted")
	}
}

// A header block that never ends (CONTINUATION frames without end,
// CVE-2023-45288) is not read forever: the connection is closed.
func TestHTTP2ContinuationFloodClosesTheConnection(t *testing.T) {
	a := newBackend(t, "a", nil)
	h := newTLSHarness(t, &Proxy{}, onePod(a), defaultHTTP2())
	raw := dialRawH2(t, h.addr, h.pool)
	junk := raw.block("acme.example.test", "/", "x-junk", strings.Repeat("j", 15<<10))
	var sent atomic.Int64
	go func() {
		if raw.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: junk[:100], EndStream: true}) != nil {
			return
		}
		for sent.Load() < 1<<30 {
			if raw.fr.WriteContinuation(1, false, junk[100:]) != nil {
				return
			}
			sent.Add(int64(len(junk) - 100))
		}
	}()
	if _, err := raw.closed(20 * time.Second); err != nil {
		t.Fatalf("the connection is still open after %d bytes of CONTINUATION: %v", sent.Load(), err)
	}
	if n := sent.Load(); n > 64<<20 {
		t.Fatalf("%d bytes of CONTINUATION were read before the connection closed", n)
	}
	if resp, body := h2Do(t, (&tlsHarness{addr: h.addr, pool: h.pool}).h2Client(t), "GET", h.addr, "acme.example.test", "/", nil, nil); resp.StatusCode != 200 || body != "a" {
		t.Fatalf("the next client: %d %q", resp.StatusCode, body)
	}
}

// waitGoroutines waits for the process to be back to at most n goroutines
// (plus two of the runtime's), and lists them if it is not.
func waitGoroutines(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for runtime.NumGoroutine() > n+2 {
		if time.Now().After(deadline) {
			var b strings.Builder
			_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), n, b.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// At shutdown every connection gets a GOAWAY; a request in flight
// finishes on it, then the connection ends.
func TestHTTP2ShutdownSendsGoAway(t *testing.T) {
	release := make(chan struct{})
	atApp := make(chan struct{}, 1)
	a := newBackend(t, "a", func(w http.ResponseWriter, r *http.Request) {
		atApp <- struct{}{}
		<-release
		_, _ = io.WriteString(w, "late")
	})
	h := newTLSHarness(t, &Proxy{}, onePod(a), defaultHTTP2())
	raw := dialRawH2(t, h.addr, h.pool)
	if err := raw.get(1, raw.block("acme.example.test", "/slow")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-atApp:
	case <-time.After(10 * time.Second):
		t.Fatal("the request never reached the app")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h.h2.shutdown(ctx)
	_ = raw.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := raw.fr.ReadFrame()
		if err != nil {
			t.Fatalf("no GOAWAY: %v", err)
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			if g.ErrCode != http2.ErrCodeNo || g.LastStreamID < 1 {
				t.Fatalf("GOAWAY %v, last stream %d; want NO_ERROR, with stream 1 kept", g.ErrCode, g.LastStreamID)
			}
			break
		}
	}
	close(release)
	if st := raw.status(1); st != "200" {
		t.Fatalf("the request in flight: %s", st)
	}
	if _, err := raw.closed(10 * time.Second); err != nil {
		t.Fatalf("the connection stayed open after its last stream: %v", err)
	}
}
