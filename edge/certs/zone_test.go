package certs

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/podedge/podedge/dnsd"
	"github.com/podedge/podedge/internal/consultest"
)

const zoneCertName = "*.example.test"

// dns01Keys lists the keys under podedge/certs/dns01/.
func (p *platform) dns01Keys() []string {
	p.t.Helper()
	keys, _, err := p.agent.Client.KV().Keys("podedge/certs/dns01/", "", nil)
	if err != nil {
		p.t.Fatal(err)
	}
	return keys
}

// challengeRcode is what dnsd answers for _acme-challenge.<zone> TXT.
func (p *platform) challengeRcode() int {
	p.t.Helper()
	m := new(dns.Msg)
	m.SetQuestion("_acme-challenge.example.test.", dns.TypeTXT)
	r, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, p.dnsAddr)
	if err != nil {
		p.t.Fatal(err)
	}
	return r.Rcode
}

// TestZoneCertificate: two edges start; one orders the zone's certificate
// (*.example.test and example.test), by DNS-01 that Pebble validates by
// asking dnsd itself, which answers from the tokens the edge wrote to
// Consul; the tokens are gone once the order is done. Both edges serve that
// one certificate for every tenant hostname, a tenant that signs up
// afterwards included, with no order at all. When it comes due, both edges
// try to renew it at the same moment: one order, and both serve the
// renewal.
func TestZoneCertificate(t *testing.T) {
	p := newZonePlatform(t)
	a := p.startEdge(edgeIPs[0], nil)
	b := p.startEdge(edgeIPs[1], nil)
	zoneCert := p.waitZone(a, b)
	leaf := zoneCert.Leaf

	if n := p.pebble.orders(); n != 1 {
		t.Fatalf("pebble has %d orders, want 1", n)
	}
	if got := metric(t, a.reg(), "edge_tls_issuance_total", "result", "success") + metric(t, b.reg(), "edge_tls_issuance_total", "result", "success"); got != 1 {
		t.Errorf("the edges issued %v certificates, want 1", got)
	}
	if names := slices.Sorted(slices.Values(leaf.DNSNames)); !slices.Equal(names, []string{"*.example.test", "example.test"}) {
		t.Errorf("certificate names %v", names)
	}
	// Pebble validated both authorizations by asking dnsd.
	consultest.WaitFor(t, 5*time.Second, "pebble to have validated both authorizations", func() bool {
		valid, _ := p.pebble.validated()
		return valid == 2
	})
	if _, invalid := p.pebble.validated(); invalid != 0 {
		t.Errorf("pebble failed %d authorizations, want none", invalid)
	}
	if got := metric(t, p.dnsd.Registry(), "dnsd_queries_total", "qtype", "TXT", "rcode", "NOERROR"); got < 2 {
		t.Errorf("dnsd answered %v TXT queries with data, want Pebble's", got)
	}
	if got := metric(t, a.reg(), "edge_tls_dns01_propagation_seconds") + metric(t, b.reg(), "edge_tls_dns01_propagation_seconds"); got <= 0 || got > 5 {
		t.Errorf("the tokens took %vs to be served by dnsd", got)
	}
	// The tokens are gone: from Consul, and from dnsd's answers.
	if keys := p.dns01Keys(); len(keys) != 0 {
		t.Errorf("tokens left in consul: %v", keys)
	}
	consultest.WaitFor(t, 5*time.Second, "dnsd to forget the tokens", func() bool {
		return p.challengeRcode() == dns.RcodeNameError
	})
	// Stored once.
	kv := p.agent.Client.KV()
	live, _, err := kv.Get("podedge/certs/live/"+zoneCertName, nil)
	if err != nil || live == nil {
		t.Fatalf("podedge/certs/live/%s: %v %v", zoneCertName, live, err)
	}
	if stored, err := leafOf(live.Value); err != nil || !bytes.Equal(stored.Raw, leaf.Raw) {
		t.Errorf("the certificate in consul is not the one held (%v)", err)
	}
	for _, te := range []*testEdge{a, b} {
		if got := metric(t, te.reg(), "edge_tls_zone_certificate_expiry_timestamp_seconds"); got != float64(leaf.NotAfter.Unix()) {
			t.Errorf("%s: zone certificate expiry %v, want %d", te.ip, got, leaf.NotAfter.Unix())
		}
	}

	// Every tenant hostname, on every edge; a tenant that signs up now
	// gets HTTPS at once, and nothing is ordered.
	putTenant(t, p.agent, "newco", "pod-1")
	p.waitKnown("newco.example.test", a, b)
	for _, te := range []*testEdge{a, b} {
		for _, host := range []string{acmeHost, "newco.example.test", "NewCo.Example.Test"} {
			resp, body, err := p.get(te, host, "/x")
			if err != nil {
				t.Fatalf("%s, https://%s/x: %v", te.ip, host, err)
			}
			if want := "app of pod-1 for " + host + "/x"; resp.StatusCode != 200 || body != want {
				t.Errorf("%s, https://%s/x: %d %q, want 200 %q", te.ip, host, resp.StatusCode, body, want)
			}
			if !bytes.Equal(resp.TLS.PeerCertificates[0].Raw, leaf.Raw) || len(resp.TLS.VerifiedChains) == 0 {
				t.Errorf("%s, %s: not the zone's certificate, verified", te.ip, host)
			}
		}
	}
	if n := p.pebble.orders(); n != 1 {
		t.Errorf("pebble has %d orders after serving the tenants, want 1", n)
	}
	for _, k := range []string{"live/newco.example.test", "live/acme.example.test", "locks/newco.example.test"} {
		if kp, _, _ := kv.Get("podedge/certs/"+k, nil); kp != nil {
			t.Errorf("podedge/certs/%s exists: a tenant's name was ordered on its own", k)
		}
	}
	// The host policy still holds: a name of the zone no tenant has gets
	// nothing.
	if _, err := p.handshake(a, "nobody.example.test"); err == nil {
		t.Error("a name no tenant has got the zone's certificate")
	}

	// Renewal, once, by one edge.
	consultest.WaitFor(t, 5*time.Second, "a new second since the first issuance", func() bool {
		return time.Now().After(leaf.NotBefore.Add(2 * time.Second))
	})
	due := a.m.mem.get(zoneCertName).renewAt
	if !due.Equal(b.m.mem.get(zoneCertName).renewAt) {
		t.Fatal("the edges disagree on when to renew the zone's certificate")
	}
	var wg sync.WaitGroup
	for _, te := range []*testEdge{a, b} {
		wg.Go(func() { te.m.renewZone(t.Context(), due) })
	}
	wg.Wait()
	if n := p.pebble.orders(); n != 2 {
		t.Errorf("pebble has %d orders after the renewal, want 2", n)
	}
	// Pebble logs a validation from its own goroutine, at times after the
	// order it belongs to is done.
	consultest.WaitFor(t, 5*time.Second, "pebble to have validated 4 authorizations: the renewal's by DNS-01 again", func() bool {
		valid, _ := p.pebble.validated()
		return valid == 4
	})
	renewed := a.m.mem.get(zoneCertName).cert.Leaf
	if bytes.Equal(renewed.Raw, leaf.Raw) {
		t.Fatal("edge a holds the old certificate after the renewal")
	}
	for _, te := range []*testEdge{a, b} {
		cs, err := p.handshake(te, "newco.example.test")
		if err != nil || !bytes.Equal(cs.PeerCertificates[0].Raw, renewed.Raw) {
			t.Errorf("%s does not serve the renewed certificate (%v)", te.ip, err)
		}
	}
	if keys := p.dns01Keys(); len(keys) != 0 {
		t.Errorf("tokens left in consul after the renewal: %v", keys)
	}
}

// TestZoneOrderWaitsForTheNameServers: the CA is told to look at the
// tokens only once every name server of the zone serves them. Here one of
// the two never does (a dnsd that has not read Consul yet): the order
// fails after acme.dns01_timeout without Pebble being asked to validate,
// with one log line naming that server; the tokens are removed; the zone
// backs off like any name.
func TestZoneOrderWaitsForTheNameServers(t *testing.T) {
	p := newZonePlatform(t)
	cfg := dnsd.DefaultConfig()
	cfg.Listen, cfg.Admin = "127.0.0.1:0", "127.0.0.1:0"
	lagging, err := dnsd.New(cfg, testLogger(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := lagging.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = lagging.Run(ctx, nil); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	a := p.startEdge(edgeIPs[0], func(c *Config) {
		c.DNS01Nameservers = []string{p.dnsAddr, lagging.Addr()}
		c.DNS01Timeout = 2 * time.Second
	})
	var line map[string]any
	consultest.WaitFor(t, 30*time.Second, "the zone's order to fail", func() bool {
		for _, l := range strings.Split(a.logs.String(), "\n") {
			if strings.Contains(l, `"certificate issuance failed"`) {
				return json.Unmarshal([]byte(l), &line) == nil
			}
		}
		return false
	})
	if line["name"] != zoneCertName || !strings.Contains(line["error"].(string), "dns-01: _acme-challenge.example.test not served within 2s by "+lagging.Addr()+": SERVFAIL") {
		t.Errorf("failure line %v", line)
	}
	if strings.Contains(line["error"].(string), p.dnsAddr) {
		t.Errorf("the dnsd that served the tokens is named as failing: %v", line["error"])
	}
	if valid, invalid := p.pebble.validated(); valid+invalid != 0 {
		t.Errorf("pebble validated %d authorizations, want none: it must not be asked", valid+invalid)
	}
	if keys := p.dns01Keys(); len(keys) != 0 {
		t.Errorf("tokens left in consul: %v", keys)
	}
	if rec, _, _ := p.agent.Client.KV().Get("podedge/certs/failures/"+zoneCertName, nil); rec == nil {
		t.Error("no failure record for the zone")
	}
	if _, err := p.handshake(a, acmeHost); err == nil {
		t.Error("a tenant got a certificate without the zone's")
	}
	if got := metric(t, a.reg(), "edge_tls_handshake_failures_total", "reason", "backoff"); got != 1 {
		t.Errorf("handshakes refused for the zone's backoff = %v, want 1", got)
	}
}

// TestDNS01Publish: the tokens of a name are written each under its own
// key, and the same write removes what an order that did not finish left
// there, but nothing of another name; remove deletes them.
func TestDNS01Publish(t *testing.T) {
	agent := consultest.Start(t)
	kv := agent.Client.KV()
	d := &dns01{kv: kv, folder: "podedge/certs/dns01/", log: testLogger(t, nil)}
	agent.Put(t, "podedge/certs/dns01/_acme-challenge.example.test/0000000000000000", "left by a dead edge")
	agent.Put(t, "podedge/certs/dns01/_acme-challenge.shop.example.test/0000000000000000", "another name's")
	remove, err := d.publish(t.Context(), "_acme-challenge.example.test.", []string{"value-1", "value-2"})
	if err != nil {
		t.Fatal(err)
	}
	pairs, _, err := kv.List("podedge/certs/dns01/_acme-challenge.example.test/", nil)
	if err != nil {
		t.Fatal(err)
	}
	var values []string
	for _, p := range pairs {
		values = append(values, string(p.Value))
		if p.Key != d.tokenKey("_acme-challenge.example.test.", string(p.Value)) {
			t.Errorf("key %s", p.Key)
		}
	}
	if slices.Sort(values); !slices.Equal(values, []string{"value-1", "value-2"}) {
		t.Errorf("tokens %q, want the two written and nothing else", values)
	}
	remove()
	keys, _, _ := kv.Keys("podedge/certs/dns01/", "", nil)
	if !slices.Equal(keys, []string{"podedge/certs/dns01/_acme-challenge.shop.example.test/0000000000000000"}) {
		t.Errorf("after remove: %v, want the other name's token only", keys)
	}
}
