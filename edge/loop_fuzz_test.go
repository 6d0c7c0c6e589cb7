//go:build linux

package edge

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// FuzzLoop feeds raw bytes to the event loops over loopback, wired to an
// app server on loopback and to an edge of another pod that refuses
// connections: whatever arrives, nothing panics, the connection is not
// held, and everything written back parses as HTTP responses (those of the
// connections the loops hand to fasthttp's server included).
func FuzzLoop(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	app := &fasthttp.Server{Handler: fuzzApp}
	go func() { _ = app.Serve(appLn) }()
	f.Cleanup(func() { _ = app.Shutdown() })
	refused, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	refusedAddr := refused.Addr().String()
	refused.Close()

	short := 20 * time.Millisecond
	p := &Proxy{
		Pod:      "pod-1",
		Logger:   slog.New(slog.DiscardHandler),
		Timeouts: Timeouts{ClientHeader: short, ClientBody: short, ClientIdle: short, WebSocketIdle: short, ResponseHeader: time.Second},
		Limits:   Limits{MaxBodyBytes: 1 << 20},
	}
	publish(f, p, fuzzState(appLn.Addr().String(), refusedAddr))

	loops, err := listenLoops("127.0.0.1:0", p, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		f.Fatal(err)
	}
	loops.run()
	srv := p.newServer(p.ServeHTTP, slog.New(slog.DiscardHandler))
	go func() { _ = srv.Serve(loops.Handoff()) }()
	f.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = loops.shutdown(ctx)
		_ = srv.ShutdownWithContext(ctx)
	})
	addr := loops.Addr().String()

	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go func() { _, _ = c.Write(in) }()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		out, err := io.ReadAll(c)
		if isTimeout(err) {
			t.Fatalf("the edge held the connection for 5s after the input %q", in)
		}
		// A reset after the answers is the close of a connection with
		// unread input; what was written before it counts.
		if err != nil && !isReset(err) {
			t.Fatalf("reading: %v", err)
		}
		checkResponses(t, in, out)
	})
}
