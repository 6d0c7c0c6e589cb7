package edge

import (
	"bufio"
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podedge/podedge/internal/consultest"
	"github.com/podedge/podedge/router"
)

func TestRetryBudget(t *testing.T) {
	now := time.Unix(1000, 0)
	b := newRetryBudget(0.2, 1, 10*time.Second, func() time.Time { return now })
	for range 100 {
		b.request(now)
	}
	// 20% of 100 requests, plus the floor of 1 per second over 10 seconds.
	allowed := 0
	for range 100 {
		if b.withdraw(now) {
			allowed++
		}
	}
	if allowed != 30 {
		t.Fatalf("allowed %d retries, want 30", allowed)
	}
	// Ten seconds later the window has moved past them.
	later := now.Add(10 * time.Second)
	if !b.withdraw(later) {
		t.Fatal("budget did not refill once the window moved on")
	}
}

// resetter is an endpoint that reads a request and closes the connection
// without answering, counting the requests it swallowed.
type resetter struct {
	address string
	hits    atomic.Int64
}

func newResetter(t *testing.T) *resetter {
	r := &resetter{}
	r.address = rawBackend(t, func(int, *bufio.Reader, net.Conn) bool {
		r.hits.Add(1)
		return false
	})
	return r
}

func (r *resetter) addr() string { return r.address }

func withApps(st router.State, addrs ...string) router.State {
	for _, a := range addrs {
		st.Apps = append(st.Apps, router.Endpoint{ID: "app-" + a, Node: "n", Pod: "pod-1", Addr: a, Weight: 1, Passing: true})
	}
	return st
}

func TestRetries(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		t.Run("GET on a refused endpoint goes to another", func(t *testing.T) {
			alive, dead := newBackend(t, "alive", nil), newBackend(t, "dead", nil)
			dead.kill()
			h := newHarnessOn(t, engine, &Proxy{}, onePod(dead, alive))
			c := client(t)
			for i := range 20 {
				if code, _, body := do(t, c, "GET", h.addr, "acme.example.test", "/", nil, nil); code != 200 || body != "alive" {
					t.Fatalf("request %d: %d %q", i, code, body)
				}
			}
		})
		t.Run("POST on a refused endpoint goes to another: nothing was sent", func(t *testing.T) {
			alive, dead := newBackend(t, "alive", nil), newBackend(t, "dead", nil)
			dead.kill()
			h := newHarnessOn(t, engine, &Proxy{}, onePod(dead, alive))
			c := client(t)
			for i := range 10 {
				if code, _, _ := do(t, c, "POST", h.addr, "acme.example.test", "/", strings.NewReader("payload"), nil); code != 200 {
					t.Fatalf("request %d: %d", i, code)
				}
			}
		})
		t.Run("POST that reached an endpoint is not sent again", func(t *testing.T) {
			alive, rs := newBackend(t, "alive", nil), newResetter(t)
			h := newHarnessOn(t, engine, &Proxy{}, withApps(onePod(alive), rs.addr()))
			c := client(t)
			failed := 0
			for range 6 {
				code, _, body := do(t, c, "POST", h.addr, "acme.example.test", "/", strings.NewReader("payload"), nil)
				switch {
				case code == 502 && body == "bad gateway: upstream failed\n":
					failed++
				case code != 200:
					t.Fatalf("got %d %q", code, body)
				}
			}
			// Round robin alternates; passive health may eject the resetter
			// after its third failure, so two or three POSTs reach it.
			if failed == 0 || int64(failed) != rs.hits.Load() {
				t.Fatalf("%d POSTs failed and the resetter swallowed %d; each must have been sent once", failed, rs.hits.Load())
			}
		})
		t.Run("GET that failed before any response byte is retried", func(t *testing.T) {
			alive, rs := newBackend(t, "alive", nil), newResetter(t)
			h := newHarnessOn(t, engine, &Proxy{}, withApps(onePod(alive), rs.addr()))
			c := client(t)
			for i := range 10 {
				if code, _, body := do(t, c, "GET", h.addr, "acme.example.test", "/", nil, nil); code != 200 || body != "alive" {
					t.Fatalf("request %d: %d %q", i, code, body)
				}
			}
			if rs.hits.Load() == 0 {
				t.Fatal("the resetter was never tried; the test proves nothing")
			}
		})
		t.Run("GET that timed out before any response byte is retried", func(t *testing.T) {
			alive := newBackend(t, "alive", nil)
			hang := newBackend(t, "hang", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
			h := newHarnessOn(t, engine, &Proxy{Timeouts: Timeouts{ResponseHeader: 200 * time.Millisecond}}, onePod(hang, alive))
			c := client(t)
			for i := range 4 {
				if code, _, body := do(t, c, "GET", h.addr, "acme.example.test", "/", nil, nil); code != 200 || body != "alive" {
					t.Fatalf("request %d: %d %q", i, code, body)
				}
			}
		})
		t.Run("at most two retries", func(t *testing.T) {
			var rss []*resetter
			var addrs []string
			for range 5 {
				rs := newResetter(t)
				rss = append(rss, rs)
				addrs = append(addrs, rs.addr())
			}
			h := newHarnessOn(t, engine, &Proxy{}, withApps(onePod(), addrs...))
			code, _, _ := do(t, client(t), "GET", h.addr, "acme.example.test", "/", nil, nil)
			total := int64(0)
			for _, rs := range rss {
				total += rs.hits.Load()
			}
			if code != 502 || total != 3 {
				t.Fatalf("got %d after %d attempts, want 502 after 3", code, total)
			}
		})
		t.Run("retry budget stops retries", func(t *testing.T) {
			alive, rs := newBackend(t, "alive", nil), newResetter(t)
			p := &Proxy{Retries: Retries{Max: 2, BudgetRatio: 0, BudgetMinPerSecond: 0}}
			h := newHarnessOn(t, engine, p, withApps(onePod(alive), rs.addr()))
			c := client(t)
			failed := 0
			for range 4 {
				if code, _, _ := do(t, c, "GET", h.addr, "acme.example.test", "/", nil, nil); code == 502 {
					failed++
				}
			}
			if failed == 0 || metricValue(t, p.metrics.Registry, "edge_retry_budget_exhausted_total", nil) != float64(failed) {
				t.Fatalf("%d requests failed with an empty budget; the exhausted counter says %v", failed,
					metricValue(t, p.metrics.Registry, "edge_retry_budget_exhausted_total", nil))
			}
		})
	})
}

func TestStaleKeepAliveConnectionIsNotUsed(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		var closed atomic.Int64
		b := &backend{name: "short"}
		b.srv = httptest.NewUnstartedServer(http.HandlerFunc(b.serve))
		// The app closes idle connections after 100ms, long before the edge's
		// keep-alive timeout.
		b.srv.Config.IdleTimeout = 100 * time.Millisecond
		b.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
			if s == http.StateClosed {
				closed.Add(1)
			}
		}
		b.srv.Start()
		t.Cleanup(b.srv.Close)
		h := newHarnessOn(t, engine, &Proxy{}, onePod(b))
		c := client(t)
		for i := range 3 {
			before := closed.Load()
			// A POST cannot be replayed, so it must not meet the dead
			// connection at all.
			if code, _, _ := do(t, c, "POST", h.addr, "acme.example.test", "/", bytes.NewReader([]byte("x")), nil); code != 200 {
				t.Fatalf("POST %d after the app closed its idle connection: %d", i, code)
			}
			consultest.WaitFor(t, 5*time.Second, "the app to close the idle connection", func() bool { return closed.Load() > before })
		}
	})
}
