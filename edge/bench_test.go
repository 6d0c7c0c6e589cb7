package edge

import (
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/podedge/podedge/internal/h1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
)

// benchUpstream starts an in-memory app server that answers a small body,
// as a load test's would.
func benchUpstream(b *testing.B) *fasthttputil.InmemoryListener {
	up := fasthttputil.NewInmemoryListener()
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("text/plain")
		ctx.SetBodyString("hello, world\n")
	}}
	go func() { _ = srv.Serve(up) }()
	b.Cleanup(func() { _ = srv.Shutdown() })
	return up
}

// benchRequests runs serve on copies of a typical request (the usual
// headers, a cookie; mutate may change it), in parallel, and fails on
// anything but a 200.
func benchRequests(b *testing.B, mutate func(*fasthttp.Request), serve func(*fasthttp.RequestCtx) error) {
	var req fasthttp.Request
	req.Header.SetMethod("GET")
	req.SetRequestURI("/index.html?q=1")
	req.Header.SetHost("acme.example.test")
	req.Header.Set("User-Agent", "bench/1.0")
	req.Header.Set("Accept", "*/*")
	req.Header.Set("Cookie", "session=0123456789abcdef")
	if mutate != nil {
		mutate(&req)
	}
	client := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 9), Port: 40000}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var ctx fasthttp.RequestCtx
		ctx.Init(&req, client, nil)
		for pb.Next() {
			req.CopyTo(&ctx.Request)
			ctx.Response.Reset()
			if err := serve(&ctx); err != nil || ctx.Response.StatusCode() != 200 {
				b.Fatalf("status %d (%v): %s", ctx.Response.StatusCode(), err, ctx.Response.Body())
			}
		}
	})
}

// benchProxy runs the proxy handler, with metrics on, against the
// in-memory app server.
func benchProxy(b *testing.B, p *Proxy, mutate func(*fasthttp.Request)) {
	up := benchUpstream(b)
	p.Dial = func(string) (net.Conn, error) { return up.Dial() }
	p.Metrics = NewMetrics(prometheus.NewRegistry())
	p.Logger = slog.New(slog.DiscardHandler)
	publish(b, p, withApps(onePod(), "10.0.0.1:8080", "10.0.0.2:8080"))
	benchRequests(b, mutate, func(ctx *fasthttp.RequestCtx) error {
		p.ServeHTTP(ctx)
		return nil
	})
}

// BenchmarkBareForward is the floor the proxy benchmarks compare with: the
// same request to the same in-memory upstream through a bare
// fasthttp.HostClient, as bench/forwarder does it (no routing, health,
// retries, header rewriting, metrics or logs).
func BenchmarkBareForward(b *testing.B) {
	up := benchUpstream(b)
	hc := &fasthttp.HostClient{Addr: "10.0.0.1:8080", Dial: func(string) (net.Conn, error) { return up.Dial() },
		MaxConns: 1024, NoDefaultUserAgentHeader: true, DisablePathNormalizing: true}
	benchRequests(b, nil, func(ctx *fasthttp.RequestCtx) error {
		return hc.Do(&ctx.Request, &ctx.Response)
	})
}

// BenchmarkProxy is the request path with metrics and without an access
// log: it must not allocate.
func BenchmarkProxy(b *testing.B) {
	benchProxy(b, &Proxy{}, nil)
}

// generousLimits rate-limits and caps every tenant, never refusing: the
// admission's cost, on a request that passes.
func generousLimits() TenantLimits {
	return TenantLimits{RPS: 1e9, Burst: 1 << 30, Concurrency: 1 << 30, QueueTimeout: 50 * time.Millisecond}
}

// BenchmarkProxyTenantLimits adds the tenant's rate and concurrency
// limits: they must not allocate either.
func BenchmarkProxyTenantLimits(b *testing.B) {
	benchProxy(b, &Proxy{TenantLimits: generousLimits()}, nil)
}

// BenchmarkProxyAccessLog adds the JSON access log (to io.Discard).
func BenchmarkProxyAccessLog(b *testing.B) {
	benchProxy(b, &Proxy{AccessLog: NewAccessLogHandler(io.Discard)}, nil)
}

// BenchmarkProxyHopHeaders is a request carrying every kind of header the
// edge rewrites.
func BenchmarkProxyHopHeaders(b *testing.B) {
	benchProxy(b, &Proxy{}, func(r *fasthttp.Request) {
		r.Header.Set("Connection", "keep-alive, X-Hop")
		r.Header.Set("X-Hop", "1")
		r.Header.Set("Keep-Alive", "timeout=5")
		r.Header.Set("X-Forwarded-For", "203.0.113.1")
		r.Header.Set("X-Request-Id", "req-abc")
	})
}

func BenchmarkScanKeys(b *testing.B) {
	keys := [][]byte{[]byte("Host"), []byte("User-Agent"), []byte("Accept"), []byte("Accept-Encoding"), []byte("Cookie"), []byte("X-Forwarded-For"), []byte("Connection")}
	b.ReportAllocs()
	for b.Loop() {
		if scanKeys(keys) == 0 {
			b.Fatal("nothing found")
		}
	}
}

// BenchmarkAccessLogLine is one access log line of a typical request,
// through the buffered writer the edge puts in front of standard output.
func BenchmarkAccessLogLine(b *testing.B) {
	w := newBufferedWriter(io.Discard, 64<<10, time.Hour)
	defer w.Close()
	a := &accessLogger{h: NewAccessLogHandler(w)}
	x := &exchange{
		start: time.Now(), elapsed: 1234 * time.Microsecond, status: 200, bytes: 64,
		host: []byte("acme.example.test"), method: []byte("GET"), uri: []byte("/index.html?q=1"),
		clientIP: []byte("192.0.2.9"), reqID: []byte("0123456789abcdef0123456789abcdef"),
		upstreamAddr: "10.0.0.1:8080", pod: &podStats{name: "pod-1"},
	}
	b.ReportAllocs()
	for b.Loop() {
		a.log(x, x.start.Add(x.elapsed))
	}
}

// BenchmarkRequestWork is the edge's own work on a request, without any I/O:
// the steps both data paths share (begin, route and the request's headers,
// the attempt's accounting, the response's headers, metrics and the access
// log), on a parsed request and a parsed response, as the event loops run
// them.
func BenchmarkRequestWork(b *testing.B) {
	p := &Proxy{AccessLog: NewAccessLogHandler(io.Discard), Metrics: NewMetrics(prometheus.NewRegistry()),
		Logger: slog.New(slog.DiscardHandler)}
	publish(b, p, withApps(onePod(), "10.0.0.1:8080", "10.0.0.2:8080"))
	reqHead := []byte("GET /index.html?q=1 HTTP/1.1\r\nHost: acme.example.test\r\nUser-Agent: bench/1.0\r\n" +
		"Accept: */*\r\nCookie: session=0123456789abcdef\r\n\r\n")
	respHead := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\nDate: Thu, 26 Nov 2026 23:30:00 GMT\r\n\r\n")
	addrs := &connAddrs{local: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 80}, remote: &net.TCPAddr{IP: net.IPv4(192, 0, 2, 9), Port: 40000}}
	var ctx fasthttp.RequestCtx
	var out []byte
	parser := h1.NewParser(4096)
	b.ReportAllocs()
	for b.Loop() {
		ctx.Request.Reset()
		ctx.Response.Reset()
		ctx.Init2(addrs, nil, false)
		if err := parser.Parse(&ctx.Request.Header, reqHead); err != nil {
			b.Fatal(err)
		}
		x, v := p.begin(&ctx)
		pool, err := p.route(&ctx, x, v, requestKeys(&ctx.Request.Header))
		if err != nil {
			b.Fatal(err)
		}
		p.cur().budget.request(time.Now())
		if _, err := x.startAttempt(pool.Pick(0)); err != nil {
			b.Fatal(err)
		}
		out = ctx.Request.Header.AppendBytes(out[:0])
		if err := parser.Parse(&ctx.Response.Header, respHead); err != nil {
			b.Fatal(err)
		}
		x.respKeys, x.respKeysRead = headKeys(respHead), true
		ctx.Response.SetBodyRaw(respHead[:13])
		x.upStatus = 200
		x.endAttempt(nil)
		if p.end(&ctx, x, nil) {
			b.Fatal("failed")
		}
		out = ctx.Response.Header.AppendBytes(out[:0])
	}
}
