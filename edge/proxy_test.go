package edge

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/podedge/podedge/router"
)

func TestRoutesByHost(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		a := newBackend(t, "a", nil)
		h := newHarnessOn(t, engine, &Proxy{}, onePod(a))
		c := client(t)
		for _, host := range []string{"acme.example.test", "ACME.Example.Test", "acme.example.test.", "acme.com", "acme.com:8080"} {
			t.Run(host, func(t *testing.T) {
				code, _, body := do(t, c, "GET", h.addr, host, "/x?y=1", nil, nil)
				if code != 200 || body != "a" {
					t.Fatalf("got %d %q, want 200 from backend a", code, body)
				}
				if got := a.lastRequest(); got.Host != host || got.URI != "/x?y=1" {
					t.Fatalf("backend saw Host %q URI %q, want %q and /x?y=1", got.Host, got.URI, host)
				}
			})
		}
	})
}

func TestRequestTargetIsSentAsWritten(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		a := newBackend(t, "a", nil)
		h := newHarnessOn(t, engine, &Proxy{}, onePod(a))
		conn := rawConn(t, h.addr)
		// Path normalisation would turn this into /c, and decode %2F.
		raw := "GET /a//b/../c%2Fd?q=%20x HTTP/1.1\r\nHost: acme.example.test\r\n\r\n"
		if _, err := conn.Write([]byte(raw)); err != nil {
			t.Fatal(err)
		}
		resp := readResponse(t, conn, "GET")
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if got := a.lastRequest().URI; got != "/a//b/../c%2Fd?q=%20x" {
			t.Fatalf("backend saw %q", got)
		}
	})
}

func TestUnknownHostIsNotProxied(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		a := newBackend(t, "a", nil)
		h := newHarnessOn(t, engine, &Proxy{}, onePod(a))
		c := client(t)
		for _, host := range []string{"evil.example.org", a.addr(), "127.0.0.1", "other.example.test", ""} {
			code, hdr, body := do(t, c, "GET", h.addr, host, "/", nil, nil)
			if host == "" {
				// net/http sends the URL's host when Host is empty: the edge's
				// own address, which no tenant has.
				host = h.addr
			}
			if code != 404 || body != "unknown host\n" || hdr.Get("Content-Type") != "text/plain; charset=utf-8" {
				t.Errorf("Host %q: got %d %q %q, want 404 'unknown host'", host, code, body, hdr.Get("Content-Type"))
			}
			if hdr.Get("X-Request-Id") == "" {
				t.Errorf("Host %q: no X-Request-Id on the error", host)
			}
		}
		// An absolute-form target naming another host is routed by that host,
		// so it cannot turn the edge into an open proxy.
		conn := rawConn(t, h.addr)
		_, _ = conn.Write([]byte("GET http://" + a.addr() + "/ HTTP/1.1\r\nHost: acme.example.test\r\n\r\n"))
		if resp := readResponse(t, conn, "GET"); resp.StatusCode != 404 {
			t.Errorf("absolute-form target to an internal address: got %d, want 404", resp.StatusCode)
		}
		if a.hits.Load() != 0 {
			t.Fatalf("the backend received %d requests for unknown hosts", a.hits.Load())
		}
	})
}

func TestNoEndpointAnswers503AtOnce(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		st := onePod()
		h := newHarnessOn(t, engine, &Proxy{RetryAfter: 7 * time.Second}, st)
		c := client(t)
		start := time.Now()
		code, hdr, body := do(t, c, "GET", h.addr, "acme.example.test", "/", nil, nil)
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("503 took %s", took)
		}
		if code != 503 || hdr.Get("Retry-After") != "7" || !strings.HasPrefix(body, "service unavailable") || strings.Count(body, "\n") != 1 {
			t.Fatalf("got %d Retry-After=%q %q", code, hdr.Get("Retry-After"), body)
		}
	})
}

func TestErrorsDoNotLeakAddresses(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		dead := newBackend(t, "dead", nil)
		dead.kill()
		hang := newBackend(t, "hang", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
		cases := []struct {
			name   string
			b      *backend
			status int
		}{
			{"refused", dead, 502},
			{"timeout", hang, 504},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				h := newHarnessOn(t, engine, &Proxy{Timeouts: Timeouts{ResponseHeader: 200 * time.Millisecond}}, onePod(tc.b))
				code, hdr, body := do(t, client(t), "GET", h.addr, "acme.example.test", "/", nil, nil)
				if code != tc.status {
					t.Fatalf("got %d %q, want %d", code, body, tc.status)
				}
				if strings.Contains(body, "127.0.0.1") || strings.Count(body, "\n") != 1 || hdr.Get("Content-Type") != "text/plain; charset=utf-8" {
					t.Fatalf("error body %q is not one plain line without addresses", body)
				}
			})
		}
	})
}

func TestBackendErrorStatusIsPassedOnAndCounted(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		sick := newBackend(t, "sick", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(503)
			_, _ = w.Write([]byte("app says no"))
		})
		p := &Proxy{}
		h := newHarnessOn(t, engine, p, onePod(sick))
		c := client(t)
		for i := range 3 {
			code, _, body := do(t, c, "GET", h.addr, "acme.example.test", "/", nil, nil)
			if code != 503 || body != "app says no" {
				t.Fatalf("request %d: got %d %q, want the app's own 503", i, code, body)
			}
		}
		m := h.p.Snapshot().Pod("pod-1").Apps.Members()[0]
		if m.EjectedUntil(time.Now()).IsZero() {
			t.Fatal("three 503s in a row did not eject the endpoint")
		}
	})
}

var _ = router.State{}
