package certs

import (
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/router"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
	"golang.org/x/crypto/acme"
)

// newUnitManager is a Manager whose Consul is unreachable (nothing listens
// on 127.0.0.1:1), serving a snapshot built in memory: tenant acme of
// pod-1 with custom domain shop.acme.com, and an edge of pod-1 at
// 192.0.2.10.
func newUnitManager(t testing.TB, mutate func(*Config)) (*Manager, *prometheus.Registry) {
	t.Helper()
	client, err := api.NewClient(&api.Config{Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Consul: client, Redirect: true, RedirectPort: 8443, HandshakeTimeout: 2 * time.Second, Logger: discardLogger()}
	if mutate != nil {
		mutate(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if err := m.Register(reg); err != nil {
		t.Fatal(err)
	}
	r, err := router.New(router.Config{Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	m.Follow(r)
	r.Publish(router.State{
		Pods:    []router.Pod{{Name: "pod-1", Capacity: 10}},
		Tenants: []router.Tenant{{Name: "acme", Pod: "pod-1", Domains: []string{"shop.acme.com"}}},
		Edges: []router.EdgeEndpoint{{
			Endpoint: router.Endpoint{ID: "e1", Node: "n1", Pod: "pod-1", Addr: "192.0.2.10:80", Weight: 1, Passing: true},
			PublicIP: mustAddr("198.51.100.10"),
		}},
	})
	t.Cleanup(m.cancel)
	return m, reg
}

// hold puts a certificate for name, valid now, in m's memory.
func hold(t testing.TB, m *Manager, name string) *tls.Certificate {
	cert := selfSigned(t, name, time.Now().Add(-time.Hour), time.Now().Add(90*24*time.Hour))
	m.mem.put(newEntry(name, cert, 1, 0))
	return cert
}

// holdZone puts a zone certificate (*.example.test and example.test),
// valid now, in m's memory.
func holdZone(t testing.TB, m *Manager) *tls.Certificate {
	cert := selfSignedNames(t, []string{"*.example.test", "example.test"}, time.Now().Add(-time.Hour), time.Now().Add(90*24*time.Hour))
	m.mem.put(newEntry(m.zone.name, cert, 1, 0))
	return cert
}

func TestGetCertificate(t *testing.T) {
	m, reg := newUnitManager(t, nil)
	zoneCert := holdZone(t, m)
	shopCert := hold(t, m, "shop.acme.com")
	hello := func(name string) *tls.ClientHelloInfo { return &tls.ClientHelloInfo{ServerName: name} }

	for _, tc := range []struct {
		name string
		want *tls.Certificate
	}{
		{"acme.example.test", zoneCert},
		{"ACME.Example.TEST", zoneCert},
		{"acme.example.test.", zoneCert},
		{"shop.acme.com", shopCert},
		{"SHOP.acme.com", shopCert},
	} {
		got, err := m.getCertificate(hello(tc.name))
		if err != nil || got != tc.want {
			t.Errorf("%s: %v, want the held certificate", tc.name, err)
		}
	}
	for _, tc := range []struct {
		name, reason string
	}{
		{"nobody.example.test", reasonUnknown},
		{"a.acme.example.test", reasonUnknown},
		{strings.Repeat("a", 300), reasonUnknown},
		{"", reasonNoSNI},
		{".", reasonNoSNI},
	} {
		before := metric(t, reg, "edge_tls_handshake_failures_total", "reason", tc.reason)
		if _, err := m.getCertificate(hello(tc.name)); err == nil {
			t.Errorf("%q: got a certificate", tc.name)
		}
		if got := metric(t, reg, "edge_tls_handshake_failures_total", "reason", tc.reason) - before; got != 1 {
			t.Errorf("%q: %s failures = %v, want 1", tc.name, tc.reason, got)
		}
	}
	if n := len(m.names); n != 0 {
		t.Errorf("refused names started %d issuances", n)
	}

	// A custom domain with nothing in memory and Consul unreachable fails
	// fast, then is not retried for storeRetry.
	m.mem.drop("shop.acme.com")
	if _, err := m.getCertificate(hello("shop.acme.com")); err == nil || !strings.Contains(err.Error(), "consul") {
		t.Fatalf("with consul down: %v, want a consul error", err)
	}
	if _, err := m.getCertificate(hello("shop.acme.com")); err == nil || !strings.Contains(err.Error(), "next attempt in") {
		t.Fatalf("again with consul down: %v, want to be held off", err)
	}
	if got := metric(t, reg, "edge_tls_handshake_failures_total", "reason", reasonUnavailable); got != 2 {
		t.Errorf("unavailable failures = %v, want 2", got)
	}
	if got := metric(t, reg, "edge_tls_store_errors_total"); got != 1 {
		t.Errorf("store errors = %v, want 1 (one attempt)", got)
	}

	// Without the zone's certificate, a tenant's handshake waits for the
	// zone's, never for one of its own.
	m.mem.drop(m.zone.name)
	if _, err := m.getCertificate(hello("acme.example.test")); err == nil || !strings.Contains(err.Error(), `"*.example.test"`) {
		t.Fatalf("without the zone's certificate: %v, want the zone's to be looked for", err)
	}
	m.mu.Lock()
	_, tenant := m.names["acme.example.test"]
	_, zone := m.names["*.example.test"]
	m.mu.Unlock()
	if tenant || !zone {
		t.Errorf("issuances started: tenant's %v, zone's %v; want the zone's only", tenant, zone)
	}

	// An expired certificate is not served.
	old := selfSignedNames(t, []string{"*.example.test"}, time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour))
	m.mem.put(newEntry(m.zone.name, old, 1, 0))
	if got, _ := m.getCertificate(hello("acme.example.test")); got == old {
		t.Error("an expired certificate was served")
	}
}

func TestZoneCovers(t *testing.T) {
	z := newZoneNames("example.test.")
	for name, want := range map[string]bool{
		"example.test":        true,
		"acme.example.test":   true,
		"a-b.example.test":    true,
		"a.acme.example.test": false,
		".example.test":       false,
		"xexample.test":       false,
		"example.test.com":    false,
		"test":                false,
		"":                    false,
		"acme.example.tesT":   false, // callers lower-case first
	} {
		if got := z.covers([]byte(name)); got != want {
			t.Errorf("covers(%q) = %v, want %v", name, got, want)
		}
		if got := z.coversString(name); got != want {
			t.Errorf("coversString(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestGetCertificateChallenge(t *testing.T) {
	m, reg := newUnitManager(t, nil)
	cert := selfSigned(t, "acme.example.test", time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	data, _ := encodeCert(cert)
	m.challenges.own["acme.example.test+token"] = data
	probe := &tls.ClientHelloInfo{ServerName: "acme.example.test", SupportedProtos: []string{acme.ALPNProto}}
	got, err := m.getCertificate(probe)
	if err != nil || string(got.Certificate[0]) != string(cert.Certificate[0]) {
		t.Fatalf("tls-alpn-01 probe: %v", err)
	}
	delete(m.challenges.own, "acme.example.test+token")
	m.challenges.fallback = limiter{per: 0} // no Consul either
	if _, err := m.getCertificate(probe); err == nil {
		t.Error("a probe with no challenge in flight got a certificate")
	}
	if got := metric(t, reg, "edge_tls_handshake_failures_total", "reason", reasonChallenge); got != 1 {
		t.Errorf("challenge failures = %v, want 1", got)
	}
}

func TestTLSConfig(t *testing.T) {
	m, _ := newUnitManager(t, nil)
	c := m.TLSConfig()
	if c.MinVersion != tls.VersionTLS12 || c.MaxVersion != tls.VersionTLS13 {
		t.Errorf("versions %x-%x, want TLS 1.2-1.3", c.MinVersion, c.MaxVersion)
	}
	for _, p := range c.NextProtos {
		if p == "h2" {
			t.Error("h2 advertised; the edge speaks HTTP/1.1 only")
		}
	}
	if len(c.NextProtos) != 2 || c.NextProtos[1] != acme.ALPNProto {
		t.Errorf("NextProtos %v, want http/1.1 and acme-tls/1", c.NextProtos)
	}
	for _, s := range c.CipherSuites {
		name := tls.CipherSuiteName(s)
		if !strings.HasPrefix(name, "TLS_ECDHE_") || !(strings.Contains(name, "_GCM_") || strings.Contains(name, "CHACHA20")) {
			t.Errorf("cipher suite %s is not ECDHE with an AEAD", name)
		}
	}
}

// serve runs the hook on a request for host and uri from peer.
func serve(m *Manager, host, uri, peer string) (*fasthttp.RequestCtx, bool) {
	var req fasthttp.Request
	req.SetRequestURI(uri)
	req.Header.SetHost(host)
	ctx := &fasthttp.RequestCtx{}
	ctx.Init(&req, &net.TCPAddr{IP: net.ParseIP(peer), Port: 40000}, nil)
	return ctx, m.HTTPHook(ctx)
}

func TestHTTPHook(t *testing.T) {
	m, _ := newUnitManager(t, nil)
	m.challenges.own["tok-1+http-01"] = []byte("tok-1.thumb")
	m.challenges.fallback = limiter{per: 0}
	for _, tc := range []struct {
		name, host, uri, peer string
		answered              bool
		status                int
		location, body        string
	}{
		{"redirect", "acme.example.test", "/a/b?c=d", "203.0.113.1", true, 308, "https://acme.example.test:8443/a/b?c=d", ""},
		{"redirect custom domain, port dropped", "shop.acme.com:80", "/", "203.0.113.1", true, 308, "https://shop.acme.com:8443/", ""},
		{"challenge", "acme.example.test", "/.well-known/acme-challenge/tok-1", "203.0.113.1", true, 200, "", "tok-1.thumb"},
		{"unknown challenge", "acme.example.test", "/.well-known/acme-challenge/tok-2", "203.0.113.1", true, 404, "", ""},
		{"bad token", "acme.example.test", "/.well-known/acme-challenge/a.b", "203.0.113.1", true, 404, "", ""},
		{"unknown host", "nobody.example.test", "/", "203.0.113.1", false, 0, "", ""},
		{"challenge for unknown host", "nobody.example.test", "/.well-known/acme-challenge/tok-1", "203.0.113.1", false, 0, "", ""},
		{"from an edge's address", "acme.example.test", "/", "192.0.2.10", false, 0, "", ""},
		{"from an edge's public address", "acme.example.test", "/", "198.51.100.10", false, 0, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, answered := serve(m, tc.host, tc.uri, tc.peer)
			if answered != tc.answered {
				t.Fatalf("answered %v, want %v", answered, tc.answered)
			}
			if !answered {
				return
			}
			if got := ctx.Response.StatusCode(); got != tc.status {
				t.Errorf("status %d, want %d", got, tc.status)
			}
			if got := string(ctx.Response.Header.Peek("Location")); got != tc.location {
				t.Errorf("Location %q, want %q", got, tc.location)
			}
			if tc.body != "" && string(ctx.Response.Body()) != tc.body {
				t.Errorf("body %q, want %q", ctx.Response.Body(), tc.body)
			}
		})
	}

	// Port 443 is left out; redirect off leaves everything but challenges
	// to the proxy.
	m443, _ := newUnitManager(t, func(c *Config) { c.RedirectPort = 443 })
	if ctx, _ := serve(m443, "acme.example.test", "/", "203.0.113.1"); string(ctx.Response.Header.Peek("Location")) != "https://acme.example.test/" {
		t.Errorf("port 443: Location %q", ctx.Response.Header.Peek("Location"))
	}
	off, _ := newUnitManager(t, func(c *Config) { c.Redirect = false })
	if _, answered := serve(off, "acme.example.test", "/", "203.0.113.1"); answered {
		t.Error("redirect off: answered")
	}
	if _, answered := serve(off, "acme.example.test", "/.well-known/acme-challenge/tok-1", "203.0.113.1"); !answered {
		t.Error("redirect off: challenge not answered")
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		mutate func(*Config)
		want   string
	}{
		{func(c *Config) { c.Directory = "ftp://x" }, "acme.directory:"},
		{func(c *Config) { c.Email = "not an email" }, "acme.email:"},
		{func(c *Config) { c.Challenges = []string{"dns-01"} }, "acme.challenges:"},
		{func(c *Config) { c.Challenges = []string{"http-01", "http-01"} }, "acme.challenges:"},
		{func(c *Config) { c.RenewBefore = -time.Hour }, "acme.renew_before:"},
		{func(c *Config) { c.HandshakeTimeout = -time.Second }, "tls.handshake_timeout:"},
		{func(c *Config) { c.BackoffMin, c.BackoffMax = time.Hour, time.Minute }, "acme.backoff_max:"},
		{func(c *Config) { c.TicketRotation = time.Millisecond }, "tls.ticket_rotation:"},
		{func(c *Config) { c.TicketKeys = 40 }, "tls.ticket_keys:"},
		{func(c *Config) { c.RedirectPort = 70000 }, "tls.redirect_port:"},
		{func(c *Config) { c.Zone = "exa_mple.test" }, "zone:"},
		{func(c *Config) { c.Zone = "." }, "zone:"},
		{func(c *Config) { c.DNS01Nameservers = []string{"127.0.0.1"} }, "acme.dns01_nameservers[0]:"},
		{func(c *Config) { c.DNS01Timeout = -time.Second }, "acme.dns01_timeout:"},
		{func(c *Config) { c.DNS01Timeout = 5 * time.Minute }, "acme.dns01_timeout:"},
		{func(c *Config) { c.Certificates = []CertFile{{Key: "k.pem"}} }, "tls.certificates[0].cert:"},
		{func(c *Config) { c.CertificateCheck = -time.Second }, "tls.certificate_check:"},
	} {
		var c Config
		tc.mutate(&c)
		err := c.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: got %v", tc.want, err)
		}
	}
	client, _ := api.NewClient(&api.Config{Address: "127.0.0.1:1"})
	if _, err := New(Config{Consul: client, CAFile: "/nonexistent.pem"}); err == nil || !strings.HasPrefix(err.Error(), "acme.ca:") {
		t.Errorf("missing CA file: %v", err)
	}
	var c Config
	if err := c.Validate(); err != nil {
		t.Fatalf("zero config: %v", err)
	}
	if c.Directory != LetsEncrypt || len(c.Challenges) != 2 || c.HandshakeTimeout != DefaultHandshakeTimeout || c.Prefix != "podedge/" ||
		c.Zone != "example.test." || c.DNS01Timeout != time.Minute || c.CertificateCheck != 10*time.Second {
		t.Errorf("defaults not filled: %+v", c)
	}
}

func TestRenewAt(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		life, renewBefore, threshold time.Duration
	}{
		{90 * 24 * time.Hour, 0, 30 * 24 * time.Hour}, // a third, at most 30 days
		{6 * 24 * time.Hour, 0, 2 * 24 * time.Hour},   // a third of a short life
		{90 * 24 * time.Hour, 10 * 24 * time.Hour, 10 * 24 * time.Hour},
		{6 * 24 * time.Hour, 10 * 24 * time.Hour, 3 * 24 * time.Hour}, // never more than half
	} {
		na := nb.Add(tc.life)
		at := renewAt("acme.example.test", nb, na, tc.renewBefore)
		if at != renewAt("acme.example.test", nb, na, tc.renewBefore) {
			t.Error("not the same on every edge")
		}
		earliest := na.Add(-tc.threshold)
		if at.Before(earliest) || at.After(earliest.Add(min(tc.threshold/10, time.Hour))) {
			t.Errorf("life %s, renew_before %s: renews at %s, want within the jitter after %s", tc.life, tc.renewBefore, at, earliest)
		}
	}
	a := renewAt("a.example.test", nb, nb.Add(90*24*time.Hour), 0)
	b := renewAt("b.example.test", nb, nb.Add(90*24*time.Hour), 0)
	if a.Equal(b) {
		t.Error("two names issued together renew at the same instant")
	}
}

func TestMemoryKeepsTheNewest(t *testing.T) {
	mem := newMemory()
	now := time.Now()
	older := newEntry("a.example.test", selfSigned(t, "a.example.test", now.Add(-time.Hour), now.Add(24*time.Hour)), 1, 0)
	newer := newEntry("a.example.test", selfSigned(t, "a.example.test", now.Add(-time.Hour), now.Add(48*time.Hour)), 2, 0)
	if mem.put(newer) != 1 || mem.put(older) != 0 || mem.get("a.example.test") != newer {
		t.Error("an older certificate replaced a newer one")
	}
	if mem.earliest() != newer.notAfter {
		t.Errorf("earliest %s", mem.earliest())
	}
	mem.drop("a.example.test")
	if mem.get("a.example.test") != nil || !mem.earliest().IsZero() {
		t.Error("drop left the entry")
	}
}

func TestEncodeParse(t *testing.T) {
	cert := selfSigned(t, "a.example.test", time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	data, err := encodeCert(cert)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(data), "-----BEGIN EC PRIVATE KEY-----") {
		t.Errorf("not autocert's format: %.40q", data)
	}
	got, err := parseCert("a.example.test", data, time.Now())
	if err != nil || string(got.Leaf.Raw) != string(cert.Leaf.Raw) {
		t.Fatalf("round trip: %v", err)
	}
	if _, err := parseCert("b.example.test", data, time.Now()); err == nil {
		t.Error("parsed for another name")
	}
	other := selfSigned(t, "a.example.test", time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	otherData, _ := encodeCert(other)
	mixed := append(otherData[:strings.Index(string(otherData), "-----BEGIN CERTIFICATE")], data[strings.Index(string(data), "-----BEGIN CERTIFICATE"):]...)
	if _, err := parseCert("a.example.test", mixed, time.Now()); err == nil {
		t.Error("a key that does not match the certificate parsed")
	}
}

func TestBackoffDoubles(t *testing.T) {
	m, _ := newUnitManager(t, func(c *Config) { c.BackoffMin, c.BackoffMax = time.Minute, 10*time.Minute })
	var got []time.Duration
	for n := 1; n <= 6; n++ {
		got = append(got, m.backoff(n))
	}
	want := []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 10 * time.Minute, 10 * time.Minute}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("backoff %v, want %v", got, want)
		}
	}
}

func TestValidToken(t *testing.T) {
	for s, want := range map[string]bool{
		"LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0": true,
		"":           false,
		"a/b":        false,
		"a.b":        false,
		"%2e%2e":     false,
		"tok_en-123": true,
	} {
		if validToken(s) != want {
			t.Errorf("validToken(%q) = %v", s, !want)
		}
	}
}
