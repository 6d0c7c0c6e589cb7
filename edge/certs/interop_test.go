package certs

import (
	"bytes"
	"crypto/tls"
	"net/http"
	"testing"
	"time"

	"github.com/podedge/podedge/internal/consultest"
	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// TestAutocertManagerSharesTheStore: the store is an autocert.Cache. A
// plain autocert.Manager given it orders a certificate for a custom domain
// whose TLS-ALPN-01 challenge the edge answers (the Manager wrote it to
// KV), and the edge then serves that certificate without ordering its own.
func TestAutocertManagerSharesTheStore(t *testing.T) {
	p := newPlatform(t, false)
	a := p.startEdge(edgeIPs[0], nil)
	p.waitDNS(acmeHost, a.ip)
	p.waitZone(a)
	base := p.pebble.orders()

	roots, err := rootsFor(p.pebble.caFile)
	if err != nil {
		t.Fatal(err)
	}
	mgr := &autocert.Manager{
		Prompt:     autocert.AcceptTOS,
		Cache:      NewCache(p.agent.Client, "podedge/", "autocert"),
		HostPolicy: autocert.HostWhitelist(shopHost),
		Client: &acme.Client{DirectoryURL: p.pebble.dir, HTTPClient: &http.Client{
			Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}},
		}},
	}
	cert, err := mgr.GetCertificate(&tls.ClientHelloInfo{
		ServerName:   shopHost,
		CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
	})
	if err != nil {
		t.Fatalf("autocert: %v", err)
	}
	consultest.WaitFor(t, 10*time.Second, "the edge to load autocert's certificate", func() bool {
		return a.m.mem.get(shopHost) != nil
	})
	cs, err := p.handshake(a, shopHost)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cs.PeerCertificates[0].Raw, cert.Certificate[0]) {
		t.Error("the edge serves another certificate than autocert's")
	}
	if n := p.pebble.orders() - base; n != 1 {
		t.Errorf("pebble has %d new orders, want 1 (autocert's)", n)
	}
}
