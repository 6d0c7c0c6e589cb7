package edge

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/consultest"
)

// startEdge runs an edge of pod against the agent, listening on loopback,
// and waits for its first sync. mutate may change its configuration.
func startEdge(t *testing.T, agent *consultest.Agent, pod, publicIP string, mutate func(*Config)) *Edge {
	t.Helper()
	return startEdgeWith(t, agent, pod, publicIP, mutate, Options{})
}

// startEdgeWith is startEdge with options (the TLS configuration, the
// access log); the logger and the Consul client are the test's.
func startEdgeWith(t *testing.T, agent *consultest.Agent, pod, publicIP string, mutate func(*Config), opts Options) *Edge {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Consul.Address = agent.HTTPAddr
	cfg.Pod = pod
	cfg.HTTP = "127.0.0.1:0"
	cfg.Admin = "127.0.0.1:0"
	cfg.PublicIP = publicIP
	cfg.Register.CheckInterval = time.Second
	cfg.DrainDelay = 0
	cfg.ShutdownTimeout = 5 * time.Second
	cfg.AccessLog.Enabled = false
	if mutate != nil {
		mutate(&cfg)
	}
	opts.Logger, opts.Consul = quiet(), agent.Client
	e, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("edge run: %v", err)
		}
	})
	select {
	case <-e.Router().Ready():
	case <-time.After(15 * time.Second):
		t.Fatal("edge did not sync with consul within 15s")
	}
	return e
}

// seedPods writes pods and tenants (tenant → pod) to KV.
func seedPods(t *testing.T, agent *consultest.Agent, tenants map[string]string) {
	t.Helper()
	pods := map[string]bool{}
	for tenant, pod := range tenants {
		if !pods[pod] {
			pods[pod] = true
			agent.Put(t, "podedge/pods/"+pod, fmt.Sprintf(`{"name":%q,"region":"eu","lat":53.3,"lon":-6.2,"capacity":100}`, pod))
		}
		agent.Put(t, "podedge/tenants/"+tenant, fmt.Sprintf(`{"name":%q,"pod":%q}`, tenant, pod))
	}
}

// registerApp registers b as an app server of pod, passing.
func registerApp(t *testing.T, agent *consultest.Agent, id, pod string, b *backend) {
	t.Helper()
	host, portStr, _ := net.SplitHostPort(b.addr())
	port, _ := strconv.Atoi(portStr)
	agent.App(t, id, pod, host, port, api.HealthPassing)
}

// appAddrs lists the app endpoints of pod in the edge's snapshot.
func appAddrs(e *Edge, pod string) map[string]bool {
	out := map[string]bool{}
	if s := e.Proxy().Snapshot(); s != nil {
		if p := s.Pod(pod); p != nil {
			for _, m := range p.Apps.Members() {
				out[m.Addr] = true
			}
		}
	}
	return out
}

func waitApps(t *testing.T, e *Edge, pod string, want ...*backend) {
	t.Helper()
	consultest.WaitFor(t, 10*time.Second, fmt.Sprintf("%d app endpoints of %s in the snapshot", len(want), pod), func() bool {
		got := appAddrs(e, pod)
		if len(got) != len(want) {
			return false
		}
		for _, b := range want {
			if !got[b.addr()] {
				return false
			}
		}
		return true
	})
}

func TestIntegrationRoundRobinSpread(t *testing.T) {
	agent := consultest.Start(t)
	seedPods(t, agent, map[string]string{"acme": "pod-1"})
	bs := []*backend{newBackend(t, "a", nil), newBackend(t, "b", nil), newBackend(t, "c", nil)}
	for i, b := range bs {
		registerApp(t, agent, fmt.Sprintf("app-%d", i), "pod-1", b)
	}
	e := startEdge(t, agent, "pod-1", "192.0.2.1", nil)
	waitApps(t, e, "pod-1", bs...)
	c := client(t)
	for range 300 {
		if code, _, _ := do(t, c, "GET", e.HTTPAddr().String(), "acme.example.test", "/", nil, nil); code != 200 {
			t.Fatalf("status %d", code)
		}
	}
	for _, b := range bs {
		if n := b.hits.Load(); n < 90 || n > 110 {
			t.Errorf("backend %s got %d of 300 requests, want about 100", b.name, n)
		}
	}
}

func TestIntegrationFailoverLosesNoGET(t *testing.T) {
	agent := consultest.Start(t)
	seedPods(t, agent, map[string]string{"acme": "pod-1"})
	bs := []*backend{newBackend(t, "a", nil), newBackend(t, "b", nil), newBackend(t, "c", nil)}
	for i, b := range bs {
		registerApp(t, agent, fmt.Sprintf("app-%d", i), "pod-1", b)
	}
	e := startEdge(t, agent, "pod-1", "192.0.2.1", nil)
	waitApps(t, e, "pod-1", bs...)

	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		c := client(t)
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				code, _, err := tryGet(c, e.HTTPAddr().String(), "acme.example.test", "/")
				if err != nil || code != 200 {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("status %d, error %v", code, err))
					continue
				}
				ok.Add(1)
			}
		})
	}
	consultest.WaitFor(t, 10*time.Second, "200 requests before the kill", func() bool { return ok.Load() >= 200 })
	// The app server dies; Consul still says it passes (its check has not
	// run yet): only the edge's own retries and passive health stand
	// between the clients and errors.
	bs[1].kill()
	killedAt := ok.Load()
	consultest.WaitFor(t, 20*time.Second, "600 more requests after the kill", func() bool { return ok.Load() >= killedAt+600 })
	close(stop)
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d requests failed after the kill (first: %v)", n, firstErr.Load())
	}
	if v := metricValue(t, e.reg, "edge_upstream_ejections_total", map[string]string{"upstream": bs[1].addr()}); v < 1 {
		t.Errorf("the dead endpoint was never ejected")
	}
	if v := metricValue(t, e.reg, "edge_upstream_retries_total", map[string]string{"pod": "pod-1"}); v < 1 {
		t.Errorf("no retries counted")
	}
}

func TestIntegrationMaintenanceMode(t *testing.T) {
	agent := consultest.Start(t)
	seedPods(t, agent, map[string]string{"acme": "pod-1"})
	a, b := newBackend(t, "a", nil), newBackend(t, "b", nil)
	registerApp(t, agent, "app-a", "pod-1", a)
	registerApp(t, agent, "app-b", "pod-1", b)
	e := startEdge(t, agent, "pod-1", "192.0.2.1", nil)
	waitApps(t, e, "pod-1", a, b)

	start := time.Now()
	if err := agent.Client.Agent().EnableServiceMaintenance("app-b", "deploy"); err != nil {
		t.Fatal(err)
	}
	// The watch wakes within a blocking query's return plus the router's
	// 50ms minimum gap: well under a second on loopback.
	waitApps(t, e, "pod-1", a)
	t.Logf("maintenance honoured after %s", time.Since(start).Round(time.Millisecond))
	before := b.hits.Load()
	c := client(t)
	for range 50 {
		if code, _, body := do(t, c, "GET", e.HTTPAddr().String(), "acme.example.test", "/", nil, nil); code != 200 || body != "a" {
			t.Fatalf("got %d %q while b is in maintenance", code, body)
		}
	}
	if b.hits.Load() != before {
		t.Fatalf("b got %d requests while in maintenance", b.hits.Load()-before)
	}
	if err := agent.Client.Agent().DisableServiceMaintenance("app-b"); err != nil {
		t.Fatal(err)
	}
	waitApps(t, e, "pod-1", a, b)
}

func TestIntegrationConsulDown(t *testing.T) {
	agent := consultest.Start(t)
	seedPods(t, agent, map[string]string{"acme": "pod-1"})
	a := newBackend(t, "a", nil)
	registerApp(t, agent, "app-a", "pod-1", a)
	e := startEdge(t, agent, "pod-1", "192.0.2.1", nil)
	waitApps(t, e, "pod-1", a)
	health := func() int {
		resp, err := http.Get("http://" + e.AdminAddr().String() + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if h := health(); h != 200 {
		t.Fatalf("/healthz %d once synced", h)
	}

	agent.Stop()
	consultest.WaitFor(t, 10*time.Second, "edge_consul_healthy to drop to 0", func() bool {
		return metricValue(t, e.reg, "edge_consul_healthy", nil) == 0
	})
	c := client(t)
	for i := range 100 {
		if code, _, _ := do(t, c, "GET", e.HTTPAddr().String(), "acme.example.test", "/", nil, nil); code != 200 {
			t.Fatalf("request %d with consul down: %d", i, code)
		}
	}
	if h := health(); h != 200 {
		t.Fatalf("/healthz %d while consul is down; the edge still serves its last snapshot", h)
	}

	// A restarted dev agent has forgotten everything: the edge registers
	// itself again.
	agent.Restart()
	consultest.WaitFor(t, 20*time.Second, "the edge to register again", func() bool {
		svc, _, err := agent.Client.Agent().Service(e.ServiceID(), nil)
		return err == nil && svc != nil && svc.Meta["pod"] == "pod-1"
	})
}

func TestIntegrationCrossPodForwarding(t *testing.T) {
	agent := consultest.Start(t)
	seedPods(t, agent, map[string]string{"acme": "pod-1", "globex": "pod-2", "initech": "pod-3"})
	a1, b2 := newBackend(t, "a1", nil), newBackend(t, "b2", nil)
	registerApp(t, agent, "app-1", "pod-1", a1)
	registerApp(t, agent, "app-2", "pod-2", b2)
	// pod-3's only edge passes its check but is not there.
	deadLn, _ := net.Listen("tcp", "127.0.0.1:0")
	deadPort := deadLn.Addr().(*net.TCPAddr).Port
	deadLn.Close()
	agent.Edge(t, "edge-dead", "pod-3", "127.0.0.1", deadPort, "192.0.2.99", api.HealthPassing)

	e1 := startEdge(t, agent, "pod-1", "192.0.2.1", nil)
	e2 := startEdge(t, agent, "pod-2", "192.0.2.2", nil)
	consultest.WaitFor(t, 15*time.Second, "edge 1 to see edge 2 passing in pod-2", func() bool {
		s := e1.Proxy().Snapshot()
		return s != nil && s.Pod("pod-2") != nil && s.Pod("pod-2").EdgePool.Len() == 1
	})

	c := clientFrom(t, "127.0.0.2")
	code, hdr, body := do(t, c, "GET", e1.HTTPAddr().String(), "globex.example.test", "/", nil, nil)
	if code != 200 || body != "b2" {
		t.Fatalf("globex through pod-1's edge: %d %q, want pod-2's app", code, body)
	}
	got := b2.lastRequest()
	if got.Header.Get("Via") != "1.1 podedge" {
		t.Errorf("Via %q", got.Header.Get("Via"))
	}
	if got.Header.Get("X-Forwarded-For") != "127.0.0.2, 127.0.0.1" {
		t.Errorf("X-Forwarded-For %q: want the client, then pod-1's edge", got.Header.Get("X-Forwarded-For"))
	}
	if got.Host != "globex.example.test" || got.Header.Get("X-Request-Id") != hdr.Get("X-Request-Id") {
		t.Errorf("Host %q, request id %q vs %q", got.Host, got.Header.Get("X-Request-Id"), hdr.Get("X-Request-Id"))
	}

	t.Run("a request forwarded once is served by its own pod", func(t *testing.T) {
		code, _, body := do(t, c, "GET", e2.HTTPAddr().String(), "globex.example.test", "/", nil, map[string]string{"Via": "1.1 podedge"})
		if code != 200 || body != "b2" {
			t.Fatalf("%d %q", code, body)
		}
	})
	t.Run("a forwarded request is never forwarded again", func(t *testing.T) {
		before := b2.hits.Load()
		code, _, body := do(t, c, "GET", e1.HTTPAddr().String(), "globex.example.test", "/", nil, map[string]string{"Via": "1.0 corp-proxy, 1.1 podedge"})
		if code != 502 || body != "bad gateway: forwarding loop\n" || b2.hits.Load() != before {
			t.Fatalf("%d %q, app hits +%d; want 502 and no forward", code, body, b2.hits.Load()-before)
		}
	})
	t.Run("a failed forward is a 502", func(t *testing.T) {
		start := time.Now()
		code, _, _ := do(t, c, "GET", e1.HTTPAddr().String(), "initech.example.test", "/", nil, nil)
		if code != 502 || time.Since(start) > 5*time.Second {
			t.Fatalf("%d after %s, want a prompt 502", code, time.Since(start))
		}
	})
}

func TestIntegrationAdminEndpoints(t *testing.T) {
	agent := consultest.Start(t)
	seedPods(t, agent, map[string]string{"acme": "pod-1"})
	a := newBackend(t, "a", nil)
	registerApp(t, agent, "app-a", "pod-1", a)
	e := startEdge(t, agent, "pod-1", "192.0.2.1", nil)
	waitApps(t, e, "pod-1", a)
	if code, _, _ := do(t, client(t), "GET", e.HTTPAddr().String(), "acme.example.test", "/", nil, nil); code != 200 {
		t.Fatalf("status %d", code)
	}
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + e.AdminAddr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, _ := get("/debug/pprof/"); code != 200 {
		t.Errorf("/debug/pprof/: %d", code)
	}
	code, body := get("/debug/routes")
	var routes Routes
	if err := json.Unmarshal([]byte(body), &routes); code != 200 || err != nil {
		t.Fatalf("/debug/routes: %d %v", code, err)
	}
	if routes.Pod != "pod-1" || !routes.Synced || routes.Tenants != 1 || len(routes.Pods) != 1 ||
		len(routes.Pods[0].Apps) != 1 || routes.Pods[0].Apps[0].Addr != a.addr() || !routes.Pods[0].Apps[0].Available {
		t.Errorf("/debug/routes: %s", body)
	}
	for name, labels := range map[string]map[string]string{
		"edge_requests_total":                     {"pod": "pod-1", "code": "2xx"},
		"edge_request_duration_seconds":           {"pod": "pod-1"},
		"edge_upstream_requests_total":            {"pod": "pod-1", "upstream": a.addr()},
		"edge_healthy_endpoints":                  {"pod": "pod-1"},
		"edge_tenants":                            nil,
		"edge_consul_last_sync_timestamp_seconds": nil,
	} {
		if v := metricValue(t, e.reg, name, labels); v <= 0 {
			t.Errorf("%s%v = %v, want > 0", name, labels, v)
		}
	}
	if code, body := get("/metrics"); code != 200 || len(body) == 0 {
		t.Errorf("/metrics: %d", code)
	}
	// The edge registered itself, with its admin check.
	svc, _, err := agent.Client.Agent().Service(e.ServiceID(), nil)
	if err != nil || svc.Service != "edge" || svc.Meta["pod"] != "pod-1" || svc.Meta["public_ip"] != "192.0.2.1" || svc.Address != "127.0.0.1" {
		t.Fatalf("registration: %+v %v", svc, err)
	}
	consultest.WaitFor(t, 10*time.Second, "the edge's check to pass", func() bool {
		checks, _, err := agent.Client.Health().Checks("edge", nil)
		return err == nil && len(checks) == 1 && checks[0].Status == api.HealthPassing
	})
}

func TestHealthzFailsUntilFirstSync(t *testing.T) {
	// No agent listens at this address: the edge never syncs.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	cfg := DefaultConfig()
	cfg.Consul.Address, cfg.Pod, cfg.HTTP, cfg.Admin, cfg.PublicIP = addr, "pod-1", "127.0.0.1:0", "127.0.0.1:0", "192.0.2.1"
	cfg.DrainDelay = 0
	e, err := New(cfg, Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() { cancel(); <-done }()
	var resp *http.Response
	consultest.WaitFor(t, 5*time.Second, "the admin listener", func() bool {
		resp, err = http.Get("http://" + e.AdminAddr().String() + "/healthz")
		return err == nil
	})
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || string(b) != "waiting for the first consul sync\n" {
		t.Fatalf("/healthz before any sync: %d %q", resp.StatusCode, b)
	}
	// Traffic meanwhile gets an answer, not a hang.
	if code, _, _ := do(t, client(t), "GET", e.HTTPAddr().String(), "acme.example.test", "/", nil, nil); code != 404 {
		t.Fatalf("request before the first sync: %d", code)
	}
}
