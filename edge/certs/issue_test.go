package certs

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podedge/podedge/internal/consultest"
)

const acmeHost = "acme.example.test"

// TestFirstRequestIssuesAndEveryEdgeServesIt: the first HTTPS request to a
// tenant's custom domain gets a certificate that chains to Pebble's root,
// ordered then and there (Pebble validating through DNS that reaches
// podedge's own), and is proxied to the tenant's app; TLS 1.1, and TLS 1.2
// without an ECDHE AEAD suite, are refused; the certificate is stored in
// Consul; a second edge of the pod serves the very same certificate
// without a new order; and with Consul gone, both keep serving it, and the
// zone's, from memory.
func TestFirstRequestIssuesAndEveryEdgeServesIt(t *testing.T) {
	p := newPlatform(t, false)
	a := p.startEdge(edgeIPs[0], nil)
	p.waitDNS(acmeHost, a.ip)
	zoneCert := p.waitZone(a)
	base := p.pebble.orders() // the zone's

	resp, body, err := p.get(a, shopHost, "/hello")
	if err != nil {
		t.Fatalf("first HTTPS request: %v", err)
	}
	if resp.StatusCode != 200 || body != "app of pod-1 for shop.acme.com/hello" {
		t.Fatalf("first HTTPS request: %d %q, want 200 from the app", resp.StatusCode, body)
	}
	// The client trusted Pebble's root (from /roots/0) and nothing else.
	if len(resp.TLS.VerifiedChains) == 0 {
		t.Fatal("no verified chain")
	}
	leaf := resp.TLS.PeerCertificates[0]
	chain := resp.TLS.VerifiedChains[0]
	if got := chain[len(chain)-1].Subject.CommonName; !strings.HasPrefix(got, "Pebble Root CA") {
		t.Errorf("chain ends at %q, want Pebble's root", got)
	}
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != shopHost {
		t.Errorf("certificate names %v, want [%s]", leaf.DNSNames, shopHost)
	}
	if n := p.pebble.orders() - base; n != 1 {
		t.Fatalf("pebble has %d new orders, want 1", n)
	}
	if got := metric(t, a.reg(), "edge_tls_issuance_total", "result", "success"); got != 2 {
		t.Errorf("edge_tls_issuance_total{result=success} = %v, want 2 (the zone's, the domain's)", got)
	}
	if got := metric(t, a.reg(), "edge_tls_certificates"); got != 2 {
		t.Errorf("edge_tls_certificates = %v, want 2", got)
	}
	earliest := min(leaf.NotAfter.Unix(), zoneCert.Leaf.NotAfter.Unix())
	if got := metric(t, a.reg(), "edge_tls_certificate_expiry_earliest_timestamp_seconds"); got != float64(earliest) {
		t.Errorf("earliest expiry = %v, want %d", got, earliest)
	}

	// Old protocol versions and non-AEAD suites are refused, though the
	// certificate is there.
	for _, c := range []*tls.Config{
		{ServerName: shopHost, InsecureSkipVerify: true, MaxVersion: tls.VersionTLS11},
		{ServerName: shopHost, InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12,
			CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_RSA_WITH_AES_128_GCM_SHA256}},
	} {
		if conn, err := tls.Dial("tcp", a.httpsAddr, c); err == nil {
			conn.Close()
			t.Errorf("handshake with %s and suites %v succeeded", tls.VersionName(c.MaxVersion), c.CipherSuites)
		}
	}

	// Stored in Consul, with its index entry.
	kv := p.agent.Client.KV()
	live, _, err := kv.Get("podedge/certs/live/"+shopHost, nil)
	if err != nil || live == nil {
		t.Fatalf("podedge/certs/live/%s: %v %v", shopHost, live, err)
	}
	if stored, err := leafOf(live.Value); err != nil || !bytes.Equal(stored.Raw, leaf.Raw) {
		t.Errorf("the certificate in consul is not the one served (%v)", err)
	}
	idx, _, _ := kv.Get("podedge/certs/index/"+shopHost, nil)
	var meta certMeta
	if idx == nil || json.Unmarshal(idx.Value, &meta) != nil || meta.Serial != leaf.SerialNumber.Text(16) {
		t.Errorf("index entry %v does not describe the certificate (serial %s)", idx, leaf.SerialNumber.Text(16))
	}

	// A second edge of the pod serves the same certificate, ordering none.
	b := p.startEdge(edgeIPs[1], nil)
	p.waitDNS(acmeHost, a.ip, b.ip)
	p.waitZone(a, b)
	resp, body, err = p.get(b, shopHost, "/")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("second edge: %v %v %q", resp, err, body)
	}
	if !bytes.Equal(resp.TLS.PeerCertificates[0].Raw, leaf.Raw) {
		t.Errorf("second edge serves another certificate (serial %s, want %s)",
			resp.TLS.PeerCertificates[0].SerialNumber.Text(16), leaf.SerialNumber.Text(16))
	}
	if n := p.pebble.orders() - base; n != 1 {
		t.Errorf("pebble has %d new orders after the second edge served, want 1", n)
	}
	if got := metric(t, b.reg(), "edge_tls_issuance_total"); got != 0 {
		t.Errorf("second edge ordered %v certificates, want 0", got)
	}

	// Consul gone: what is in memory keeps serving.
	p.agent.Stop()
	for _, te := range []*testEdge{a, b} {
		for host, want := range map[string][]byte{shopHost: leaf.Raw, acmeHost: zoneCert.Leaf.Raw} {
			cs, err := p.handshake(te, host)
			if err != nil {
				t.Fatalf("%s, %s with consul down: %v", te.ip, host, err)
			}
			if !bytes.Equal(cs.PeerCertificates[0].Raw, want) {
				t.Errorf("%s, %s with consul down serves another certificate", te.ip, host)
			}
		}
	}
}

// TestSimultaneousFirstRequestsPlaceOneOrder: two edges get the first
// request for a new custom domain at the same moment; one orders, the
// other waits on the name's lock and then serves the certificate the first
// stored.
func TestSimultaneousFirstRequestsPlaceOneOrder(t *testing.T) {
	p := newPlatform(t, false)
	a := p.startEdge(edgeIPs[0], nil)
	b := p.startEdge(edgeIPs[1], nil)
	const host = "www.beta.com"
	putTenant(t, p.agent, "beta", "pod-1", host)
	p.resolver.point(host, "pod-1")
	p.waitKnown(host, a, b)
	p.waitDNS(acmeHost, a.ip, b.ip)
	p.waitZone(a, b)
	base := p.pebble.orders()
	baseOrders := metric(t, a.reg(), "edge_tls_acme_orders_total") + metric(t, b.reg(), "edge_tls_acme_orders_total")

	start := make(chan struct{})
	var wg sync.WaitGroup
	states := make([]*tls.ConnectionState, 2)
	errs := make([]error, 2)
	for i, te := range []*testEdge{a, b} {
		wg.Go(func() {
			<-start
			states[i], errs[i] = p.handshake(te, host)
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("edge %d: %v", i, err)
		}
	}
	if !bytes.Equal(states[0].PeerCertificates[0].Raw, states[1].PeerCertificates[0].Raw) {
		t.Error("the two edges serve different certificates")
	}
	if n := p.pebble.orders() - base; n != 1 {
		t.Errorf("pebble has %d new orders, want 1", n)
	}
	if got := metric(t, a.reg(), "edge_tls_acme_orders_total") + metric(t, b.reg(), "edge_tls_acme_orders_total") - baseOrders; got != 1 {
		t.Errorf("the edges placed %v orders, want 1", got)
	}
}

// TestUnknownNameGetsNoCertificate: a handshake for a name no tenant has,
// or with no name at all, fails at once and orders nothing.
func TestUnknownNameGetsNoCertificate(t *testing.T) {
	p := newPlatform(t, false)
	a := p.startEdge(edgeIPs[0], nil)
	p.waitZone(a)
	base := p.pebble.orders()

	if _, err := p.handshake(a, "nobody.example.test"); err == nil {
		t.Fatal("handshake for an unknown name in the zone succeeded")
	}
	if _, err := p.handshake(a, "nobody.example.com"); err == nil {
		t.Fatal("handshake for an unknown name succeeded")
	}
	conn, err := tls.Dial("tcp", a.httpsAddr, &tls.Config{InsecureSkipVerify: true})
	if err == nil {
		conn.Close()
		t.Fatal("handshake without a server name succeeded")
	}
	if got := metric(t, a.reg(), "edge_tls_handshake_failures_total", "reason", "unknown_name"); got != 2 {
		t.Errorf("handshake failures for unknown names = %v, want 2", got)
	}
	if got := metric(t, a.reg(), "edge_tls_handshake_failures_total", "reason", "no_sni"); got != 1 {
		t.Errorf("handshake failures without a name = %v, want 1", got)
	}
	if n := p.pebble.orders() - base; n != 0 {
		t.Errorf("pebble has %d new orders, want none", n)
	}
	keys, _, err := p.agent.Client.KV().Keys("podedge/certs/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if (strings.HasPrefix(k, "podedge/certs/live/") || strings.HasPrefix(k, "podedge/certs/locks/")) && !strings.HasSuffix(k, "/*.example.test") {
			t.Errorf("unexpected key %s", k)
		}
	}
}

// TestFailedOrderBacksOffOnEveryEdge: a custom domain that resolves to no
// edge (its tenant's pod has none) cannot be validated. The order fails once per
// challenge type, with one clear log line and a metric; the failure is
// recorded in Consul, and neither that edge nor another orders again until
// the backoff ends: their handshakes fail at once.
func TestFailedOrderBacksOffOnEveryEdge(t *testing.T) {
	p := newPlatform(t, false)
	a := p.startEdge(edgeIPs[0], nil)
	b := p.startEdge(edgeIPs[1], nil)
	putPod(t, p.agent, "pod-9")
	const host = "www.ghost.com"
	putTenant(t, p.agent, "ghost", "pod-9", host)
	p.resolver.point(host, "pod-9")
	p.waitKnown(host, a, b)
	p.waitZone(a, b)
	base := p.pebble.orders()

	if _, err := p.handshake(a, host); err == nil {
		t.Fatal("handshake for a name that cannot be validated succeeded")
	}
	if n := p.pebble.orders() - base; n != 2 {
		t.Errorf("pebble has %d new orders, want 2 (tls-alpn-01, then http-01)", n)
	}
	if got := metric(t, a.reg(), "edge_tls_issuance_total", "result", "failure"); got != 1 {
		t.Errorf("edge_tls_issuance_total{result=failure} = %v, want 1", got)
	}
	var line map[string]any
	for _, l := range strings.Split(a.logs.String(), "\n") {
		if strings.Contains(l, `"certificate issuance failed"`) {
			if line != nil {
				t.Errorf("more than one failure line: %s", l)
			}
			_ = json.Unmarshal([]byte(l), &line)
		}
	}
	if line == nil {
		t.Fatalf("no failure line in the log:\n%s", a.logs.String())
	}
	if line["name"] != host || line["ca"] != p.pebble.dir || !strings.Contains(line["error"].(string), "tls-alpn-01") ||
		!strings.Contains(line["error"].(string), "http-01") || line["level"] != "ERROR" {
		t.Errorf("failure line lacks the name, the CA or each challenge's error: %v", line)
	}
	rec, _, err := p.agent.Client.KV().Get("podedge/certs/failures/"+host, nil)
	if err != nil || rec == nil {
		t.Fatalf("no failure record in consul: %v", err)
	}
	var f failure
	if err := json.Unmarshal(rec.Value, &f); err != nil || f.Failures != 1 || !f.RetryAt.After(time.Now()) {
		t.Errorf("failure record %s", rec.Value)
	}

	// Backing off: on this edge and on the other, no new order.
	for _, te := range []*testEdge{a, b, a} {
		if _, err := p.handshake(te, host); err == nil {
			t.Fatalf("%s: handshake succeeded while backing off", te.ip)
		}
	}
	if n := p.pebble.orders() - base; n != 2 {
		t.Errorf("pebble has %d new orders after the backoff started, want still 2", n)
	}
	backoffs := metric(t, a.reg(), "edge_tls_handshake_failures_total", "reason", "backoff") +
		metric(t, b.reg(), "edge_tls_handshake_failures_total", "reason", "backoff")
	if backoffs != 3 {
		t.Errorf("handshakes refused for backoff = %v, want 3", backoffs)
	}
}

// TestHTTP01WhenTLSALPNFails: where the CA cannot reach the HTTPS port
// (Pebble's tlsPort leads nowhere), TLS-ALPN-01 fails and a second order
// succeeds with HTTP-01, answered on the plain-HTTP listener.
func TestHTTP01WhenTLSALPNFails(t *testing.T) {
	p := newPlatform(t, true)
	a := p.startEdge(edgeIPs[0], nil)
	p.waitDNS(acmeHost, a.ip)
	p.waitZone(a)
	base := p.pebble.orders()
	resp, body, err := p.get(a, shopHost, "/")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("first HTTPS request: %v %v %q", resp, err, body)
	}
	if n := p.pebble.orders() - base; n != 2 {
		t.Errorf("pebble has %d new orders, want 2", n)
	}
	if !strings.Contains(p.pebble.out.String(), "Attempting to validate w/ HTTP") {
		t.Error("pebble never validated over HTTP")
	}
}

// TestRenewalOncePerCertificate: two edges hold a custom domain's
// certificate that comes due; both try to renew it at once. One orders, the other takes the
// renewed certificate from Consul, and both serve it. When one edge renews
// on its own, the other reloads the new certificate without doing anything.
func TestRenewalOncePerCertificate(t *testing.T) {
	p := newPlatform(t, false)
	a := p.startEdge(edgeIPs[0], nil)
	b := p.startEdge(edgeIPs[1], nil)
	p.waitDNS(acmeHost, a.ip, b.ip)
	p.waitZone(a, b)
	resp, _, err := p.get(a, shopHost, "/")
	if err != nil {
		t.Fatal(err)
	}
	old := resp.TLS.PeerCertificates[0]
	consultest.WaitFor(t, 10*time.Second, "the second edge to load the certificate", func() bool {
		return b.m.mem.get(shopHost) != nil
	})
	// Certificate times have a resolution of one second, and Pebble may
	// reuse the authorization and issue at once: let a second pass so that
	// the renewed certificate expires (and comes due) later than the old.
	consultest.WaitFor(t, 5*time.Second, "a new second since the first issuance", func() bool {
		return time.Now().After(old.NotBefore.Add(2 * time.Second))
	})
	ea, eb := a.m.mem.get(shopHost), b.m.mem.get(shopHost)
	if !ea.renewAt.Equal(eb.renewAt) {
		t.Fatalf("the edges disagree on when to renew: %s, %s", ea.renewAt, eb.renewAt)
	}
	due := ea.renewAt
	ordersBefore := p.pebble.orders()
	bOrders := metric(t, b.reg(), "edge_tls_acme_orders_total")

	var wg sync.WaitGroup
	for _, te := range []*testEdge{a, b} {
		wg.Go(func() { te.m.renewNames(t.Context(), due) })
	}
	wg.Wait()
	if n := p.pebble.orders() - ordersBefore; n != 1 {
		t.Errorf("renewal placed %d orders, want 1", n)
	}
	for _, te := range []*testEdge{a, b} {
		cs, err := p.handshake(te, shopHost)
		if err != nil {
			t.Fatalf("%s after renewal: %v", te.ip, err)
		}
		got := cs.PeerCertificates[0]
		if bytes.Equal(got.Raw, old.Raw) {
			t.Errorf("%s still serves the old certificate", te.ip)
		}
		if e := a.m.mem.get(shopHost); !bytes.Equal(got.Raw, e.cert.Leaf.Raw) {
			t.Errorf("%s serves another certificate than the renewed one", te.ip)
		}
	}

	// Edge a alone renews again: b, doing nothing, picks the new
	// certificate up from the watch of the index.
	renewed := a.m.mem.get(shopHost).cert.Leaf
	consultest.WaitFor(t, 5*time.Second, "a new second since the renewal", func() bool {
		return time.Now().After(renewed.NotBefore.Add(2 * time.Second))
	})
	if n := a.m.renewNames(t.Context(), a.m.mem.get(shopHost).renewAt); n != 1 {
		t.Fatalf("edge a renewed %d certificates, want 1", n)
	}
	latest := a.m.mem.get(shopHost).cert.Leaf
	consultest.WaitFor(t, 10*time.Second, "edge b to reload the certificate edge a renewed", func() bool {
		e := b.m.mem.get(shopHost)
		return e != nil && bytes.Equal(e.cert.Leaf.Raw, latest.Raw)
	})
	if cs, err := p.handshake(b, shopHost); err != nil || !bytes.Equal(cs.PeerCertificates[0].Raw, latest.Raw) {
		t.Errorf("edge b does not serve edge a's renewal (%v)", err)
	}
	if got := metric(t, b.reg(), "edge_tls_acme_orders_total") - bOrders; got > 1 {
		t.Errorf("edge b placed %v orders, want at most the one of the first round", got)
	}
}
