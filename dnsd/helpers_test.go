package dnsd

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"
	"github.com/podedge/podedge/internal/consultest"
)

// testServer is a dnsd Server on free loopback ports, fed by a real Consul
// agent (or by hand when agent is nil).
type testServer struct {
	*Server
	agent *consultest.Agent
	addr  string
	admin string
}

// testConfig is the configuration of the tests: the default zone, two name
// servers in the zone with glue, one outside, two mail exchangers, NSID.
func testConfig(agent *consultest.Agent) Config {
	cfg := DefaultConfig()
	cfg.Listen, cfg.Admin = "127.0.0.1:0", "127.0.0.1:0"
	cfg.NS = []NameServer{
		{Name: "ns1", Addresses: []string{"192.0.2.53", "2001:db8::53"}},
		{Name: "ns2.example.test.", Addresses: []string{"198.51.100.53"}},
		{Name: "ns.provider.example.net."},
	}
	cfg.MX = []MailExchanger{{Priority: 10, Host: "mx1.mail.example.net."}, {Priority: 20, Host: "mx2.mail.example.net."}}
	cfg.NSID = "dnsd-test"
	if agent != nil {
		cfg.Consul.Address = agent.HTTPAddr
	}
	return cfg
}

// startServer runs a Server with cfg (testConfig when mutate is nil is
// enough) until the test ends. With an agent it follows Consul and waits
// for the first snapshot.
func startServer(t *testing.T, agent *consultest.Agent, mutate func(*Config)) *testServer {
	t.Helper()
	cfg := testConfig(agent)
	if mutate != nil {
		mutate(&cfg)
	}
	return startServerConfig(t, agent, cfg, false)
}

func startServerConfig(t *testing.T, agent *consultest.Agent, cfg Config, portableUDP bool) *testServer {
	t.Helper()
	srv, err := New(cfg, slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatal(err)
	}
	srv.portableUDP = portableUDP
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var client *api.Client
	if agent != nil {
		client = agent.Client
	}
	go func() { done <- srv.Run(ctx, client) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return 10s after its context ended")
		}
	})
	ts := &testServer{Server: srv, agent: agent, addr: srv.Addr(), admin: srv.AdminAddr()}
	if agent != nil {
		select {
		case <-srv.Router().Ready():
		case <-time.After(30 * time.Second):
			t.Fatal("no snapshot from consul after 30s")
		}
	}
	return ts
}

// testWriter sends a server's logs to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// ask sends m over network ("udp" or "tcp") and returns the answer.
func (ts *testServer) ask(t testing.TB, network string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, ts.addr)
	if err != nil {
		t.Fatalf("%s %s %s: %v", network, m.Question[0].Name, dns.TypeToString[m.Question[0].Qtype], err)
	}
	return r
}

// query asks name/qtype over network with EDNS (buffer 1232).
func (ts *testServer) query(t testing.TB, network, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(1232, false)
	return ts.ask(t, network, m)
}

// addrs returns the A and AAAA addresses of the answer section, in order.
func addrs(r *dns.Msg) []string {
	var out []string
	for _, rr := range r.Answer {
		switch v := rr.(type) {
		case *dns.A:
			out = append(out, v.A.String())
		case *dns.AAAA:
			out = append(out, v.AAAA.String())
		}
	}
	return out
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// edge registers an edge of pod in Consul with public IP ip, passing or
// critical.
func edge(t testing.TB, agent *consultest.Agent, id, pod, ip, status string) {
	t.Helper()
	agent.Edge(t, id, pod, "127.0.0.1", 8080, ip, status)
}

// putPod and putTenant write the KV values of a pod and a tenant.
func putPod(t testing.TB, agent *consultest.Agent, pod string) {
	t.Helper()
	agent.Put(t, "podedge/pods/"+pod, fmt.Sprintf(`{"name":%q,"region":"eu","lat":50,"lon":4,"capacity":100}`, pod))
}

func putTenant(t testing.TB, agent *consultest.Agent, tenant, pod string) {
	t.Helper()
	agent.Put(t, "podedge/tenants/"+tenant, fmt.Sprintf(`{"name":%q,"pod":%q,"domains":[],"created":"2026-01-01T00:00:00Z"}`, tenant, pod))
}

// ips returns n addresses 192.0.2.first ... in order.
func ips(first, n int) []string {
	var out []string
	for i := 0; i < n; i++ {
		out = append(out, fmt.Sprintf("192.0.2.%d", first+i))
	}
	return out
}

// metric returns the value of the sample of /metrics whose line starts
// with series ("dnsd_truncated_total", `dnsd_passing_edges{pod="pod-1"}`),
// or -1 when there is none.
func (ts *testServer) metric(t testing.TB, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + ts.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			var v float64
			fmt.Sscan(rest, &v)
			return v
		}
	}
	return -1
}

// rawExchange sends the raw packets over one UDP socket, then reads one
// answer. The tests send packets that must not be answered followed by a
// good query, and check that the answer read is the good query's: the
// others got none, which needs no waiting.
func (ts *testServer) rawExchange(t testing.TB, packets ...[]byte) *dns.Msg {
	t.Helper()
	c, err := net.Dial("udp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, p := range packets {
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 65535)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	r := new(dns.Msg)
	if err := r.Unpack(buf[:n]); err != nil {
		t.Fatalf("answer does not parse: %v", err)
	}
	return r
}

func pack(t testing.TB, m *dns.Msg) []byte {
	t.Helper()
	p, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

type healthResult struct {
	health
	code int
}

// healthz fetches /healthz.
func (ts *testServer) healthz(t testing.TB) healthResult {
	t.Helper()
	resp, err := http.Get("http://" + ts.admin + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h healthResult
	h.code = resp.StatusCode
	if err := json.NewDecoder(resp.Body).Decode(&h.health); err != nil {
		t.Fatalf("healthz body: %v", err)
	}
	return h
}
