//go:build linux

package loopforwarder

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podedge/podedge/bench/backend"
)

func backendAt(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := backend.New(backend.Config{Name: name, Pod: "pod-1"})
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return ln.Addr().String()
}

func start(t *testing.T, upstreams ...string) string {
	t.Helper()
	f, err := Listen("127.0.0.1:0", upstreams, DefaultTimeouts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f.Addr().String()
}

// client is an HTTP client with its own keep-alive pool, closed at the end.
func client(t *testing.T) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func TestRoundRobinKeepAliveAndBodies(t *testing.T) {
	fwd := start(t, backendAt(t, "app-1"), backendAt(t, "app-2"))
	c := client(t)
	seen := map[string]int{}
	for _, size := range []int{0, 64, 1024, 100 << 10, 1 << 20, 64, 64, 64, 64, 64} {
		resp, err := c.Get(fmt.Sprintf("http://%s/bytes/%d", fwd, size))
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || len(body) != size {
			t.Fatalf("/bytes/%d: status %d, %d bytes, %v", size, resp.StatusCode, len(body), err)
		}
		if resp.Header.Get("Connection") != "" {
			t.Fatalf("Connection header passed through: %q", resp.Header.Get("Connection"))
		}
		seen[resp.Header.Get("X-App-Server")]++
	}
	if seen["app-1"] != 5 || seen["app-2"] != 5 {
		t.Fatalf("answers by app server: %v", seen)
	}

	// An upload reaches the app server whole.
	upload := strings.Repeat("u", 300<<10)
	resp, err := c.Post("http://"+fwd+"/", "application/octet-stream", strings.NewReader(upload))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), fmt.Sprintf("received=%d bytes", len(upload))) {
		t.Fatalf("upload answered %d: %q", resp.StatusCode, body)
	}

	// HEAD: a Content-Length and no body.
	resp, err = c.Head("http://" + fwd + "/bytes/500")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != 500 {
		t.Fatalf("HEAD: status %d, length %d", resp.StatusCode, resp.ContentLength)
	}
}

func TestPipelinedRequestsAnswerInOrder(t *testing.T) {
	fwd := start(t, backendAt(t, "app-1"))
	conn, err := net.Dial("tcp", fwd)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sizes := []int{10, 20000, 30}
	var req strings.Builder
	for _, n := range sizes {
		fmt.Fprintf(&req, "GET /bytes/%d HTTP/1.1\r\nHost: t\r\n\r\n", n)
	}
	if _, err := io.WriteString(conn, req.String()); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	for _, n := range sizes {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if len(body) != n {
			t.Fatalf("pipelined answer of %d bytes, want %d", len(body), n)
		}
	}
}

func TestManyClientsAtOnce(t *testing.T) {
	fwd := start(t, backendAt(t, "app-1"), backendAt(t, "app-2"))
	c := client(t)
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := range 32 {
		wg.Go(func() {
			for j := range 20 {
				size := (i*20 + j) * 97
				resp, err := c.Get(fmt.Sprintf("http://%s/bytes/%d", fwd, size))
				if err != nil {
					errs <- err
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if len(body) != size {
					errs <- fmt.Errorf("/bytes/%d answered %d bytes", size, len(body))
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// raw sends one request on a new connection and returns the response's
// status line.
func raw(t *testing.T, addr, request string) string {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatalf("no answer to %q: %v", request, err)
	}
	return strings.TrimSpace(line)
}

func TestWhatItRefuses(t *testing.T) {
	fwd := start(t, backendAt(t, "app-1"))
	for _, tc := range []struct{ request, status string }{
		{"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "HTTP/1.1 501 Not Implemented"},
		{"GET / HTTP/1.1\r\nHost: t\r\nX: " + strings.Repeat("a", maxHeadBytes) + "\r\n\r\n", "HTTP/1.1 431 Request Header Fields Too Large"},
	} {
		if got := raw(t, fwd, tc.request); got != tc.status {
			t.Errorf("%.40q answered %q, want %q", tc.request, got, tc.status)
		}
	}
}

func TestDeadUpstreamIsABadGateway(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	if got := raw(t, start(t, dead), "GET / HTTP/1.1\r\nHost: t\r\n\r\n"); got != "HTTP/1.1 502 Bad Gateway" {
		t.Fatalf("answered %q, want a 502", got)
	}
}

func TestListenRejectsBadAddresses(t *testing.T) {
	if _, err := Listen("127.0.0.1:0", nil, DefaultTimeouts); err == nil {
		t.Fatal("no upstreams accepted")
	}
	if _, err := Listen("127.0.0.1:0", []string{"nohost"}, DefaultTimeouts); err == nil {
		t.Fatal("an upstream without a port accepted")
	}
	if _, err := Listen("localhost", []string{"127.0.0.1:1"}, DefaultTimeouts); err == nil {
		t.Fatal("a listen address without a port accepted")
	}
	noIdle := DefaultTimeouts
	noIdle.Idle = 0
	if _, err := Listen("127.0.0.1:0", []string{"127.0.0.1:1"}, noIdle); err == nil || !strings.Contains(err.Error(), "idle timeout") {
		t.Fatalf("a zero idle timeout: %v", err)
	}
}

func TestTimeouts(t *testing.T) {
	// An upstream that accepts and never answers.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	short := Timeouts{Read: 300 * time.Millisecond, Write: time.Second, Idle: 200 * time.Millisecond, UpstreamIdle: time.Second}
	f, err := Listen("127.0.0.1:0", []string{silent.Addr().String()}, short)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	addr := f.Addr().String()

	start := time.Now()
	if got := raw(t, addr, "GET / HTTP/1.1\r\nHost: t\r\n\r\n"); got != "HTTP/1.1 504 Gateway Timeout" {
		t.Fatalf("a silent upstream answered %q, want a 504", got)
	}
	if waited := time.Since(start); waited < short.Read {
		t.Fatalf("504 after %s, before the %s read timeout", waited, short.Read)
	}

	// closedWithin reports whether the forwarder closes conn, after it
	// sent what, within 10 s; a read that returns data instead fails.
	closedWithin := func(what string) {
		t.Helper()
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if what != "" {
			if _, err := io.WriteString(conn, what); err != nil {
				t.Fatal(err)
			}
		}
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := conn.Read(make([]byte, 64))
		if n != 0 || err != io.EOF {
			t.Fatalf("after %q: read %d bytes, %v; want the connection closed", what, n, err)
		}
	}
	closedWithin("")                              // idle: never sends a request
	closedWithin("GET / HTTP/1.1\r\nHost: t\r\n") // a head that never ends
}
