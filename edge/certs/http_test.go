package certs

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/podedge/podedge/internal/consultest"
)

// plainGet sends GET http://<addr><path> with Host host, from the local
// address from when not empty, without following redirects.
func plainGet(t *testing.T, addr, host, path, from string) (int, http.Header, string) {
	t.Helper()
	d := &net.Dialer{Timeout: 10 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	req.Host = host
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET http://%s%s: %v", host, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// TestPlainHTTP: with HTTPS on, a plain request for a known host gets 308
// to https (same host, path and query; the HTTPS port); an ACME challenge
// is not redirected but answered, by any edge, from what the edge that
// ordered stored; unknown hosts and requests forwarded by another edge go
// to the proxy; redirect: false turns redirects off.
func TestPlainHTTP(t *testing.T) {
	p := newPlatform(t, false)
	a := p.startEdge(edgeIPs[0], nil)
	b := p.startEdge(edgeIPs[1], nil)
	c := p.startEdge(edgeIPs[2], func(c *Config) { c.Redirect = false })
	p.waitDNS(acmeHost, a.ip, b.ip, c.ip)

	code, h, _ := plainGet(t, a.httpAddr, "ACME.example.test:80", "/some/path?x=1&y=%2F", "")
	want := fmt.Sprintf("https://acme.example.test:%d/some/path?x=1&y=%%2F", p.tlsPort)
	if code != http.StatusPermanentRedirect || h.Get("Location") != want {
		t.Errorf("plain request: %d Location %q, want 308 %q", code, h.Get("Location"), want)
	}

	// A challenge nobody started: 404, not a redirect.
	if code, _, _ := plainGet(t, a.httpAddr, acmeHost, challengePath+"no-such-token", ""); code != http.StatusNotFound {
		t.Errorf("unknown challenge: %d, want 404", code)
	}
	// A challenge stored by edge a is answered by edge b.
	if err := a.m.Cache().Put(t.Context(), "tok_en-1+http-01", []byte("tok_en-1.thumbprint")); err != nil {
		t.Fatal(err)
	}
	code, _, body := plainGet(t, b.httpAddr, acmeHost, challengePath+"tok_en-1", "")
	if code != http.StatusOK || body != "tok_en-1.thumbprint" {
		t.Errorf("challenge from another edge: %d %q, want 200 with the key authorization", code, body)
	}

	// Unknown host: the proxy's answer, not a redirect.
	if code, _, _ := plainGet(t, a.httpAddr, "nobody.example.test", "/", ""); code == http.StatusPermanentRedirect {
		t.Error("unknown host redirected")
	}
	// From another edge: proxied, not bounced back.
	consultest.WaitFor(t, 10*time.Second, "edge b in edge a's snapshot", func() bool {
		return len(a.e.Router().Snapshot().Pod("pod-1").Edges) == 3
	})
	code, _, body = plainGet(t, a.httpAddr, acmeHost, "/from-edge", b.ip)
	if code != http.StatusOK || body != "app of pod-1 for acme.example.test/from-edge" {
		t.Errorf("request from another edge: %d %q, want the app's 200", code, body)
	}
	// redirect: false.
	code, _, body = plainGet(t, c.httpAddr, acmeHost, "/plain", "")
	if code != http.StatusOK || body != "app of pod-1 for acme.example.test/plain" {
		t.Errorf("with redirect off: %d %q, want the app's 200", code, body)
	}
}
