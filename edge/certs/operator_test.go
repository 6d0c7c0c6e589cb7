package certs

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/consultest"
	"github.com/prometheus/client_golang/prometheus"
)

// holdOperator makes m serve an operator's certificate for name (which may
// be a wildcard), valid now, as if read from a source of its own.
func holdOperator(t testing.TB, m *Manager, name string) *tls.Certificate {
	t.Helper()
	cert := selfSigned(t, name, time.Now().Add(-time.Hour), time.Now().Add(30*24*time.Hour))
	data, _ := encodeCert(cert)
	o := m.operators
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.consider(time.Now(), "test:"+name, sourceConsul, data, data, nil) {
		t.Fatalf("operator certificate for %s not taken", name)
	}
	o.publish(time.Now())
	return cert
}

// splitPEM returns the chain and the key of a certificate, PEM.
func splitPEM(t testing.TB, cert *tls.Certificate) (chain, key []byte) {
	t.Helper()
	data, err := encodeCert(cert)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(data, []byte("-----BEGIN CERTIFICATE"))
	return data[i:], data[:i]
}

func TestParseOperator(t *testing.T) {
	now := time.Now()
	good := selfSignedNames(t, []string{"www.Example.com", "*.example.com"}, now.Add(-time.Hour), now.Add(time.Hour))
	chain, key := splitPEM(t, good)
	other := selfSigned(t, "www.example.com", now.Add(-time.Hour), now.Add(time.Hour))
	_, otherKey := splitPEM(t, other)
	expiredChain, expiredKey := splitPEM(t, selfSigned(t, "www.example.com", now.Add(-48*time.Hour), now.Add(-time.Hour)))
	futureChain, futureKey := splitPEM(t, selfSigned(t, "www.example.com", now.Add(time.Hour), now.Add(48*time.Hour)))
	noSANChain, noSANKey := splitPEM(t, selfSignedNoSAN(t, now))

	for _, tc := range []struct {
		name            string
		certPEM, keyPEM []byte
		reason, err     string
	}{
		{"chain and key files", chain, key, "", ""},
		{"one file, key first", append(append([]byte{}, key...), chain...), append(append([]byte{}, key...), chain...), "", ""},
		{"another key", chain, otherKey, opInvalid, "private key does not match public key"},
		{"not PEM", []byte("hello"), []byte("world"), opInvalid, "failed to find any PEM data"},
		{"no key", chain, chain, opInvalid, "rather than a key"},
		{"expired", expiredChain, expiredKey, opExpired, "expired at"},
		{"not valid yet", futureChain, futureKey, opExpired, "not valid before"},
		{"no subjectAltName", noSANChain, noSANKey, opInvalid, "names no DNS name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, reason, err := parseOperator("test", tc.certPEM, tc.keyPEM, now)
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				if strings.Join(c.names, ",") != "*.example.com,www.example.com" || !c.notAfter.Equal(good.Leaf.NotAfter) {
					t.Errorf("names %v not_after %s", c.names, c.notAfter)
				}
				return
			}
			if err == nil || reason != tc.reason || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("reason %q error %v, want %q and %q", reason, err, tc.reason, tc.err)
			}
		})
	}
}

// TestSNIChoice: an operator's certificate naming the name, then one whose
// wildcard covers it, then ACME's (the zone's for a tenant hostname, the
// name's own for a custom domain). Operators' certificates are served
// whatever the router knows; of two for the same name, the one that
// expires last.
func TestSNIChoice(t *testing.T) {
	m, _ := newUnitManager(t, nil)
	zone := holdZone(t, m)
	shop := hold(t, m, "shop.acme.com")
	opShop := holdOperator(t, m, "shop.acme.com")
	opWild := holdOperator(t, m, "*.acme.com")
	opZone := holdOperator(t, m, "*.example.test")
	opOther := holdOperator(t, m, "www.operator.example")
	for _, tc := range []struct {
		sni  string
		want *tls.Certificate
	}{
		{"shop.acme.com", opShop},         // exact beats wildcard and ACME
		{"www.acme.com", opWild},          // wildcard, although unknown to the router
		{"acme.example.test", opZone},     // the operator's wildcard beats the zone's
		{"example.test", nil},             // apex: not routed, and no operator's exact name
		{"a.b.acme.com", nil},             // a wildcard covers one label
		{"acme.com", nil},                 // nor the name itself
		{"www.operator.example", opOther}, // exact, unknown to the router
	} {
		got, _ := m.getCertificate(&tls.ClientHelloInfo{ServerName: tc.sni})
		if !sameLeaf(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.sni, subject(got), subject(tc.want))
		}
	}

	// Without the operators' certificates, ACME's.
	m.operators.mu.Lock()
	for id := range m.operators.sources {
		delete(m.operators.sources, id)
	}
	m.operators.publish(time.Now())
	m.operators.mu.Unlock()
	for sni, want := range map[string]*tls.Certificate{"shop.acme.com": shop, "acme.example.test": zone} {
		if got, _ := m.getCertificate(&tls.ClientHelloInfo{ServerName: sni}); !sameLeaf(got, want) {
			t.Errorf("%s without operators' certificates: got %v", sni, subject(got))
		}
	}

	// Two for one name: the one that expires last.
	short := selfSigned(t, "www.operator.example", time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
	long := selfSigned(t, "www.operator.example", time.Now().Add(-time.Hour), time.Now().Add(48*time.Hour))
	o := m.operators
	o.mu.Lock()
	for i, c := range []*tls.Certificate{long, short} {
		data, _ := encodeCert(c)
		o.consider(time.Now(), "test:"+string(rune('a'+i)), sourceConsul, data, data, nil)
	}
	o.publish(time.Now())
	o.mu.Unlock()
	if got, _ := m.getCertificate(&tls.ClientHelloInfo{ServerName: "www.operator.example"}); got == nil || !bytes.Equal(got.Leaf.Raw, long.Leaf.Raw) {
		t.Error("of two certificates for one name, not the one that expires last")
	}
}

func sameLeaf(a, b *tls.Certificate) bool {
	if a == nil || b == nil {
		return a == b
	}
	return bytes.Equal(a.Leaf.Raw, b.Leaf.Raw)
}

func subject(c *tls.Certificate) string {
	if c == nil {
		return "none"
	}
	return strings.Join(c.Leaf.DNSNames, ",")
}

// tlsServer serves handshakes with m's configuration on 127.0.0.1 until the
// test ends and returns its address.
func tlsServer(t *testing.T, m *Manager) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", m.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				_ = c.(*tls.Conn).Handshake()
			}()
		}
	}()
	return ln.Addr().String()
}

// served returns the leaf a real handshake with addr for sni gets, nil when
// the handshake fails.
func served(addr, sni string) []byte {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
	if err != nil {
		return nil
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].Raw
}

// runManager runs m until the test ends.
func runManager(t *testing.T, m *Manager) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
}

// logLines returns the JSON lines of buf whose msg is msg.
func logLines(t *testing.T, buf *consultest.SyncBuffer, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(buf.String(), "\n") {
		var line map[string]any
		if json.Unmarshal([]byte(l), &line) == nil && line["msg"] == msg {
			out = append(out, line)
		}
	}
	return out
}

// TestOperatorFiles: pairs given in files are served from the start (a
// chain and a key file; a bundle holding both), and replaced without a
// restart when the files change; a pair that does not match, an expired
// one, a file gone, are each refused with one log line and a metric, once,
// while the previous pair keeps serving; a bad file at start does not stop
// the edge.
func TestOperatorFiles(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	chainFile, keyFile := filepath.Join(dir, "api.crt"), filepath.Join(dir, "api.key")
	apiCert := selfSigned(t, "api.acme.com", now.Add(-time.Hour), now.Add(30*24*time.Hour))
	chain, key := splitPEM(t, apiCert)
	os.WriteFile(chainFile, chain, 0o600)
	os.WriteFile(keyFile, key, 0o600)
	bundle := filepath.Join(dir, "shop.pem")
	// write replaces the bundle atomically, as an operator should: a
	// reader never sees half of it.
	write := func(data []byte) {
		tmp := bundle + ".new"
		if err := os.WriteFile(tmp, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, bundle); err != nil {
			t.Fatal(err)
		}
	}
	pemOf := func(c *tls.Certificate) []byte { data, _ := encodeCert(c); return data }
	first := selfSigned(t, "shop.acme.com", now.Add(-time.Hour), now.Add(30*24*time.Hour))
	write(pemOf(first))
	badFile := filepath.Join(dir, "bad.pem")
	os.WriteFile(badFile, []byte("not a certificate"), 0o600)

	logs := &consultest.SyncBuffer{}
	m, reg := newUnitManager(t, func(c *Config) {
		c.Certificates = []CertFile{{Cert: chainFile, Key: keyFile}, {Cert: bundle, Key: bundle}, {Cert: badFile, Key: badFile}}
		c.CertificateCheck = 50 * time.Millisecond
		c.Logger = testLogger(t, logs)
	})
	errorsOf := func(reason string) float64 {
		return metric(t, reg, "edge_tls_operator_certificate_errors_total", "source", "file", "reason", reason)
	}
	if got := errorsOf(opInvalid); got != 1 {
		t.Errorf("bad file at start: %v errors, want 1", got)
	}
	addr := tlsServer(t, m)
	if !bytes.Equal(served(addr, "shop.acme.com"), first.Leaf.Raw) || !bytes.Equal(served(addr, "api.acme.com"), apiCert.Leaf.Raw) {
		t.Fatal("the operator's certificates are not served from the start")
	}
	if got := metric(t, reg, "edge_tls_operator_certificates"); got != 2 {
		t.Errorf("edge_tls_operator_certificates = %v, want 2", got)
	}
	if got := metric(t, reg, "edge_tls_certificate_expiry_earliest_timestamp_seconds"); got != float64(first.Leaf.NotAfter.Unix()) {
		t.Errorf("earliest expiry %v, want the operator's %d", got, first.Leaf.NotAfter.Unix())
	}
	runManager(t, m)

	second := selfSigned(t, "shop.acme.com", now.Add(-time.Hour), now.Add(60*24*time.Hour))
	write(pemOf(second))
	consultest.WaitFor(t, 5*time.Second, "the new pair to be served", func() bool {
		return bytes.Equal(served(addr, "shop.acme.com"), second.Leaf.Raw)
	})

	_, otherKey := splitPEM(t, selfSigned(t, "shop.acme.com", now.Add(-time.Hour), now.Add(time.Hour)))
	secondChain, _ := splitPEM(t, second)
	const refused = "operator certificate refused; the previous one keeps serving"
	for _, tc := range []struct {
		name, reason string
		change       func()
	}{
		{"a key of another certificate", opInvalid, func() { write(append(append([]byte{}, otherKey...), secondChain...)) }},
		{"an expired pair", opExpired, func() {
			write(pemOf(selfSigned(t, "shop.acme.com", now.Add(-48*time.Hour), now.Add(-time.Hour))))
		}},
		{"the file gone", opUnreadable, func() { os.Remove(bundle) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, lines := errorsOf(tc.reason), len(logLines(t, logs, refused))
			tc.change()
			consultest.WaitFor(t, 5*time.Second, "the refusal to be counted", func() bool {
				return errorsOf(tc.reason) == before+1
			})
			if !bytes.Equal(served(addr, "shop.acme.com"), second.Leaf.Raw) {
				t.Error("the previous pair is not served any more")
			}
			// Refused once: later checks of the same file say nothing more.
			for range 3 {
				m.operators.checkFiles(time.Now())
			}
			if got := errorsOf(tc.reason); got != before+1 {
				t.Errorf("%v refusals, want 1", got-before)
			}
			got := logLines(t, logs, refused)
			if len(got) != lines+1 {
				t.Fatalf("%d new log lines, want 1", len(got)-lines)
			}
			if l := got[len(got)-1]; l["level"] != "ERROR" || l["source"] != "file:"+bundle || l["reason"] != tc.reason || l["error"] == "" || l["serving_not_after"] == nil {
				t.Errorf("log line %v", l)
			}
			write(pemOf(second)) // good again, for the next case
			m.operators.checkFiles(time.Now())
		})
	}

	// A pair that expires while served is dropped at the next check, with
	// a line and a metric; the other names keep theirs.
	before := errorsOf(opExpired)
	m.operators.checkFiles(second.Leaf.NotAfter.Add(time.Second))
	if got := errorsOf(opExpired); got != before+2 {
		t.Errorf("%v expired, want 2 (both pairs)", got-before)
	}
	if n := len(logLines(t, logs, "operator certificate expired; no longer served")); n != 2 {
		t.Errorf("%d expiry lines, want 2", n)
	}
}

// TestOperatorCertificatesFromConsul: a pair written under
// <prefix>certs/operator/ is served by every edge at once; replaced, the new
// one; replaced by a bad one, refused with a line and a metric while the
// previous keeps serving; deleted, the next choice (here the zone's
// certificate for a tenant, which the operator's wildcard hid).
func TestOperatorCertificatesFromConsul(t *testing.T) {
	agent := consultest.Start(t)
	logs := &consultest.SyncBuffer{}
	start := func(holder string, buf *consultest.SyncBuffer) (*Manager, *prometheus.Registry, string) {
		m, reg := newUnitManager(t, func(c *Config) {
			c.Consul, c.Holder = agent.Client, holder
			c.Directory = "https://127.0.0.1:1/directory" // no CA: this test orders nothing
			if buf != nil {
				c.Logger = testLogger(t, buf)
			}
		})
		holdZone(t, m)
		runManager(t, m)
		return m, reg, tlsServer(t, m)
	}
	a, regA, addrA := start("edge-a", logs)
	_, _, addrB := start("edge-b", nil)

	now := time.Now()
	key := "podedge/certs/operator/wildcard-example-test"
	put := func(c *tls.Certificate) {
		data, _ := encodeCert(c)
		if _, err := agent.Client.KV().Put(&api.KVPair{Key: key, Value: data}, nil); err != nil {
			t.Fatal(err)
		}
	}
	first := selfSigned(t, "*.example.test", now.Add(-time.Hour), now.Add(30*24*time.Hour))
	put(first)
	for _, addr := range []string{addrA, addrB} {
		consultest.WaitFor(t, 5*time.Second, "the operator's certificate on "+addr, func() bool {
			return bytes.Equal(served(addr, "acme.example.test"), first.Leaf.Raw)
		})
	}
	second := selfSigned(t, "*.example.test", now.Add(-time.Hour), now.Add(60*24*time.Hour))
	put(second)
	for _, addr := range []string{addrA, addrB} {
		consultest.WaitFor(t, 5*time.Second, "the replaced certificate on "+addr, func() bool {
			return bytes.Equal(served(addr, "acme.example.test"), second.Leaf.Raw)
		})
	}

	if _, err := agent.Client.KV().Put(&api.KVPair{Key: key, Value: []byte("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")}, nil); err != nil {
		t.Fatal(err)
	}
	consultest.WaitFor(t, 5*time.Second, "the bad value to be refused", func() bool {
		return len(logLines(t, logs, "operator certificate refused; the previous one keeps serving")) == 1
	})
	if got := metric(t, regA, "edge_tls_operator_certificate_errors_total", "source", "consul", "reason", "invalid"); got != 1 {
		t.Errorf("consul invalid errors = %v, want 1", got)
	}
	if l := logLines(t, logs, "operator certificate refused; the previous one keeps serving")[0]; l["source"] != "consul:"+key {
		t.Errorf("log line %v", l)
	}
	if !bytes.Equal(served(addrA, "acme.example.test"), second.Leaf.Raw) {
		t.Error("the previous certificate is not served any more")
	}

	if _, err := agent.Client.KV().Delete(key, nil); err != nil {
		t.Fatal(err)
	}
	zone := a.mem.get(a.zone.name).cert.Leaf.Raw
	consultest.WaitFor(t, 5*time.Second, "the zone's certificate once the operator's is deleted", func() bool {
		return bytes.Equal(served(addrA, "acme.example.test"), zone)
	})
}

// selfSignedNoSAN makes a certificate whose only name is its subject's
// common name, which clients no longer accept.
func selfSignedNoSAN(t testing.TB, now time.Time) *tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "www.example.com"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}
