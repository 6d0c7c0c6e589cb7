package leader

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"
	"github.com/podedge/podedge/dnsd"
	"github.com/podedge/podedge/edge"
	"github.com/podedge/podedge/internal/consultest"
	"github.com/podedge/podedge/internal/retry"
)

// host is one machine of a pod as the cluster tests simulate it: a Consul
// client agent with, beside it, a leader replica, an edge and dnsd, each
// talking to that agent only.
type host struct {
	agent   *consultest.Agent
	replica *replica
	edge    *edge.Edge
	dns     *dnsd.Server
	ip      string // the edge's public IP, which DNS hands out
}

// startHost runs a replica, an edge of pod and dnsd against agent.
func startHost(t *testing.T, agent *consultest.Agent, pod, publicIP string) *host {
	t.Helper()
	h := &host{agent: agent, ip: publicIP}
	h.replica = startReplica(t, agent)
	h.edge = startEdge(t, agent, pod, publicIP)
	h.dns = startDNS(t, agent)
	return h
}

// startEdge runs an edge of pod in this process, registered through agent.
func startEdge(t *testing.T, agent *consultest.Agent, pod, publicIP string) *edge.Edge {
	t.Helper()
	cfg := edge.DefaultConfig()
	cfg.Consul.Address = agent.HTTPAddr
	cfg.Pod, cfg.PublicIP = pod, publicIP
	cfg.HTTP, cfg.Admin = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Register.CheckInterval = time.Second
	cfg.DrainDelay, cfg.ShutdownTimeout = 0, 5*time.Second
	cfg.AccessLog.Enabled = false
	e, err := edge.New(cfg, edge.Options{Logger: testLogger(t), Consul: agent.Client})
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
			t.Errorf("edge: %v", err)
		}
	})
	select {
	case <-e.Router().Ready():
	case <-time.After(15 * time.Second):
		t.Fatal("the edge did not sync with consul within 15s")
	}
	return e
}

// startDNS runs dnsd in this process against agent.
func startDNS(t *testing.T, agent *consultest.Agent) *dnsd.Server {
	t.Helper()
	cfg := dnsd.DefaultConfig()
	cfg.Consul.Address = agent.HTTPAddr
	cfg.Listen, cfg.Admin = "127.0.0.1:0", "127.0.0.1:0"
	cfg.UDPSockets = 1
	srv, err := dnsd.New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, agent.Client) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("dnsd: %v", err)
		}
	})
	select {
	case <-srv.Router().Ready():
	case <-time.After(15 * time.Second):
		t.Fatal("dnsd did not sync with consul within 15s")
	}
	return srv
}

// appServer is an app server answering 200 "ok".
func appServer(t *testing.T) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(s.Close)
	return s
}

// failures counts what went wrong in a stream of requests and keeps the
// first few for the report.
type failures struct {
	ok    atomic.Int64
	mu    sync.Mutex
	n     int
	first []string
}

func (f *failures) add(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	if len(f.first) < 5 {
		f.first = append(f.first, time.Now().Format("15:04:05.000")+" "+fmt.Sprintf(format, args...))
	}
}

func (f *failures) count() (int, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n, slices.Clone(f.first)
}

// tryGetEdge sends one GET / for host through the host's edge.
func tryGetEdge(h *host, hostname string) (int, string, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+h.edge.HTTPAddr().String()+"/", nil)
	if err != nil {
		return 0, "", err
	}
	req.Host = hostname
	resp, err := pollClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// getLoop sends GET / for host to the edge every interval until ctx ends;
// anything but 200 "ok" is a failure.
func getLoop(ctx context.Context, e *edge.Edge, host string, every time.Duration, f *failures) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	defer c.CloseIdleConnections()
	url := "http://" + e.HTTPAddr().String() + "/"
	for tick := time.NewTicker(every); ctx.Err() == nil; <-tick.C {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Host = host
		resp, err := c.Do(req)
		if err != nil {
			f.add("GET %s: %v", host, err)
			continue
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || string(body) != "ok" {
			f.add("GET %s: %d %q %v", host, resp.StatusCode, body, err)
			continue
		}
		f.ok.Add(1)
	}
}

// dnsLoop asks dnsd for the A records of each name in turn, over UDP, every
// interval until ctx ends. An answer is good when it is NOERROR and holds
// at least one address, every one of them in valid.
func dnsLoop(ctx context.Context, srv *dnsd.Server, names []string, valid []string, every time.Duration, f *failures) {
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
	for i, tick := 0, time.NewTicker(every); ctx.Err() == nil; i, _ = i+1, <-tick.C {
		name := names[i%len(names)]
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		r, _, err := c.Exchange(m, srv.Addr())
		if err != nil {
			f.add("%s: %v", name, err)
			continue
		}
		var got []string
		for _, rr := range r.Answer {
			if a, ok := rr.(*dns.A); ok {
				got = append(got, a.A.String())
			}
		}
		bad := r.Rcode != dns.RcodeSuccess || len(got) == 0
		for _, ip := range got {
			bad = bad || !slices.Contains(valid, ip)
		}
		if bad {
			f.add("%s: %s %v", name, dns.RcodeToString[r.Rcode], got)
			continue
		}
		f.ok.Add(1)
	}
}

// answerHolds reports whether dnsd now answers name with every one of ips.
func answerHolds(srv *dnsd.Server, name string, ips ...string) bool {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	r, _, err := (&dns.Client{Net: "udp", Timeout: time.Second}).Exchange(m, srv.Addr())
	if err != nil {
		return false
	}
	var got []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			got = append(got, a.A.String())
		}
	}
	for _, ip := range ips {
		if !slices.Contains(got, ip) {
			return false
		}
	}
	return true
}

// write is one sign-up that succeeded: when it was sent and answered.
type write struct{ sent, answered time.Time }

// signups signs tenants up without pause through the replicas in turn,
// with several clients at once, as the platform's sign-up page would. A
// sign-up whose answer is not 201 (503, or no answer) is retried under the
// same name until it is answered 201, or 409 because an earlier attempt
// committed although its answer said otherwise. Every client waits for its
// answer well past the replicas' write_timeout, so that no answer is lost
// on the client's side.
type signups struct {
	t    *testing.T
	urls []string
	at   [2]float64
	// pause is the wait after a success; after a failure it is retryWait.
	pause, retryWait time.Duration

	mu       sync.Mutex
	placed   map[string]string // name → pod answered with 201
	late     map[string]bool   // answered 409 on a retry: an earlier attempt committed
	inFlight map[string]bool   // the names being tried when the run ended
	writes   []write
}

func newSignups(t *testing.T, urls []string, at [2]float64) *signups {
	return &signups{t: t, urls: urls, at: at, pause: 100 * time.Millisecond, retryWait: 10 * time.Millisecond,
		placed: map[string]string{}, late: map[string]bool{}, inFlight: map[string]bool{}}
}

var signupClient = &http.Client{Timeout: 30 * time.Second}

// run signs up tenants named <prefix>-<n> until ctx ends.
func (s *signups) run(ctx context.Context, prefix string) {
	for i := 0; ctx.Err() == nil; i++ {
		name := fmt.Sprintf("%s-%05d", prefix, i)
		s.mu.Lock()
		s.inFlight[name] = true
		s.mu.Unlock()
		for try := 0; ; try++ {
			sent := time.Now()
			code, out, err := s.post(ctx, s.urls[(i+try)%len(s.urls)], name)
			answered := time.Now()
			if ctx.Err() != nil {
				return // the name stays in flight: it may have committed
			}
			if err == nil && (code == 201 || code == 409 && try > 0) {
				s.mu.Lock()
				if code == 201 {
					s.placed[name], _ = out["pod"].(string)
				} else {
					s.late[name] = true
				}
				s.writes = append(s.writes, write{sent, answered})
				delete(s.inFlight, name)
				s.mu.Unlock()
				retry.Sleep(ctx, s.pause)
				break
			}
			if err == nil && code != 503 {
				s.t.Errorf("sign-up %s: unexpected %d %v", name, code, out)
				return
			}
			retry.Sleep(ctx, s.retryWait)
		}
	}
}

func (s *signups) post(ctx context.Context, base, name string) (int, map[string]any, error) {
	req, err := newRequest("POST", base+"/v1/tenants", fmt.Sprintf(`{"name":%q,"lat":%v,"lon":%v}`, name, s.at[0], s.at[1]))
	if err != nil {
		return 0, nil, err
	}
	return doRequestWith(signupClient, req.WithContext(ctx))
}

// firstAfter is when the first sign-up sent after t was answered with
// success, or the zero time if none was yet.
func (s *signups) firstAfter(t time.Time) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	var first time.Time
	for _, w := range s.writes {
		if w.sent.After(t) && (first.IsZero() || w.answered.Before(first)) {
			first = w.answered
		}
	}
	return first
}

// done counts the sign-ups that succeeded.
func (s *signups) done() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.writes)
}

// check fails unless the tenants stored under agent are exactly those
// acknowledged: every sign-up answered 201 stored once, in the pod it was
// answered with; every one answered 409 on a retry stored; nothing stored
// that was never acknowledged, but for the sign-ups cut off when the run
// ended.
func (s *signups) check(t *testing.T, agent *consultest.Agent) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	checkStored(t, agent, s.placed, s.late, s.inFlight)
}

// consulAnswers reports whether agent reaches a Consul leader, with a
// bound, for the waits of the cluster tests.
func consulAnswers(agent *consultest.Agent) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l, err := agent.Client.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
	return err == nil && l != ""
}
