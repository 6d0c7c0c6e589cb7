package edge

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podedge/podedge/router"
	"github.com/prometheus/client_golang/prometheus"
)

// quiet is the logger of tests: warnings and errors only, on stderr, so that
// a failing test shows why.
func quiet() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

// received is what a backend saw of one request.
type received struct {
	Method, Host, URI string
	Header            http.Header
	BodyLen           int64
	BodySHA           string
	Remote            string
}

// backend is a real net/http server on loopback. By default it answers 200
// with its name, and it records the last request it received.
type backend struct {
	name    string
	srv     *httptest.Server
	hits    atomic.Int64
	mu      sync.Mutex
	last    received
	handler http.HandlerFunc
}

func newBackend(t testing.TB, name string, h http.HandlerFunc) *backend {
	t.Helper()
	b := &backend{name: name, handler: h}
	b.srv = httptest.NewServer(http.HandlerFunc(b.serve))
	t.Cleanup(b.srv.Close)
	return b
}

func (b *backend) serve(w http.ResponseWriter, r *http.Request) {
	b.hits.Add(1)
	rec := received{Method: r.Method, Host: r.Host, URI: r.RequestURI, Header: r.Header.Clone(), Remote: r.RemoteAddr}
	if b.handler == nil || r.Method == http.MethodPost || r.Method == http.MethodPut {
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		rec.BodyLen, rec.BodySHA = n, hex.EncodeToString(h.Sum(nil))
	}
	b.mu.Lock()
	b.last = rec
	b.mu.Unlock()
	if b.handler != nil {
		b.handler(w, r)
		return
	}
	w.Header().Set("X-Backend", b.name)
	if rec.BodySHA != "" && rec.BodyLen > 0 {
		w.Header().Set("X-Body-Sha256", rec.BodySHA)
	}
	_, _ = io.WriteString(w, b.name)
}

func (b *backend) lastRequest() received {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last
}

// addr is the backend's host:port.
func (b *backend) addr() string { return strings.TrimPrefix(b.srv.URL, "http://") }

// kill stops the backend the hard way: its listener closes and its open
// connections are cut, as when the process dies.
func (b *backend) kill() {
	b.srv.Listener.Close()
	b.srv.CloseClientConnections()
}

// harness serves a Proxy on loopback with a snapshot built in memory.
type harness struct {
	r    *router.Router
	p    *Proxy
	addr string
}

// newHarnessOn serves p with the state st on the given engine (a test
// runs on each with forEngines).
func newHarnessOn(t testing.TB, engine string, p *Proxy, st router.State) *harness {
	t.Helper()
	if p.Logger == nil {
		p.Logger = quiet()
	}
	var loops *loopServer
	if engine == EngineLoop {
		var err error
		if loops, err = listenLoops("127.0.0.1:0", p, nil, quiet(), nil); err != nil {
			t.Fatal(err)
		}
	}
	return serveLoops(t, p, loops, st)
}

// serveLoops serves p with the state st through loops (opened, not run) and
// the fasthttp server they hand connections to or, with loops nil, through
// fasthttp's server alone on a listener of its own.
func serveLoops(t testing.TB, p *Proxy, loops *loopServer, st router.State) *harness {
	t.Helper()
	if p.Logger == nil {
		p.Logger = quiet()
	}
	r := publish(t, p, st)
	srv := p.newServer(p.ServeHTTP, quiet())
	var ln net.Listener
	var err error
	if loops != nil {
		loops.run()
		ln = loops.Handoff()
	} else if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	} else {
		ln = trackListener{ln} // as the edge serves its listeners
	}
	done := make(chan struct{})
	go func() { _ = srv.Serve(ln); close(done) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if loops != nil {
			_ = loops.shutdown(ctx)
		}
		_ = srv.ShutdownWithContext(ctx)
		// A Shutdown that came before Serve had taken the listener does
		// not close it; closing it here ends such a late Serve.
		_ = ln.Close()
		<-done
	})
	return &harness{r: r, p: p, addr: ln.Addr().String()}
}

// publish gives p a router holding the state st, as an edge's router would.
func publish(t testing.TB, p *Proxy, st router.State) *router.Router {
	t.Helper()
	r, err := router.New(router.Config{Registry: p.Registry(), Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	r.Subscribe(p.SetSnapshot)
	r.Publish(st)
	return r
}

// loggerTo is a logger of warnings and errors, as text, to w.
func loggerTo(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// forEngines runs fn as a subtest on each plain-HTTP engine this platform
// has, for behaviour both must share.
func forEngines(t *testing.T, fn func(t *testing.T, engine string)) {
	for _, engine := range []string{EngineLoop, EngineFasthttp} {
		t.Run(engine, func(t *testing.T) {
			if engine == EngineLoop && defaultEngine != EngineLoop {
				t.Skip("the event loops need Linux")
			}
			fn(t, engine)
		})
	}
}

// onePod is a platform of one pod, pod-1, holding tenant acme (with the
// custom domain acme.com) served by the given backends.
func onePod(backends ...*backend) router.State {
	st := router.State{
		Pods:    []router.Pod{{Name: "pod-1", Capacity: 10}},
		Tenants: []router.Tenant{{Name: "acme", Pod: "pod-1", Domains: []string{"acme.com"}}},
	}
	for i, b := range backends {
		st.Apps = append(st.Apps, router.Endpoint{ID: "app-" + b.name, Node: "n", Pod: "pod-1", Addr: b.addr(), Weight: 1, Passing: true})
		_ = i
	}
	return st
}

// client is a keep-alive HTTP client; each test gets its own pool.
func client(t testing.TB) *http.Client {
	tr := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// do sends method to the edge at addr for host and returns status, headers
// and body.
func do(t testing.TB, c *http.Client, method, addr, host, path string, body io.Reader, hdr map[string]string) (int, http.Header, string) {
	t.Helper()
	resp, b := send(t, c, method, "http://"+addr+path, host, body, hdr)
	return resp.StatusCode, resp.Header, b
}

// send sends method to url with Host host and the headers hdr, and returns
// the response with its body read.
func send(t testing.TB, c *http.Client, method, url, host string, body io.Reader, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s %s: %v", method, host, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s %s: reading body: %v", method, host, url, err)
	}
	return resp, string(b)
}

// tryGet is do for concurrent loops: errors are returned, not fatal.
func tryGet(c *http.Client, addr, host, path string) (int, string, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return 0, "", err
	}
	req.Host = host
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// rawConn dials the edge for tests that write requests by hand.
func rawConn(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readResponse reads one response from conn, with its body.
func readResponse(t testing.TB, conn net.Conn, method string) *http.Response {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body = io.NopCloser(strings.NewReader(string(b)))
	return resp
}

// metricValue sums the samples of a counter or gauge whose labels include
// labels.
func metricValue(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}
