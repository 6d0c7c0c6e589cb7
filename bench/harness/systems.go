package harness

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/podedge/podedge/internal/child"
	"github.com/podedge/podedge/internal/freeport"
)

// server is a system under test: where its clients connect and the
// processes whose CPU time and memory are its own.
type server struct {
	name string
	// addr is where clients connect. For "direct", addrs holds both
	// backends and addr the first.
	addr  string
	addrs []string
	// admin is the edge's and dnsd's admin listener.
	admin string
	procs []*child.Process
}

// pgids returns the process groups of the server.
func (s *server) pgids() []int {
	var out []int
	for _, p := range s.procs {
		out = append(out, p.Pid())
	}
	return out
}

// peakRSS is the sum of the peak resident sets of the server's processes,
// in KiB.
func (s *server) peakRSS() int64 { return groupMemKiB("VmHWM", s.pgids()...) }

// rss is the sum of the resident sets of the server's processes now.
func (s *server) rss() int64 { return groupMemKiB("VmRSS", s.pgids()...) }

// stop stops the server's processes.
func (s *server) stop() {
	for _, p := range s.procs {
		p.Stop(10 * time.Second)
	}
}

// edgeSpec names one edge instance: its Consul service ID (and process
// name), the KV prefix it reads and the public IP DNS hands out for it.
// With tls, it serves HTTPS with that certificate.
type edgeSpec struct {
	name, prefix, publicIP string
	tls                    *tlsFiles
}

// unreachableACME is the ACME directory of an edge serving HTTPS in the
// bench: nothing listens on port 1, so the zone's order fails at once.
const unreachableACME = "https://127.0.0.1:1/directory"

// startEdge runs an edge of the pod on the server CPUs, with metrics and
// the access log on, and waits until it serves the bench's Host. With
// e.tls, the server's addr is the HTTPS listener.
func (h *harness) startEdge(ctx context.Context, e edgeSpec) (*server, error) {
	addrs, err := freePortsAddrs(3)
	if err != nil {
		return nil, err
	}
	cfg, err := h.render("edge.yaml.tmpl", e.name+".yaml", map[string]any{"ServiceID": e.name, "Prefix": e.prefix, "TLS": e.tls})
	if err != nil {
		return nil, err
	}
	args := []string{"-config", cfg, "-pod", pod, "-http", addrs[0], "-admin", addrs[1],
		"-public-ip", e.publicIP, "-consul", h.consulAddr, "-zone", zone}
	if e.tls != nil {
		args = append(args, "-https", addrs[2], "-acme-directory", unreachableACME)
	}
	p, err := h.startSpec(child.Spec{
		Name: e.name, CPUs: h.cpus.Server, Bin: h.bin("edge"),
		StdoutFile: h.path(e.name + "-access.log"), Args: args,
	})
	if err != nil {
		return nil, err
	}
	s := &server{name: "edge", addr: addrs[0], admin: addrs[1], procs: []*child.Process{p}}
	if e.tls != nil {
		s.addr = addrs[2]
	}
	if err := h.waitServing(ctx, e.name, s.addr, e.tls, p); err != nil {
		return nil, err
	}
	return s, nil
}

// startNginx runs nginx from bench/configs/nginx.conf.tmpl on the server
// CPUs; with tls, over HTTPS (HTTP/2 and HTTP/1.1).
func (h *harness) startNginx(ctx context.Context, name string, tls *tlsFiles) (*server, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	cfg, err := h.render("nginx.conf.tmpl", name+".conf", map[string]any{
		"Dir": h.path(name), "User": rootUser(), "Listen": addr, "Host": host, "Backends": h.backendAddrs(), "TLS": tls,
	})
	if err != nil {
		return nil, err
	}
	if err := mkdirAll(h.path(name)); err != nil {
		return nil, err
	}
	bin, err := LookTool("nginx")
	if err != nil {
		return nil, err
	}
	p, err := h.start(name, h.cpus.Server, nil, bin, "-p", h.path(name), "-c", cfg, "-e", h.path(name, "nginx-error.log"))
	if err != nil {
		return nil, err
	}
	// nginx stops at once on SIGTERM; its workers go with the master.
	s := &server{name: "nginx", addr: addr, procs: []*child.Process{p}}
	if err := h.waitServing(ctx, name, addr, tls, p); err != nil {
		return nil, err
	}
	return s, nil
}

// startHAProxy runs HAProxy from bench/configs/haproxy.cfg.tmpl on the
// server CPUs, its access log on standard output; with tls, over HTTPS
// (HTTP/2 and HTTP/1.1).
func (h *harness) startHAProxy(ctx context.Context, name string, tls *tlsFiles) (*server, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	cfg, err := h.render("haproxy.cfg.tmpl", name+".cfg", map[string]any{
		"Listen": addr, "Host": host, "Backends": h.backendAddrs(), "TLS": tls,
	})
	if err != nil {
		return nil, err
	}
	bin, err := LookTool("haproxy")
	if err != nil {
		return nil, err
	}
	p, err := h.startSpec(child.Spec{Name: name, CPUs: h.cpus.Server, Bin: bin,
		StdoutFile: h.path(name + "-access.log"), Args: []string{"-db", "-f", cfg}})
	if err != nil {
		return nil, err
	}
	s := &server{name: "haproxy", addr: addr, procs: []*child.Process{p}}
	if err := h.waitServing(ctx, name, addr, tls, p); err != nil {
		return nil, err
	}
	return s, nil
}

// startForwarder runs a bare forwarder on the server CPUs: bin is
// "forwarder" (fasthttp, a goroutine per connection) or "loopforwarder"
// (the same on epoll loops).
func (h *harness) startForwarder(ctx context.Context, bin string) (*server, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	p, err := h.start(bin, h.cpus.Server, nil, h.bin(bin),
		"-listen", addr, "-upstreams", strings.Join(h.backendAddrs(), ","))
	if err != nil {
		return nil, err
	}
	s := &server{name: bin, addr: addr, procs: []*child.Process{p}}
	if err := h.waitServing(ctx, bin, addr, nil, p); err != nil {
		return nil, err
	}
	return s, nil
}

// direct is the backends themselves, driven without a proxy.
func (h *harness) direct() *server {
	s := &server{name: "direct", addr: h.backends[0].addr, addrs: h.backendAddrs()}
	for _, b := range h.backends {
		s.procs = append(s.procs, b.proc)
	}
	return s
}

func (h *harness) backendAddrs() []string {
	var out []string
	for _, b := range h.backends {
		out = append(out, b.addr)
	}
	return out
}

// path is a file or folder in the run's folder.
func (h *harness) path(elem ...string) string {
	return filepath.Join(append([]string{h.dir}, elem...)...)
}

func freePortsAddrs(n int) ([]string, error) {
	ports, err := freeport.Ports(n)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range ports {
		out = append(out, fmt.Sprintf("127.0.0.1:%d", p))
	}
	return out, nil
}
