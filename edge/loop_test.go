//go:build linux

package edge

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// A loop that runs out of descriptors stops accepting for a while instead
// of spinning on its readable listening socket, says so, and then serves the
// connections that waited in the backlog.
func TestLoopPausesAcceptingWhenOutOfDescriptors(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		if engine != EngineLoop {
			t.Skip("the event loops' own behaviour")
		}
		a := newBackend(t, "a", nil)
		var log lockedBuffer
		reg := prometheus.NewRegistry()
		p := &Proxy{Logger: loggerTo(&log), Metrics: NewMetrics(reg)}
		loops, err := listenLoops("127.0.0.1:0", p, nil, p.Logger, nil)
		if err != nil {
			t.Fatal(err)
		}
		h := serveLoops(t, p, loops, onePod(a))
		for _, l := range loops.loops {
			paused := make(chan struct{})
			l.ev.Post(func() { l.pauseAccept(unix.EMFILE); close(paused) })
			<-paused
		}
		if !strings.Contains(log.String(), "accept failed; not accepting for a while") {
			t.Fatalf("no warning logged: %s", log.String())
		}
		if code, _, body := do(t, client(t), "GET", h.addr, "acme.example.test", "/", nil, nil); code != 200 || body != "a" {
			t.Fatalf("after the pause: %d %q", code, body)
		}
		if n := metricValue(t, reg, "edge_loop_accept_pauses_total", nil); n != float64(len(loops.loops)) {
			t.Fatalf("edge_loop_accept_pauses_total %v, want %d", n, len(loops.loops))
		}
	})
}

// A connection handed to fasthttp's server is counted, and leaves the
// loops' count of connections.
func TestLoopCountsConnectionsAndHandoffs(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		if engine != EngineLoop {
			t.Skip("the event loops' own behaviour")
		}
		a := newBackend(t, "a", nil)
		reg := prometheus.NewRegistry()
		h := newHarnessOn(t, engine, &Proxy{Metrics: NewMetrics(reg)}, onePod(a))
		kept := rawConn(t, h.addr)
		io.WriteString(kept, "GET / HTTP/1.1\r\nHost: acme.example.test\r\n\r\n")
		readResponse(t, kept, "GET")
		if n := metricValue(t, reg, "edge_loop_client_connections", nil); n != 1 {
			t.Fatalf("edge_loop_client_connections %v with one client, want 1", n)
		}
		old := rawConn(t, h.addr)
		io.WriteString(old, "GET / HTTP/1.0\r\nHost: acme.example.test\r\n\r\n")
		if resp := readResponse(t, old, "GET"); resp.StatusCode != 200 {
			t.Fatalf("HTTP/1.0: %d", resp.StatusCode)
		}
		if n := metricValue(t, reg, "edge_loop_handoffs_total", nil); n != 1 {
			t.Fatalf("edge_loop_handoffs_total %v, want 1", n)
		}
		if n := metricValue(t, reg, "edge_loop_client_connections", nil); n != 1 {
			t.Fatalf("edge_loop_client_connections %v after a hand-off, want 1", n)
		}
	})
}

// A body within what the loop buffers but over limits.max_body_bytes gets
// 413 and never reaches the app server.
func TestLoopBodyOverTheLimit(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		a := newBackend(t, "a", nil)
		h := newHarnessOn(t, engine, &Proxy{Limits: Limits{MaxBodyBytes: 100}}, onePod(a))
		conn := rawConn(t, h.addr)
		io.WriteString(conn, "POST / HTTP/1.1\r\nHost: acme.example.test\r\nContent-Length: 1000\r\n\r\n"+strings.Repeat("x", 1000))
		resp := readResponse(t, conn, "POST")
		if resp.StatusCode != 413 || a.hits.Load() != 0 {
			t.Fatalf("status %d, app hits %d; want 413 and none", resp.StatusCode, a.hits.Load())
		}
	})
}

// A long response from a fast endpoint to a fast client goes out in turns
// of relayShare: it arrives whole, and a request on another connection of
// the same loop is served while it streams.
func TestLoopStreamSharesItsLoop(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		if engine != EngineLoop {
			t.Skip("the event loops' own behaviour")
		}
		const size = 16 << 20
		chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096)
		app := newBackend(t, "app", func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/small" {
				_, _ = io.WriteString(w, "ok")
				return
			}
			w.Header().Set("Content-Length", strconv.Itoa(size))
			for sent := 0; sent < size; sent += len(chunk) {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		})
		p := &Proxy{}
		loops, err := listenLoops("127.0.0.1:0", p, nil, quiet(), nil)
		if err != nil {
			t.Fatal(err)
		}
		h := serveLoops(t, p, loops, onePod(app))
		// Every connection from here on goes to the first loop.
		for _, l := range loops.loops[1:] {
			closed := make(chan struct{})
			l.ev.Post(func() { l.ln.Close(); close(closed) })
			<-closed
		}
		stream := rawConn(t, h.addr)
		io.WriteString(stream, "GET /big HTTP/1.1\r\nHost: acme.example.test\r\n\r\n")
		var got atomic.Int64
		streamed := make(chan error, 1)
		go func() {
			_ = stream.SetReadDeadline(time.Now().Add(60 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(stream), nil)
			if err != nil {
				streamed <- err
				return
			}
			buf := make([]byte, 64<<10)
			for {
				n, err := resp.Body.Read(buf)
				got.Add(int64(n))
				if err != nil {
					if err == io.EOF {
						err = nil
					}
					streamed <- err
					return
				}
			}
		}()
		for deadline := time.Now().Add(30 * time.Second); got.Load() < 1<<20; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the stream had sent %d bytes after 30 s", got.Load())
			}
		}
		if code, _, body := do(t, client(t), "GET", h.addr, "acme.example.test", "/small", nil, nil); code != 200 || body != "ok" {
			t.Fatalf("beside the stream: %d %q", code, body)
		}
		if err := <-streamed; err != nil {
			t.Fatalf("the stream ended after %d bytes: %v", got.Load(), err)
		}
		if got.Load() != size {
			t.Fatalf("the stream carried %d bytes, want %d", got.Load(), size)
		}
	})
}
