package edge

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podedge/podedge/internal/consultest"
	"github.com/podedge/podedge/router"
	"github.com/prometheus/client_golang/prometheus"
)

// limitedPod is onePod with a second tenant, free, that sets no limits,
// and acme limited by l.
func limitedPod(l *router.Limits, backends ...*backend) router.State {
	st := onePod(backends...)
	st.Tenants[0].Limits = l
	st.Tenants = append(st.Tenants, router.Tenant{Name: "free", Pod: "pod-1"})
	return st
}

func TestRateLimitAnswers429WithRetryAfter(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		var log consultest.SyncBuffer
		reg := prometheus.NewRegistry()
		p := &Proxy{Metrics: NewMetrics(reg), AccessLog: NewAccessLogHandler(&log)}
		h := newHarnessOn(t, engine, p, limitedPod(&router.Limits{RPS: 1, Burst: 3}, newBackend(t, "a", nil)))
		c := client(t)
		statuses := map[int]int{}
		var retryAfter string
		for range 10 {
			code, hdr, _ := do(t, c, "GET", h.addr, "acme.example.test", "/", nil, nil)
			statuses[code]++
			if code == http.StatusTooManyRequests {
				retryAfter = hdr.Get("Retry-After")
			}
		}
		// A burst of 3 at 1/s: 3 pass (a fourth if a second went by).
		if statuses[200] < 3 || statuses[200] > 4 || statuses[429] != 10-statuses[200] {
			t.Fatalf("statuses %v, want 3 or 4 × 200 and the rest 429", statuses)
		}
		if n, err := strconv.Atoi(retryAfter); err != nil || n < 1 {
			t.Fatalf("Retry-After %q, want whole seconds ≥ 1", retryAfter)
		}
		// A tenant without limits is never refused, whatever its pod
		// mate does.
		for range 50 {
			if code, _, _ := do(t, c, "GET", h.addr, "free.example.test", "/", nil, nil); code != 200 {
				t.Fatalf("unlimited tenant got %d", code)
			}
		}
		if got := metricValue(t, reg, "edge_limit_refusals_total", map[string]string{"limit": "rate"}); got != float64(statuses[429]) {
			t.Fatalf("edge_limit_refusals_total{limit=rate} = %v, want %d", got, statuses[429])
		}
		if got := metricValue(t, reg, "edge_tenant_limit_refusals_total", map[string]string{"tenant": "acme", "limit": "rate"}); got != float64(statuses[429]) {
			t.Fatalf("edge_tenant_limit_refusals_total{tenant=acme,limit=rate} = %v, want %d", got, statuses[429])
		}
		consultest.WaitFor(t, 5*time.Second, "the access log to name the limit", func() bool {
			return strings.Contains(log.String(), `"status":429`) && strings.Contains(log.String(), `"limit":"rate"`)
		})
	})
}

func TestConcurrencyLimitQueuesThen503(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		release := make(chan struct{})
		var entered sync.WaitGroup
		slow := newBackend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				entered.Done()
				<-release
			}
			_, _ = w.Write([]byte("ok"))
		})
		p := &Proxy{TenantLimits: TenantLimits{QueueTimeout: 300 * time.Millisecond}}
		h := newHarnessOn(t, engine, p, limitedPod(&router.Limits{Concurrency: 2}, slow))
		c := client(t)

		// Two slow requests take both slots.
		entered.Add(2)
		done := make(chan int, 3)
		for range 2 {
			go func() {
				code, _, _ := tryGet(c, h.addr, "acme.example.test", "/slow")
				done <- code
			}()
		}
		entered.Wait()
		// A third waits its queue time, then gets 503 with Retry-After.
		start := time.Now()
		code, hdr, body := do(t, c, "GET", h.addr, "acme.example.test", "/fast", nil, nil)
		if code != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" {
			t.Fatalf("over the concurrency limit: %d %q (Retry-After %q), want 503 with Retry-After", code, body, hdr.Get("Retry-After"))
		}
		if waited := time.Since(start); waited < 250*time.Millisecond {
			t.Fatalf("refused after %v, before its queue time of 300ms", waited)
		}
		// Another tenant of the pod is served meanwhile.
		if code, _, _ := do(t, c, "GET", h.addr, "free.example.test", "/fast", nil, nil); code != 200 {
			t.Fatalf("unlimited tenant got %d while acme was at its limit", code)
		}
		// A request that finds a slot freed while it waits is served:
		// the slow ones are let go once it is queued.
		queued := make(chan int, 1)
		go func() {
			code, _, _ := tryGet(c, h.addr, "acme.example.test", "/fast")
			queued <- code
		}()
		st := tenantState(t, h, "acme.example.test")
		consultest.WaitFor(t, 5*time.Second, "a request in acme's queue", func() bool { return waiting(st) })
		close(release)
		if code := <-queued; code != 200 {
			t.Fatalf("queued request got %d after a slot freed, want 200", code)
		}
		for range 2 {
			if code := <-done; code != 200 {
				t.Fatalf("admitted slow request got %d: admitted requests are never cut", code)
			}
		}
		consultest.WaitFor(t, 5*time.Second, "acme's slots given back", func() bool { return st.Inflight() == 0 })
	})
}

// tenantState is the live state of the tenant host routes to.
func tenantState(t *testing.T, h *harness, host string) *router.TenantState {
	t.Helper()
	r, ok := h.p.Snapshot().LookupString(host)
	if !ok {
		t.Fatalf("%s does not route", host)
	}
	return r.Tenant.State()
}

// waiting reports whether a request of st waits for a slot.
func waiting(st *router.TenantState) bool { return st.Waiting() > 0 }

// rawClient is a keep-alive connection written to by hand.
type rawClient struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func newRawClient(t *testing.T, addr string) *rawClient {
	c := rawConn(t, addr)
	return &rawClient{t: t, conn: c, r: bufio.NewReader(c)}
}

// roundTrip sends req and reads the response, body included.
func (c *rawClient) roundTrip(req []byte) *http.Response {
	c.t.Helper()
	_ = c.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.conn.Write(req); err != nil {
		c.t.Fatalf("writing request: %v", err)
	}
	resp, err := http.ReadResponse(c.r, &http.Request{Method: "GET"})
	if err != nil {
		c.t.Fatalf("reading response: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// expectClosed checks that the edge closed the connection.
func (c *rawClient) expectClosed() {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.r.Read(make([]byte, 1)); err != io.EOF {
		c.t.Fatalf("connection still open after the refusal (read %d, %v)", n, err)
	}
}

func TestConnsPerIPLimit(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		p := &Proxy{}
		h := newHarnessOn(t, engine, p, limitedPod(&router.Limits{ConnsPerIP: 2}, newBackend(t, "a", nil)))
		get := []byte("GET / HTTP/1.1\r\nHost: acme.example.test\r\n\r\n")
		conns := make([]*rawClient, 3)
		for i := range 2 {
			conns[i] = newRawClient(t, h.addr)
			if resp := conns[i].roundTrip(get); resp.StatusCode != 200 {
				t.Fatalf("connection %d: %d, want 200", i, resp.StatusCode)
			}
		}
		// Keep-alive requests on a counted connection are not refused.
		if resp := conns[0].roundTrip(get); resp.StatusCode != 200 {
			t.Fatalf("second request on a counted connection: %d", resp.StatusCode)
		}
		conns[2] = newRawClient(t, h.addr)
		resp := conns[2].roundTrip(get)
		if resp.StatusCode != http.StatusTooManyRequests || !resp.Close {
			t.Fatalf("third connection: %d (close %v), want 429 and close", resp.StatusCode, resp.Close)
		}
		conns[2].expectClosed()
		// Another tenant is not counted with acme.
		other := newRawClient(t, h.addr)
		if resp := other.roundTrip([]byte("GET / HTTP/1.1\r\nHost: free.example.test\r\n\r\n")); resp.StatusCode != 200 {
			t.Fatalf("unlimited tenant: %d", resp.StatusCode)
		}
		// A closed connection gives its place back.
		conns[0].conn.Close()
		consultest.WaitFor(t, 5*time.Second, "a connection to acme again after one closed", func() bool {
			c := newRawClient(t, h.addr)
			defer c.conn.Close()
			return c.roundTrip(get).StatusCode == 200
		})
	})
}

func TestLimitChangesApplyLive(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		p := &Proxy{}
		b := newBackend(t, "a", nil)
		h := newHarnessOn(t, engine, p, limitedPod(nil, b))
		c := client(t)
		burst := func() (ok, refused int) {
			for range 20 {
				code, _, _ := do(t, c, "GET", h.addr, "acme.example.test", "/", nil, nil)
				if code == 200 {
					ok++
				} else if code == http.StatusTooManyRequests {
					refused++
				}
			}
			return
		}
		if ok, _ := burst(); ok != 20 {
			t.Fatalf("without limits %d of 20 served", ok)
		}
		// A new state, as the router is given at each change: the old
		// one is the snapshot's.
		h.r.Publish(limitedPod(&router.Limits{RPS: 0.5, Burst: 2}, b))
		if ok, refused := burst(); ok > 3 || refused < 17 {
			t.Fatalf("after limits were set: %d served, %d refused; want ≤ 3 served", ok, refused)
		}
		h.r.Publish(limitedPod(nil, b))
		if ok, _ := burst(); ok != 20 {
			t.Fatalf("after limits were cleared %d of 20 served", ok)
		}
	})
}

func TestDefaultTenantLimits(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		p := &Proxy{TenantLimits: TenantLimits{RPS: 0.5, Burst: 1, QueueTimeout: 50 * time.Millisecond}}
		st := limitedPod(&router.Limits{RPS: 1000, Burst: 1000}, newBackend(t, "a", nil))
		h := newHarnessOn(t, engine, p, st)
		c := client(t)
		count := func(host string) (ok int) {
			for range 5 {
				if code, _, _ := do(t, c, "GET", h.addr, host, "/", nil, nil); code == 200 {
					ok++
				}
			}
			return ok
		}
		// free sets none: the default's burst of one.
		if got := count("free.example.test"); got != 1 {
			t.Fatalf("tenant under the default: %d of 5 served, want 1", got)
		}
		// acme's own limits replace the default.
		if got := count("acme.example.test"); got != 5 {
			t.Fatalf("tenant with its own limits: %d of 5 served, want 5", got)
		}
	})
}
