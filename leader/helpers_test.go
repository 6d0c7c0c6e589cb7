package leader

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/consultest"
)

// Real cities, for placement.
var (
	dublin    = [2]float64{53.3498, -6.2603}
	london    = [2]float64{51.5074, -0.1278}
	frankfurt = [2]float64{50.1109, 8.6821}
	newYork   = [2]float64{40.7128, -74.0060}
	sydney    = [2]float64{-33.8688, 151.2093}
)

// logBuffer collects a test's logs and prints them only if it fails.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func testLogger(t testing.TB) *slog.Logger {
	buf := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			buf.mu.Lock()
			t.Logf("replica logs:\n%s", buf.b.String())
			buf.mu.Unlock()
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// replica is a leader replica running in the test process.
type replica struct {
	srv  *Server
	addr string
	url  string
	stop func()
}

// startReplica runs a replica against agent on a free loopback port.
func startReplica(t testing.TB, agent *consultest.Agent, tweak ...func(*Config)) *replica {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Consul.Address = agent.HTTPAddr
	// A loaded machine, the race detector: views may take longer than the
	// default 2s to reach a write.
	cfg.ReadWait = 10 * time.Second
	for _, f := range tweak {
		f(&cfg)
	}
	srv, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ctx, ln); err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	r := &replica{srv: srv, addr: ln.Addr().String(), url: "http://" + ln.Addr().String()}
	var once sync.Once
	r.stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(r.stop)
	consultest.WaitFor(t, 10*time.Second, "replica's first view", func() bool {
		return srv.router.Snapshot().Synced
	})
	return r
}

// startCluster runs n replicas and waits until one leads and all know it.
func startCluster(t testing.TB, agent *consultest.Agent, n int, tweak ...func(*Config)) []*replica {
	t.Helper()
	rs := make([]*replica, n)
	for i := range rs {
		rs[i] = startReplica(t, agent, tweak...)
	}
	waitLeader(t, rs)
	return rs
}

// waitLeader waits until exactly one replica leads and every replica names
// it, and returns it.
func waitLeader(t testing.TB, rs []*replica) *replica {
	t.Helper()
	var lead *replica
	consultest.WaitFor(t, 15*time.Second, "one leader known to every replica", func() bool {
		lead = nil
		for _, r := range rs {
			if st := r.srv.elector.State(); st.IsLeader {
				if lead != nil {
					return false
				}
				lead = r
			}
		}
		if lead == nil {
			return false
		}
		for _, r := range rs {
			if r.srv.elector.State().Leader != lead.addr {
				return false
			}
		}
		return true
	})
	return lead
}

// standby returns a replica that is not the leader.
func standby(t testing.TB, rs []*replica) *replica {
	t.Helper()
	for _, r := range rs {
		if !r.srv.elector.State().IsLeader {
			return r
		}
	}
	t.Fatal("no standby")
	return nil
}

var httpClient = &http.Client{Timeout: 30 * time.Second}

// call sends a request with a JSON (or raw string) body and returns the
// status, the decoded JSON answer (nil when none) and the raw answer.
func call(t testing.TB, method, url string, body any) (int, map[string]any, string) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("%s %s: %d answer is not a JSON object: %q", method, url, resp.StatusCode, raw)
		}
	}
	return resp.StatusCode, out, string(raw)
}

// expect calls and fails unless the status is code; for errors it checks
// the {"error": ...} shape and that the message holds want.
func expect(t testing.TB, code int, method, url string, body any, want string) map[string]any {
	t.Helper()
	got, out, raw := call(t, method, url, body)
	if got != code {
		t.Fatalf("%s %s: got %d %s, want %d", method, url, got, raw, code)
	}
	if code >= 400 {
		msg, ok := out["error"].(string)
		if !ok || len(out) != 1 {
			t.Fatalf("%s %s: error answer %s is not {\"error\": \"...\"}", method, url, raw)
		}
		if !strings.Contains(msg, want) {
			t.Fatalf("%s %s: error %q does not mention %q", method, url, msg, want)
		}
	}
	return out
}

func signupBody(name string, at [2]float64, domains ...string) map[string]any {
	b := map[string]any{"name": name, "lat": at[0], "lon": at[1]}
	if len(domains) > 0 {
		b["domains"] = domains
	}
	return b
}

func podBody(at [2]float64, capacity int) map[string]any {
	return map[string]any{"region": "test", "lat": at[0], "lon": at[1], "capacity": capacity}
}

// kv reads every key under podedge/ into a map of strings.
func kv(t testing.TB, agent *consultest.Agent) map[string]string {
	t.Helper()
	pairs, _, err := agent.Client.KV().List("podedge/", &api.QueryOptions{RequireConsistent: true})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, p := range pairs {
		out[p.Key] = string(p.Value)
	}
	return out
}

// tenantsByPod counts the tenants stored in KV per pod.
func tenantsByPod(t testing.TB, agent *consultest.Agent) map[string]int {
	t.Helper()
	out := map[string]int{}
	for k, v := range kv(t, agent) {
		if !strings.HasPrefix(k, "podedge/tenants/") {
			continue
		}
		var tn struct{ Pod string }
		if err := json.Unmarshal([]byte(v), &tn); err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		out[tn.Pod]++
	}
	return out
}

// checkSeats fails unless every pod's seat count equals its tenants in KV
// and no pod holds more tenants than its capacity.
func checkSeats(t testing.TB, agent *consultest.Agent) {
	t.Helper()
	all := kv(t, agent)
	counts := tenantsByPod(t, agent)
	for k, v := range all {
		pod, ok := strings.CutPrefix(k, "podedge/pods/")
		if !ok {
			continue
		}
		var p struct{ Capacity int }
		if err := json.Unmarshal([]byte(v), &p); err != nil {
			t.Fatal(err)
		}
		if counts[pod] > p.Capacity {
			t.Errorf("pod %s holds %d tenants, over its capacity %d", pod, counts[pod], p.Capacity)
		}
		seats := all["podedge/leader/seats/"+pod]
		if seats == "" {
			seats = "0"
		}
		if seats != strconv.Itoa(counts[pod]) {
			t.Errorf("pod %s: seat count %s, but %d tenants in KV", pod, seats, counts[pod])
		}
	}
}

// edges registers one passing edge in each pod.
func edges(t testing.TB, agent *consultest.Agent, pods ...string) {
	t.Helper()
	for i, p := range pods {
		agent.Edge(t, "edge-"+p, p, "127.0.0.1", 8080+i, fmt.Sprintf("192.0.2.%d", i+1), api.HealthPassing)
	}
}

// waitEdges waits until every replica sees the passing edges of pod.
func waitEdges(t testing.TB, rs []*replica, pod string, n int) {
	t.Helper()
	consultest.WaitFor(t, 10*time.Second, fmt.Sprintf("%d passing edges in %s on every replica", n, pod), func() bool {
		for _, r := range rs {
			p := r.srv.router.Snapshot().Pod(pod)
			if (p == nil && n != 0) || (p != nil && len(p.PassingEdges) != n) {
				return false
			}
		}
		return true
	})
}

var pollClient = &http.Client{Timeout: 2 * time.Second}

func newRequest(method, url, body string) (*http.Request, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	return http.NewRequest(method, url, rd)
}

// doRequest sends req with a short timeout and decodes a JSON object
// answer, if any.
func doRequest(req *http.Request) (int, map[string]any, error) { return doRequestWith(pollClient, req) }

// doRequestWith is doRequest through client c.
func doRequestWith(c *http.Client, req *http.Request) (int, map[string]any, error) {
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, nil, err
	}
	var out map[string]any
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &out); err != nil {
			return resp.StatusCode, nil, fmt.Errorf("answer is not a JSON object: %q", raw)
		}
	}
	return resp.StatusCode, out, nil
}

// checkStored fails unless the tenants stored in KV are exactly those a
// client was told of: each answered 201 is stored in the pod the answer
// named; each answered 409 on a retry (an earlier attempt committed, its
// answer lost) is stored; and nothing else is, but for the sign-ups still
// in flight when the client stopped, which may or may not have committed.
func checkStored(t testing.TB, agent *consultest.Agent, placed map[string]string, late, inFlight map[string]bool) {
	t.Helper()
	stored := map[string]string{}
	for k, v := range kv(t, agent) {
		name, ok := strings.CutPrefix(k, "podedge/tenants/")
		if !ok {
			continue
		}
		var tn struct{ Pod string }
		if err := json.Unmarshal([]byte(v), &tn); err != nil {
			t.Fatal(err)
		}
		stored[name] = tn.Pod
	}
	for name, pod := range placed {
		if stored[name] != pod {
			t.Errorf("%s was answered 201 in %s but is stored in %q", name, pod, stored[name])
		}
	}
	for name := range late {
		if stored[name] == "" {
			t.Errorf("%s was answered 409 on a retry but is not stored", name)
		}
	}
	for name := range stored {
		if _, ok := placed[name]; !ok && !late[name] && !inFlight[name] {
			t.Errorf("%s is stored but was never acknowledged", name)
		}
	}
}
