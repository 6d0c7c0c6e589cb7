//go:build linux

package edge

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

// benchLoop runs requests through the event loops over loopback, from
// clients that each keep one connection, to a fasthttp app server on
// loopback. Allocations are the whole process's per request: the loops',
// the app server's and the clients' (which allocate nothing).
func benchLoop(b *testing.B, p *Proxy) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	app := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("text/plain")
		ctx.SetBodyString("hello, world\n")
	}}
	go func() { _ = app.Serve(ln) }()
	b.Cleanup(func() { _ = app.Shutdown() })

	p.Metrics = NewMetrics(prometheus.NewRegistry())
	p.Logger = slog.New(slog.DiscardHandler)
	publish(b, p, withApps(onePod(), ln.Addr().String()))
	loops, err := listenLoops("127.0.0.1:0", p, nil, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		b.Fatal(err)
	}
	loops.run()
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = loops.shutdown(ctx)
	})
	req := []byte("GET /index.html?q=1 HTTP/1.1\r\nHost: acme.example.test\r\nUser-Agent: bench/1.0\r\n" +
		"Accept: */*\r\nCookie: session=0123456789abcdef\r\n\r\n")
	addr := loops.Addr().String()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer conn.Close()
		buf := make([]byte, 0, 4096)
		for pb.Next() {
			if _, err := conn.Write(req); err != nil {
				b.Error(err)
				return
			}
			if buf, err = readOneResponse(conn, buf[:0]); err != nil {
				b.Error(err)
				return
			}
			if !bytes.HasPrefix(buf, []byte("HTTP/1.1 200 ")) {
				b.Errorf("response %q", buf)
				return
			}
		}
	})
}

// readOneResponse reads a response framed by Content-Length into buf.
func readOneResponse(conn net.Conn, buf []byte) ([]byte, error) {
	for {
		if end := bytes.Index(buf, []byte("\r\n\r\n")); end >= 0 {
			head := buf[:end]
			i := bytes.Index(head, []byte("Content-Length: "))
			if i < 0 {
				return buf, io.ErrUnexpectedEOF
			}
			v := head[i+len("Content-Length: "):]
			if j := bytes.IndexByte(v, '\r'); j >= 0 {
				v = v[:j]
			}
			n, err := strconv.Atoi(string(v))
			if err != nil {
				return buf, err
			}
			if len(buf) >= end+4+n {
				return buf, nil
			}
		}
		if len(buf) == cap(buf) {
			return buf, io.ErrShortBuffer
		}
		n, err := conn.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			return buf, err
		}
	}
}

// BenchmarkLoop is the request path on the event loops, metrics on, no
// access log: it must not allocate.
func BenchmarkLoop(b *testing.B) { benchLoop(b, &Proxy{}) }

// BenchmarkLoopTenantLimits adds the tenant's rate and concurrency limits.
func BenchmarkLoopTenantLimits(b *testing.B) { benchLoop(b, &Proxy{TenantLimits: generousLimits()}) }

// BenchmarkLoopAccessLog adds the JSON access log (to io.Discard).
func BenchmarkLoopAccessLog(b *testing.B) {
	benchLoop(b, &Proxy{AccessLog: NewAccessLogHandler(io.Discard)})
}
