package forwarder

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/podedge/podedge/bench/backend"
)

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// start serves the forwarder over upstreams and returns its address.
func start(t *testing.T, upstreams ...string) string {
	t.Helper()
	f, err := New(upstreams)
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t)
	srv := f.Server()
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown() })
	return ln.Addr().String()
}

func get(t *testing.T, addr, path string) (int, string, int) {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("X-App-Server"), len(body)
}

func TestRoundRobinOverUpstreams(t *testing.T) {
	var addrs []string
	for _, name := range []string{"app-1", "app-2"} {
		ln := listen(t)
		srv := backend.New(backend.Config{Name: name, Pod: "pod-1"})
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Shutdown(context.Background()) })
		addrs = append(addrs, ln.Addr().String())
	}
	fwd := start(t, addrs...)
	seen := map[string]int{}
	for range 10 {
		code, app, n := get(t, fwd, "/bytes/1024")
		if code != 200 || n != 1024 {
			t.Fatalf("status %d with %d bytes", code, n)
		}
		seen[app]++
	}
	if seen["app-1"] != 5 || seen["app-2"] != 5 {
		t.Fatalf("answers by app server: %v", seen)
	}
}

func TestDeadUpstreamIsABadGateway(t *testing.T) {
	ln := listen(t)
	dead := ln.Addr().String()
	ln.Close()
	if code, _, _ := get(t, start(t, dead), "/"); code != http.StatusBadGateway {
		t.Fatalf("status %d, want 502 (no retries, no health)", code)
	}
}

func TestNewRejectsBadUpstreams(t *testing.T) {
	if _, err := New(nil); err == nil {
		t.Fatal("no upstreams accepted")
	}
	if _, err := New([]string{"nohost"}); err == nil {
		t.Fatal("an address without a port accepted")
	}
}
