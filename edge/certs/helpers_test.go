package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"
	"github.com/podedge/podedge/dnsd"
	"github.com/podedge/podedge/edge"
	"github.com/podedge/podedge/internal/consultest"
	"github.com/prometheus/client_golang/prometheus"
)

// The zone of the tests and the loopback addresses edges listen on: one
// each, so that every edge has Pebble's two ports to itself.
const zone = "example.test."

var edgeIPs = []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}

// platform is podedge as in production, on one machine: a real Consul
// agent, dnsd serving the zone from it, Pebble resolving names through
// that dnsd (directly, or through a resolver that also knows the custom
// domains), an app server of pod-1 (tenant acme lives there, with the
// custom domain shop.acme.com), and edges of pod-1 started by startEdge.
type platform struct {
	t        *testing.T
	agent    *consultest.Agent
	dnsd     *dnsd.Server
	dnsAddr  string
	resolver *resolver // nil when Pebble asks dnsd itself
	pebble   *pebble
	app      *httptest.Server
	httpPort int // every edge's plain-HTTP port: Pebble's httpPort
	tlsPort  int // every edge's HTTPS port: Pebble's tlsPort, unless deadTLS
}

// shopHost is tenant acme's custom domain: its certificate is ordered on
// demand (TLS-ALPN-01, HTTP-01), not the zone's.
const shopHost = "shop.acme.com"

// newPlatform starts everything but the edges, with Pebble resolving
// through a resolver in front of dnsd that points shop.acme.com at pod-1.
// With deadTLS, Pebble's tlsPort is one nothing listens on, so that
// TLS-ALPN-01 fails.
func newPlatform(t *testing.T, deadTLS bool) *platform {
	return startPlatform(t, deadTLS, true)
}

// newZonePlatform starts everything but the edges, with Pebble asking
// dnsd itself: its validations of the zone's DNS-01 go straight to dnsd.
func newZonePlatform(t *testing.T) *platform { return startPlatform(t, false, false) }

func startPlatform(t *testing.T, deadTLS, viaResolver bool) *platform {
	t.Helper()
	agent := consultest.Start(t)
	putPod(t, agent, "pod-1")
	putTenant(t, agent, "acme", "pod-1", shopHost)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "app of pod-1 for %s%s", r.Host, r.URL.Path)
	}))
	t.Cleanup(app.Close)
	host, port, _ := net.SplitHostPort(app.Listener.Addr().String())
	pn, _ := strconv.Atoi(port)
	agent.App(t, "app-1", "pod-1", host, pn, api.HealthPassing)

	dcfg := dnsd.DefaultConfig()
	dcfg.Listen, dcfg.Admin = "127.0.0.1:0", "127.0.0.1:0"
	dcfg.Consul.Address = agent.HTTPAddr
	srv, err := dnsd.New(dcfg, testLogger(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Run(ctx, agent.Client); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	ports := sharedPorts(t, edgeIPs, 3)
	p := &platform{t: t, agent: agent, dnsd: srv, dnsAddr: srv.Addr(), app: app, httpPort: ports[0], tlsPort: ports[1]}
	pebbleTLS := p.tlsPort
	if deadTLS {
		pebbleTLS = ports[2]
	}
	pebbleDNS := p.dnsAddr
	if viaResolver {
		p.resolver = startResolver(t, p.dnsAddr)
		p.resolver.point(shopHost, "pod-1")
		pebbleDNS = p.resolver.addr
	}
	p.pebble = startPebble(t, pebbleDNS, p.httpPort, pebbleTLS)
	return p
}

// testEdge is an edge of pod-1 with its certificate Manager.
type testEdge struct {
	ip        string
	e         *edge.Edge
	m         *Manager
	logs      *consultest.SyncBuffer // the Manager's log, JSON lines
	httpAddr  string
	httpsAddr string
}

// startEdge runs an edge of pod-1 on ip, with TLS from a Manager ordering
// from the platform's Pebble, until the test ends; mutate may change the
// Manager's configuration.
func (p *platform) startEdge(ip string, mutate func(*Config)) *testEdge {
	t := p.t
	t.Helper()
	te := &testEdge{ip: ip, logs: &consultest.SyncBuffer{}}
	mc := Config{
		Consul:    p.agent.Client,
		Pod:       "pod-1",
		Holder:    "edge-" + ip,
		Directory: p.pebble.dir,
		CAFile:    p.pebble.caFile,
		// The zone's tokens must be served by this dnsd before Pebble is
		// told to look.
		DNS01Nameservers: []string{p.dnsAddr},
		Redirect:         true,
		RedirectPort:     p.tlsPort,
		// Generous, for a loaded machine under -race: the first request
		// must succeed, not merely start the issuance.
		HandshakeTimeout: 45 * time.Second,
		Logger:           testLogger(t, te.logs),
	}
	if mutate != nil {
		mutate(&mc)
	}
	m, err := New(mc)
	if err != nil {
		t.Fatal(err)
	}
	cfg := edge.DefaultConfig()
	cfg.Consul.Address = p.agent.HTTPAddr
	cfg.Pod = "pod-1"
	cfg.HTTP = net.JoinHostPort(ip, strconv.Itoa(p.httpPort))
	cfg.HTTPS = net.JoinHostPort(ip, strconv.Itoa(p.tlsPort))
	cfg.Admin = net.JoinHostPort(ip, "0")
	cfg.PublicIP = ip
	cfg.Register.CheckInterval = time.Second
	cfg.DrainDelay = 0
	cfg.ShutdownTimeout = 5 * time.Second
	cfg.AccessLog.Enabled = false
	cfg.Timeouts.ClientHeader = time.Minute // bounds the handshake, issuance included
	e, err := edge.New(cfg, edge.Options{
		Logger:    testLogger(t, nil),
		Consul:    p.agent.Client,
		TLSConfig: m.TLSConfig(),
		HTTPHook:  m.HTTPHook,
	})
	if err != nil {
		t.Fatal(err)
	}
	m.Follow(e.Router())
	if err := m.Register(e.Proxy().Metrics.Registry); err != nil {
		t.Fatal(err)
	}
	if err := e.Listen(); err != nil {
		t.Fatal(err)
	}
	te.e, te.m = e, m
	te.httpAddr, te.httpsAddr = e.HTTPAddr().String(), e.HTTPSAddr().String()
	ctx, cancel := context.WithCancel(context.Background())
	edgeDone, certsDone := make(chan error, 1), make(chan error, 1)
	go func() { edgeDone <- e.Run(ctx) }()
	go func() { certsDone <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		for _, ch := range []chan error{edgeDone, certsDone} {
			if err := <-ch; err != nil {
				t.Errorf("%s: run: %v", ip, err)
			}
		}
		if t.Failed() {
			t.Logf("certificate log of %s:\n%s", ip, te.logs.String())
		}
	})
	select {
	case <-e.Router().Ready():
	case <-time.After(20 * time.Second):
		t.Fatalf("edge %s did not sync with consul within 20s", ip)
	}
	return te
}

// waitDNS waits until dnsd answers name's A query with exactly ips: the
// edges are registered and passing, and Pebble will find them.
func (p *platform) waitDNS(name string, ips ...string) {
	p.t.Helper()
	want := slices.Clone(ips)
	slices.Sort(want)
	c := &dns.Client{Timeout: 2 * time.Second}
	consultest.WaitFor(p.t, 30*time.Second, fmt.Sprintf("dnsd to answer %s with %v", name, want), func() bool {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), dns.TypeA)
		r, _, err := c.Exchange(m, p.dnsAddr)
		if err != nil {
			return false
		}
		var got []string
		for _, rr := range r.Answer {
			if a, ok := rr.(*dns.A); ok {
				got = append(got, a.A.String())
			}
		}
		slices.Sort(got)
		return slices.Equal(got, want)
	})
}

// waitZone waits until every edge serves the zone's certificate, and
// returns it. Every edge orders or loads it as it starts.
func (p *platform) waitZone(edges ...*testEdge) *tls.Certificate {
	p.t.Helper()
	var cert *tls.Certificate
	consultest.WaitFor(p.t, 60*time.Second, "every edge to hold the zone's certificate", func() bool {
		cert = nil
		for _, te := range edges {
			e := te.m.mem.get("*.example.test")
			if e == nil || cert != nil && !bytes.Equal(e.cert.Leaf.Raw, cert.Leaf.Raw) {
				return false
			}
			cert = e.cert
		}
		return true
	})
	return cert
}

// waitKnown waits until every edge routes name.
func (p *platform) waitKnown(name string, edges ...*testEdge) {
	p.t.Helper()
	consultest.WaitFor(p.t, 15*time.Second, name+" in every edge's snapshot", func() bool {
		for _, te := range edges {
			if _, ok := te.e.Router().Snapshot().LookupString(name); !ok {
				return false
			}
		}
		return true
	})
}

// get sends GET https://host/path to te, trusting Pebble's root only.
func (p *platform) get(te *testEdge, host, path string) (*http.Response, string, error) {
	return p.getWith(te, &tls.Config{RootCAs: p.pebble.roots}, host, path)
}

func (p *platform) getWith(te *testEdge, conf *tls.Config, host, path string) (*http.Response, string, error) {
	conf = conf.Clone()
	conf.ServerName = host
	tr := &http.Transport{
		TLSClientConfig:   conf,
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, te.httpsAddr)
		},
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: time.Minute}
	resp, err := c.Get("https://" + host + path)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}

// handshake opens a TLS connection to te for serverName and returns the
// certificate it serves, or why it did not.
func (p *platform) handshake(te *testEdge, serverName string) (*tls.ConnectionState, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Minute}, "tcp", te.httpsAddr,
		&tls.Config{ServerName: serverName, RootCAs: p.pebble.roots})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	cs := conn.ConnectionState()
	return &cs, nil
}

// sharedPorts returns n distinct TCP ports free on every one of ips.
func sharedPorts(t *testing.T, ips []string, n int) []int {
	t.Helper()
	var out []int
	for tries := 0; len(out) < n; tries++ {
		if tries > 100 {
			t.Fatalf("no port free on all of %v", ips)
		}
		l, err := net.Listen("tcp", net.JoinHostPort(ips[0], "0"))
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		ls := []net.Listener{l}
		ok := !slices.Contains(out, port)
		for _, ip := range ips[1:] {
			if !ok {
				break
			}
			l2, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
			if err != nil {
				ok = false
				break
			}
			ls = append(ls, l2)
		}
		for _, l := range ls {
			l.Close()
		}
		if ok {
			out = append(out, port)
		}
	}
	return out
}

// testLogger logs JSON into buf (when not nil), and warnings and errors to
// stderr, so that a failing test shows why; everything with -v.
func testLogger(t *testing.T, buf io.Writer) *slog.Logger {
	level := slog.LevelWarn
	if testing.Verbose() {
		level = slog.LevelDebug
	}
	var w io.Writer = os.Stderr
	if buf != nil {
		w = io.MultiWriter(buf, levelWriter{os.Stderr, testing.Verbose()})
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// levelWriter passes lines through only when on.
type levelWriter struct {
	w  io.Writer
	on bool
}

func (l levelWriter) Write(p []byte) (int, error) {
	if l.on {
		return l.w.Write(p)
	}
	return len(p), nil
}

func putPod(t *testing.T, agent *consultest.Agent, pod string) {
	t.Helper()
	agent.Put(t, "podedge/pods/"+pod, fmt.Sprintf(`{"name":%q,"region":"eu","lat":50,"lon":4,"capacity":100}`, pod))
}

func putTenant(t *testing.T, agent *consultest.Agent, tenant, pod string, domains ...string) {
	t.Helper()
	if domains == nil {
		domains = []string{}
	}
	d, _ := json.Marshal(domains)
	agent.Put(t, "podedge/tenants/"+tenant, fmt.Sprintf(`{"name":%q,"pod":%q,"domains":%s,"created":"2026-01-01T00:00:00Z"}`, tenant, pod, d))
}

// metric sums the samples of a metric of reg whose labels include labels.
func metric(t *testing.T, reg prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// reg is te's metrics registry.
func (te *testEdge) reg() prometheus.Gatherer { return te.e.Proxy().Metrics.Registry }
