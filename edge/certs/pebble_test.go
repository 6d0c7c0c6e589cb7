package certs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podedge/podedge/internal/child"
	"github.com/podedge/podedge/internal/consultest"
)

// pebbleBinary is Debian's pebble package (make test / .ci/run install it).
const pebbleBinary = "/usr/bin/pebble"

// pebble is a running Pebble, Let's Encrypt's test ACME server, with its
// own throwaway CA for its HTTPS, validating challenges for real: it
// resolves names through dnsAddr (podedge's dnsd) and connects to httpPort
// (HTTP-01) and tlsPort (TLS-ALPN-01) of the address it finds.
type pebble struct {
	dir    string         // ACME directory URL
	caFile string         // PEM of the CA of Pebble's own HTTPS (acme.ca)
	roots  *x509.CertPool // Pebble's issuing root, from /roots/0
	out    *consultest.SyncBuffer
}

// startPebble runs Pebble until the test ends. Random VA sleeps are off
// (PEBBLE_VA_NOSLEEP) and so are the deliberately rejected nonces, which
// only slow the tests; validation is real (PEBBLE_VA_ALWAYS_VALID unset),
// every time: Pebble would otherwise reuse half of the valid
// authorizations in a new order (PEBBLE_AUTHZREUSE, 50 by default), and a
// renewal would prove nothing. Pebble 2.4 asks dnsAddr over UDP, three
// times per challenge, and wants every answer right.
func startPebble(t *testing.T, dnsAddr string, httpPort, tlsPort int) *pebble {
	t.Helper()
	if _, err := os.Stat(pebbleBinary); err != nil {
		if testing.Short() {
			t.Skip("no pebble: apt-get install pebble")
		}
		t.Fatalf("no pebble at %s (apt-get install pebble): %v", pebbleBinary, err)
	}
	dir := t.TempDir()
	caFile := writeServerCert(t, dir)
	ports := consultest.FreePorts(t, 2)
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":                  net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])),
		"managementListenAddress":        net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1])),
		"certificate":                    filepath.Join(dir, "cert.pem"),
		"privateKey":                     filepath.Join(dir, "key.pem"),
		"httpPort":                       httpPort,
		"tlsPort":                        tlsPort,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
	}}
	raw, _ := json.Marshal(cfg)
	cfgFile := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(cfgFile, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	out := &consultest.SyncBuffer{}
	proc, err := child.Start(child.Spec{Name: "pebble", LogDir: dir, Bin: pebbleBinary,
		Args: []string{"-config", cfgFile, "-dnsserver", dnsAddr},
		Env:  []string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0"}, Stdout: out, Stderr: out})
	if err != nil {
		t.Fatalf("start pebble: %v", err)
	}
	t.Cleanup(func() {
		proc.Kill()
		if t.Failed() {
			t.Logf("pebble output:\n%s", out.String())
		}
	})

	p := &pebble{dir: fmt.Sprintf("https://127.0.0.1:%d/dir", ports[0]), caFile: caFile, out: out}
	pool, err := loadRoots(caFile)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	var rootPEM []byte
	consultest.WaitFor(t, 20*time.Second, "pebble to serve its directory and root", func() bool {
		select {
		case <-proc.Done():
			t.Fatalf("pebble exited:\n%s", out.String())
		default:
		}
		resp, err := c.Get(p.dir)
		if err != nil {
			return false
		}
		resp.Body.Close()
		resp, err = c.Get(fmt.Sprintf("https://127.0.0.1:%d/roots/0", ports[1]))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		rootPEM, _ = io.ReadAll(resp.Body)
		return resp.StatusCode == http.StatusOK
	})
	p.roots = x509.NewCertPool()
	if !p.roots.AppendCertsFromPEM(rootPEM) {
		t.Fatalf("pebble's /roots/0 is not PEM: %q", rootPEM)
	}
	return p
}

// orders is how many orders Pebble has created.
func (p *pebble) orders() int { return strings.Count(p.out.String(), "Added order") }

// validated is how many authorizations Pebble has validated, and failed.
func (p *pebble) validated() (valid, invalid int) {
	out := p.out.String()
	return strings.Count(out, " set VALID by completed challenge"), strings.Count(out, " set INVALID by completed challenge")
}

// writeServerCert makes a CA and, signed by it, a certificate for
// 127.0.0.1 and localhost, for Pebble's HTTPS; it returns the CA's file.
func writeServerCert(t *testing.T, dir string) string {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "podedge test CA for pebble"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	write := func(name string, blocks ...*pem.Block) {
		var b bytes.Buffer
		for _, bl := range blocks {
			_ = pem.Encode(&b, bl)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("cert.pem", &pem.Block{Type: "CERTIFICATE", Bytes: der})
	write("key.pem", &pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	write("ca.pem", &pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	return filepath.Join(dir, "ca.pem")
}

// loadRoots reads a PEM file of CA certificates.
func loadRoots(file string) (*x509.CertPool, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(raw) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}
