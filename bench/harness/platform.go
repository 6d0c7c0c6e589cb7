package harness

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/podedge/podedge/internal/child"
	"github.com/podedge/podedge/router"
)

// backendProc is one of the two app servers every HTTP system drives.
type backendProc struct {
	name, addr string
	proc       *child.Process
}

// mainTenants are the tenants of the HTTP and DNS runs: acme and nine
// others, so that lookups are not of a table of one.
func mainTenants() []string {
	names := []string{tenant}
	for i := 1; i < 10; i++ {
		names = append(names, fmt.Sprintf("tenant-%d", i))
	}
	return names
}

// podIPs are the 13 public addresses of the pod's edges: the bench edge's
// (192.0.2.1) and twelve edges registered for DNS only.
func podIPs() []string {
	var ips []string
	for i := 1; i <= 13; i++ {
		ips = append(ips, "192.0.2."+strconv.Itoa(i))
	}
	return ips
}

// setUpPlatform starts the two backends, registered in Consul as app
// servers of the pod, and writes the pod, the ten tenants and the twelve
// DNS-only edges.
func (h *harness) setUpPlatform(ctx context.Context) error {
	for i := 1; i <= 2; i++ {
		addr, err := freeAddr()
		if err != nil {
			return err
		}
		b := &backendProc{name: fmt.Sprintf("app-%d", i), addr: addr}
		if err := h.startBackend(b); err != nil {
			return err
		}
		h.backends = append(h.backends, b)
	}
	if err := h.waitBackends(ctx); err != nil {
		return err
	}
	if err := putJSON(h.consul, mainPrefix+"pods/"+pod, router.Pod{Name: pod, Region: "local", Capacity: 1_000_000}); err != nil {
		return err
	}
	for _, name := range mainTenants() {
		if err := putJSON(h.consul, mainPrefix+"tenants/"+name, router.Tenant{Name: name, Pod: pod, Created: time.Now().UTC()}); err != nil {
			return err
		}
	}
	for i, ip := range podIPs()[1:] {
		if err := registerEdge(h.consul, fmt.Sprintf("dns-edge-%d", i+2), pod, ip, 1); err != nil {
			return err
		}
	}
	h.say("consul at %s; backends %s and %s; server CPUs %q, client CPUs %q, backends on the %s CPUs",
		h.consulAddr, h.backends[0].addr, h.backends[1].addr, h.cpus.Server, h.cpus.Client, h.opts.Apps)
	return nil
}

// startBackend (re)starts b on its address, on the CPUs Options.Apps
// names, registered in Consul with a 1s HTTP check.
func (h *harness) startBackend(b *backendProc) error {
	cpus := h.cpus.Server
	if h.opts.Apps == AppsWithClient {
		cpus = h.cpus.Client
	}
	p, err := h.start(b.name, cpus, nil, h.bin("backend"),
		"-listen", b.addr, "-name", b.name, "-pod", pod, "-consul", h.consulAddr)
	if err != nil {
		return err
	}
	b.proc = p
	return nil
}

// waitBackends waits until both backends answer and pass their Consul
// checks.
func (h *harness) waitBackends(ctx context.Context) error {
	var procs []*child.Process
	for _, b := range h.backends {
		procs = append(procs, b.proc)
	}
	return h.waitFor(ctx, time.Minute, "both backends to pass their Consul checks", func() bool {
		return passing(h.consul, "app") == len(h.backends)
	}, procs...)
}

// probe fetches path from addr with the bench's Host and returns the status
// and the X-App-Server that answered.
func probe(client *http.Client, addr, path string) (int, string, error) {
	return probeHost(client, addr, host, path)
}

// probeHost is probe for another tenant's host.
func probeHost(client *http.Client, addr, hostname, path string) (int, string, error) {
	code, app, _, err := probeURL(client, "http://"+addr+path, hostname)
	return code, app, err
}

// probeURL fetches url with Host hostname and returns the status, the
// X-App-Server that answered and the protocol ("HTTP/1.1", "HTTP/2.0").
func probeURL(client *http.Client, url, hostname string) (int, string, string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, "", "", err
	}
	req.Host = hostname
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get("X-App-Server"), resp.Proto, nil
}

// newProbeClient is an HTTP client for probes, with short timeouts.
func newProbeClient() *http.Client {
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
}

// newTLSProbeClient is a probe client over HTTPS that sends the bench's
// Host as SNI and trusts the bench's certificate alone, so that a system
// serving any other fails the probe; h2 offers HTTP/2 by ALPN, otherwise
// HTTP/1.1 only.
func newTLSProbeClient(f *tlsFiles, h2 bool) *http.Client {
	t := &http.Transport{MaxIdleConnsPerHost: 4, ForceAttemptHTTP2: h2,
		TLSClientConfig: &tls.Config{ServerName: host, RootCAs: f.pool, MinVersion: tls.VersionTLS13}}
	if !h2 {
		t.TLSClientConfig.NextProtos = []string{"http/1.1"}
	}
	return &http.Client{Timeout: 2 * time.Second, Transport: t}
}

// waitServing waits until addr answers 200 for the bench's Host, through
// both backends. With tls, it asks over HTTPS, with the Host as SNI and the
// bench's certificate as the only root, over HTTP/2 and over HTTP/1.1 (by
// ALPN): both must reach both backends.
func (h *harness) waitServing(ctx context.Context, name, addr string, tls *tlsFiles, p *child.Process) error {
	clients := map[string]*http.Client{"": newProbeClient()}
	scheme, what := "http", name+" to serve "+host+" from both backends"
	if tls != nil {
		scheme, what = "https", name+" to serve "+host+" over HTTPS, HTTP/2 and HTTP/1.1, from both backends"
		clients = map[string]*http.Client{"HTTP/2.0": newTLSProbeClient(tls, true), "HTTP/1.1": newTLSProbeClient(tls, false)}
	}
	defer func() {
		for _, c := range clients {
			c.CloseIdleConnections()
		}
	}()
	seen := map[string]bool{}
	return h.waitFor(ctx, h.startWait(), what, func() bool {
		for want, client := range clients {
			code, app, proto, err := probeURL(client, scheme+"://"+addr+"/bytes/1", host)
			if err == nil && code == http.StatusOK && (want == "" || proto == want) {
				seen[want+" "+app] = true
			}
		}
		return len(seen) >= len(clients)*len(h.backends)
	}, p)
}

// startWait bounds the wait for a server to serve: a minute, and half a
// second more per thousand tenants, which it reads first (a million: about
// two minutes on the bench's machine).
func (h *harness) startWait() time.Duration {
	return time.Minute + time.Duration(h.opts.Tenants/1000)*time.Second/2
}
