package edge

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podedge/podedge/router"
)

// connCounter is an app server that counts the connections open to it,
// and the most it had at once; /hold answers once release is closed.
type connCounter struct {
	srv     *httptest.Server
	release chan struct{}
	held    chan struct{}
	mu      sync.Mutex
	open    int
	most    int
}

func newConnCounter(t *testing.T) *connCounter {
	cc := &connCounter{release: make(chan struct{}), held: make(chan struct{}, 4)}
	cc.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/hold" {
			cc.held <- struct{}{}
			<-cc.release
		}
		_, _ = io.WriteString(w, "ok")
	}))
	cc.srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		cc.mu.Lock()
		defer cc.mu.Unlock()
		switch st {
		case http.StateNew:
			cc.open++
			cc.most = max(cc.most, cc.open)
		case http.StateClosed, http.StateHijacked:
			cc.open--
		}
	}
	cc.srv.Start()
	t.Cleanup(cc.srv.Close)
	return cc
}

func (cc *connCounter) mostAtOnce() int {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.most
}

// limits.max_conns_per_endpoint bounds the connections open to an app
// server whatever path its requests take: on the loops, a chunked upload
// is served by fasthttp's path, and both count against one limit. A
// request finding it reached gets 503 (one app server, nowhere to retry);
// one finding the other path's connections idle closes them and goes on.
// (Once the edge has closed a connection the app server may count it a
// while longer: only the count while one is held is exact.)
func TestConnCapIsSharedByEveryPool(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		app := newConnCounter(t)
		st := router.State{
			Pods:    []router.Pod{{Name: "pod-1", Capacity: 10}},
			Tenants: []router.Tenant{{Name: "acme", Pod: "pod-1"}},
			Apps: []router.Endpoint{{ID: "app", Node: "n", Pod: "pod-1",
				Addr: strings.TrimPrefix(app.srv.URL, "http://"), Weight: 1, Passing: true}},
		}
		h := newHarnessOn(t, engine, &Proxy{Limits: Limits{MaxConnsPerEndpoint: 1}}, st)
		c := client(t)
		upload := func() int {
			t.Helper()
			req, err := http.NewRequest("POST", "http://"+h.addr+"/upload", io.NopCloser(strings.NewReader("data")))
			if err != nil {
				t.Fatal(err)
			}
			req.Host = "acme.example.test"
			req.ContentLength = -1 // chunked: fasthttp's path on the loops
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			_, _ = io.Copy(io.Discard, resp.Body)
			return resp.StatusCode
		}

		held := make(chan int, 1)
		go func() {
			code, _, _ := tryGet(client(t), h.addr, "acme.example.test", "/hold")
			held <- code
		}()
		select {
		case <-app.held:
		case <-time.After(10 * time.Second):
			t.Fatal("the held request never reached the app server")
		}
		if code := upload(); code != http.StatusServiceUnavailable {
			t.Fatalf("an upload beside a held request on the one connection allowed: %d, want 503", code)
		}
		if n := app.mostAtOnce(); n != 1 {
			t.Fatalf("the app server had %d connections open at once, limit 1", n)
		}
		close(app.release)
		if code := <-held; code != 200 {
			t.Fatalf("the held request: %d", code)
		}
		if code := upload(); code != 200 {
			t.Fatalf("an upload once the connection is free: %d", code)
		}
		if code, _, body := do(t, c, "GET", h.addr, "acme.example.test", "/", nil, nil); code != 200 || body != "ok" {
			t.Fatalf("a GET after the upload: %d %q", code, body)
		}
	})
}

// An app server registered by name (not ip:port) gets the same answer on
// both paths, since the edge makes no name lookups: 502, and nothing is
// sent to it.
func TestEndpointByNameIsRefusedOnBothPaths(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		app := newConnCounter(t)
		_, port, _ := net.SplitHostPort(strings.TrimPrefix(app.srv.URL, "http://"))
		st := router.State{
			Pods:    []router.Pod{{Name: "pod-1", Capacity: 10}},
			Tenants: []router.Tenant{{Name: "acme", Pod: "pod-1"}},
			Apps: []router.Endpoint{{ID: "app", Node: "n", Pod: "pod-1",
				Addr: "localhost:" + port, Weight: 1, Passing: true}},
		}
		h := newHarnessOn(t, engine, &Proxy{}, st)
		if code, _, _ := do(t, client(t), "GET", h.addr, "acme.example.test", "/", nil, nil); code != http.StatusBadGateway {
			t.Fatalf("an endpoint by name: %d, want 502", code)
		}
		if n := app.mostAtOnce(); n != 0 {
			t.Fatalf("the app server was reached (%d connections)", n)
		}
	})
}
