package edge

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
	"golang.org/x/net/http2"
)

// benchH2Writer is x/net's ResponseWriter as the bridge uses it, keeping
// nothing: the bridge's own costs, without x/net's.
type benchH2Writer struct {
	h      http.Header
	status int
	n      int
}

func (w *benchH2Writer) Header() http.Header              { return w.h }
func (w *benchH2Writer) WriteHeader(code int)             { w.status = code }
func (w *benchH2Writer) Write(p []byte) (int, error)      { w.n += len(p); return len(p), nil }
func (w *benchH2Writer) FlushError() error                { return nil }
func (w *benchH2Writer) SetReadDeadline(time.Time) error  { return nil }
func (w *benchH2Writer) SetWriteDeadline(time.Time) error { return nil }

// benchAddrConn is a client connection that has only its addresses.
type benchAddrConn struct {
	net.Conn
	local, remote net.Addr
}

func (c *benchAddrConn) LocalAddr() net.Addr  { return c.local }
func (c *benchAddrConn) RemoteAddr() net.Addr { return c.remote }

// benchH2Upstream is an in-memory app server answering as bench/backend
// does: a 64-byte body, the request's ID echoed, the app's name.
func benchH2Upstream(b *testing.B) *fasthttputil.InmemoryListener {
	up := fasthttputil.NewInmemoryListener()
	body := make([]byte, 64)
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		if id := ctx.Request.Header.Peek("X-Request-Id"); len(id) > 0 {
			ctx.Response.Header.SetBytesV("X-Request-Id", id)
		}
		ctx.Response.Header.Set("X-App-Server", "app-1")
		ctx.SetContentType("application/octet-stream")
		ctx.SetBody(body)
	}}
	go func() { _ = srv.Serve(up) }()
	b.Cleanup(func() { _ = srv.Shutdown() })
	return up
}

// benchH2Proxy is a proxy with metrics on, no access log, its one pod's
// app servers in memory.
func benchH2Proxy(b *testing.B) *Proxy {
	up := benchH2Upstream(b)
	p := &Proxy{Dial: func(string) (net.Conn, error) { return up.Dial() },
		Metrics: NewMetrics(prometheus.NewRegistry()), Logger: slog.New(slog.DiscardHandler)}
	publish(b, p, withApps(onePod(), "10.0.0.1:8080", "10.0.0.2:8080"))
	return p
}

// BenchmarkH2Bridge is one HTTP/2 stream through the bridge, as x/net hands
// it over (an http.Request, a ResponseWriter), to the in-memory app server
// and back, without x/net: the edge's own work on a stream. It must not
// allocate.
func BenchmarkH2Bridge(b *testing.B) {
	p := benchH2Proxy(b)
	s, err := newH2Server(defaultHTTP2(), p, p.ServeHTTP, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	conn := &benchAddrConn{local: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 443}, remote: &net.TCPAddr{IP: net.IPv4(192, 0, 2, 9), Port: 40000}}
	hc := &h2Conn{s: s, c: conn}
	cs := &tls.ConnectionState{Version: tls.VersionTLS13, NegotiatedProtocol: "h2"}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		// As h2load sends it.
		r := (&http.Request{Method: "GET", RequestURI: "/bytes/64", Host: "acme.example.test", Proto: "HTTP/2.0", ProtoMajor: 2,
			Header: http.Header{"User-Agent": {"h2load nghttp2/1.52.0"}, "Accept": {"*/*"}, "Accept-Encoding": {"gzip, deflate"}},
			Body:   http.NoBody, TLS: cs}).WithContext(context.Background())
		w := &benchH2Writer{h: http.Header{}}
		for pb.Next() {
			clear(w.h)
			w.status, w.n = 0, 0
			hc.ServeHTTP(w, r)
			if w.status != 200 || w.n != 64 {
				b.Fatalf("status %d, %d bytes", w.status, w.n)
			}
		}
	})
}

// BenchmarkH2Conn is the same stream through x/net's server and Go's
// HTTP/2 client over TLS on an in-memory connection: the bridge, x/net
// and TLS together, many streams at once on one connection. Allocations
// include x/net's, both sides'.
func BenchmarkH2Conn(b *testing.B) {
	p := benchH2Proxy(b)
	s, err := newH2Server(defaultHTTP2(), p, p.ServeHTTP, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	cert, pool := testCert(b)
	srvTLS := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}}
	ln := fasthttputil.NewInmemoryListener()
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				tc := tls.Server(c, srvTLS)
				if tc.Handshake() == nil {
					_ = s.serveConn(tc)
				}
				_ = tc.Close()
			}()
		}
	}()
	cliTLS := &tls.Config{RootCAs: pool, ServerName: "acme.example.test", NextProtos: []string{"h2"}}
	tr := &http2.Transport{DisableCompression: true,
		DialTLSContext: func(ctx context.Context, _, _ string, _ *tls.Config) (net.Conn, error) {
			c, err := ln.Dial()
			if err != nil {
				return nil, err
			}
			tc := tls.Client(c, cliTLS)
			if err := tc.HandshakeContext(ctx); err != nil {
				c.Close()
				return nil, err
			}
			return tc, nil
		}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	b.ReportAllocs()
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		req, _ := http.NewRequest("GET", "https://acme.example.test/bytes/64", nil)
		for pb.Next() {
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			n, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || n != 64 {
				b.Fatalf("status %d, %d bytes", resp.StatusCode, n)
			}
		}
	})
}
