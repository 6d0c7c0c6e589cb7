package edge

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// curl --http2 and --http1.1 against the same listener: the protocol each
// asked for, routed by the name in the URL, an upload intact.
func TestHTTP2Curl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("no curl")
	}
	a := newBackend(t, "a", nil)
	b := newBackend(t, "b", nil)
	h := newTLSHarness(t, &Proxy{}, twoPods([]*backend{a}, []*backend{b}), defaultHTTP2())
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	writeCAFile(t, h, ca)
	upload := filepath.Join(dir, "upload")
	payload := []byte(strings.Repeat("podedge ", 128<<10)) // 1 MiB
	if err := os.WriteFile(upload, payload, 0o600); err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(h.addr)
	run := func(args ...string) string {
		t.Helper()
		base := []string{"-sS", "--max-time", "30", "--cacert", ca,
			"--resolve", "acme.example.test:" + port + ":127.0.0.1", "--resolve", "beta.example.test:" + port + ":127.0.0.1"}
		out, err := exec.Command(curl, append(base, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("curl %v: %v: %s", args, err, out)
		}
		return string(out)
	}
	for _, tc := range []struct{ flag, host, want string }{
		{"--http2", "acme.example.test", "a 2"}, {"--http2", "beta.example.test", "b 2"},
		{"--http1.1", "acme.example.test", "a 1.1"}, {"--http1.1", "beta.example.test", "b 1.1"},
	} {
		if got := run(tc.flag, "-w", " %{http_version}", "https://"+tc.host+":"+port+"/"); got != tc.want {
			t.Errorf("curl %s %s: %q, want %q", tc.flag, tc.host, got, tc.want)
		}
	}
	sum := sha256.Sum256(payload)
	if got := run("--http2", "--data-binary", "@"+upload, "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
		"https://acme.example.test:"+port+"/up"); got != "200 2" || a.lastRequest().BodySHA != hex.EncodeToString(sum[:]) {
		t.Fatalf("curl upload: %q, the app got %d bytes", got, a.lastRequest().BodyLen)
	}
}

// h2load (nghttp2-client): thousands of requests on multiplexed streams,
// every one answered 2xx, as many requests counted by the proxy.
func TestHTTP2H2load(t *testing.T) {
	h2load, err := exec.LookPath("h2load")
	if err != nil {
		t.Skip("no h2load (apt-get install nghttp2-client)")
	}
	a := newBackend(t, "a", nil)
	reg := prometheus.NewRegistry()
	h := newTLSHarness(t, &Proxy{Metrics: NewMetrics(reg)}, onePod(a), defaultHTTP2())
	const n = 2000
	out, err := exec.Command(h2load, "-n", fmt.Sprint(n), "-c", "4", "-m", "16", "-H", ":authority: acme.example.test",
		"https://"+h.addr+"/").CombinedOutput()
	if err != nil {
		t.Fatalf("h2load: %v: %s", err, out)
	}
	if !regexp.MustCompile(`(?m)^requests: .* `+fmt.Sprint(n)+` succeeded, 0 failed, 0 errored`).Match(out) ||
		!regexp.MustCompile(`(?m)^status codes: `+fmt.Sprint(n)+` 2xx`).Match(out) || !strings.Contains(string(out), "Application protocol: h2") {
		t.Fatalf("h2load:\n%s", out)
	}
	if v := metricValue(t, reg, "edge_requests_total", map[string]string{"pod": "pod-1", "code": "2xx"}); v != n {
		t.Fatalf("%v requests counted, want %d", v, n)
	}
	if v := metricValue(t, reg, "edge_http2_streams_total", map[string]string{"result": "complete"}); v != n {
		t.Fatalf("%v streams counted, want %d", v, n)
	}
}

// writeCAFile writes the certificate the harness serves, which is its own
// root, as PEM.
func writeCAFile(t *testing.T, h *tlsHarness, path string) {
	t.Helper()
	if h.cert == nil {
		t.Fatal("the harness has no certificate")
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: h.cert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
}
