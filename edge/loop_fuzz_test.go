//go:build linux

package edge

import (
	"context"
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

	p := fuzzProxy()
	publish(f, p, fuzzState(appLn.Addr().String(), refusedAddr))

	loops, err := listenLoops("127.0.0.1:0", p, nil, slog.New(slog.DiscardHandler), nil)
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
		// What was written before a reset counts.
		checkResponses(t, in, fuzzAnswer(t, c, in, true))
	})
}
