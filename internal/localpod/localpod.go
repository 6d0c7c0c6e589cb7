package localpod

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"
	"github.com/podedge/podedge/internal/child"
)

// Options says where the programs and configuration files are.
type Options struct {
	// Bin is the folder holding edge, dnsd, leader and backend.
	Bin string
	// Consul is the consul binary.
	Consul string
	// Configs is the folder of the local platform's configuration files
	// (configs/local).
	Configs string
	// Logs is where each process's log file goes.
	Logs string
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
	// Timeout bounds the start-up. Zero means 2 minutes.
	Timeout time.Duration
}

// Platform is a running local platform.
type Platform struct {
	Layout Layout
	opts   Options
	consul *api.Client

	mu       sync.Mutex
	procs    []*child.Process // in start order
	stopping bool
}

// Watch calls report, from its own goroutine, for each process that ends
// before Stop is called: it stays down (nothing restarts it), and the
// user should hear of it.
func (p *Platform) Watch(report func(name string, err error)) {
	p.mu.Lock()
	procs := slices.Clone(p.procs)
	p.mu.Unlock()
	for _, proc := range procs {
		go func() {
			<-proc.Done()
			p.mu.Lock()
			stopping := p.stopping
			p.mu.Unlock()
			if !stopping {
				report(proc.Name(), proc.Failure())
			}
		}()
	}
}

// DemoTenant is the tenant Start signs up in the first pod.
const DemoTenant = "demo"

// Start checks that every address is free, starts every process, waits until
// the platform is healthy, registers the pods and signs up the demo tenant
// through the leader's API. On any failure it stops what it started and
// returns one error naming the problem.
func Start(ctx context.Context, l Layout, opts Options) (*Platform, error) {
	if opts.Timeout == 0 {
		opts.Timeout = 2 * time.Minute
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	if err := checkFree(l.endpoints()); err != nil {
		return nil, err
	}
	for _, bin := range []string{"edge", "dnsd", "leader", "backend"} {
		if _, err := os.Stat(filepath.Join(opts.Bin, bin)); err != nil {
			return nil, fmt.Errorf("missing binary %s (run make build): %w", bin, err)
		}
	}
	if err := os.MkdirAll(opts.Logs, 0o755); err != nil {
		return nil, fmt.Errorf("log folder: %w", err)
	}
	cfg := api.DefaultConfig()
	cfg.Address = l.ConsulHTTP
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	p := &Platform{Layout: l, opts: opts, consul: client}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	if err := p.start(ctx); err != nil {
		if stopErr := p.Stop(); stopErr != nil {
			err = fmt.Errorf("%w; stopping what started: %v", err, stopErr)
		}
		return nil, err
	}
	return p, nil
}

func (p *Platform) say(format string, args ...any) {
	fmt.Fprintf(p.opts.Progress, format+"\n", args...)
}

// run starts a program logging to <Logs>/<name>.log, truncated: a log holds
// one run of the platform.
func (p *Platform) run(name, bin string, args ...string) error {
	// SIGTERM, for Consul too: the dev agent keeps nothing, and leaving
	// its one-server cluster gracefully (SIGINT) takes 11 s for nothing.
	spec := child.Spec{Name: name, LogDir: p.opts.Logs, Bin: bin, Args: args}
	proc, err := child.Start(spec)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.procs = append(p.procs, proc)
	p.mu.Unlock()
	return nil
}

func (p *Platform) start(ctx context.Context) error {
	l := p.Layout
	bin := func(name string) string { return filepath.Join(p.opts.Bin, name) }
	conf := func(name string) string { return filepath.Join(p.opts.Configs, name) }
	zone := []string{"-consul", l.ConsulHTTP, "-zone", l.Zone}

	consulHost, consulPort, _ := net.SplitHostPort(l.ConsulHTTP)
	p.say("starting consul dev agent on %s (UI at http://%s/ui)", l.ConsulHTTP, l.ConsulHTTP)
	if err := p.run("consul", p.opts.Consul, "agent", "-dev",
		"-config-file", conf("consul.hcl"),
		"-bind", consulHost, "-client", consulHost,
		"-http-port", consulPort,
		"-server-port", strconv.Itoa(l.ConsulServer),
		"-serf-lan-port", strconv.Itoa(l.ConsulSerfLAN),
		"-serf-wan-port", strconv.Itoa(l.ConsulSerfWAN)); err != nil {
		return err
	}
	if err := p.waitFor(ctx, "consul to elect itself leader", func() bool {
		leader, err := p.consul.Status().Leader()
		return err == nil && leader != ""
	}); err != nil {
		return err
	}

	apps := 0
	for _, pod := range l.Pods {
		for i, addr := range pod.Apps {
			apps++
			name := appName(pod.Name, i)
			if err := p.run(name, bin("backend"), "-listen", addr, "-name", name, "-pod", pod.Name, "-consul", l.ConsulHTTP); err != nil {
				return err
			}
		}
	}
	for i, addr := range l.Leaders {
		name := fmt.Sprintf("leader-%d", i+1)
		if err := p.run(name, bin("leader"), append([]string{"-config", conf(name + ".yaml"), "-listen", addr}, zone...)...); err != nil {
			return err
		}
	}
	if err := p.run("dnsd", bin("dnsd"), append([]string{"-config", conf("dnsd.yaml"), "-listen", l.DNS, "-admin", l.DNSAdmin}, zone...)...); err != nil {
		return err
	}
	edges := 0
	for _, pod := range l.Pods {
		for _, e := range pod.Edges {
			edges++
			if err := p.run(e.Name, bin("edge"), append([]string{"-config", conf(e.Name + ".yaml"),
				"-pod", pod.Name, "-http", e.HTTP, "-admin", e.Admin, "-public-ip", e.PublicIP}, zone...)...); err != nil {
				return err
			}
		}
	}
	p.say("started %d app servers, %d leaders, dnsd and %d edges; waiting for them to pass their checks", apps, len(l.Leaders), edges)

	if err := p.waitFor(ctx, fmt.Sprintf("%d passing app servers and %d passing edges in consul", apps, edges), func() bool {
		return p.passing("app") == apps && p.passing("edge") == edges
	}); err != nil {
		return err
	}
	for _, addr := range l.Leaders {
		if err := p.waitFor(ctx, "leader "+addr+" to know its leader", func() bool {
			var v struct {
				Leader string `json:"leader"`
			}
			return getJSON(ctx, "http://"+addr+"/v1/leader", &v) == nil && v.Leader != ""
		}); err != nil {
			return err
		}
	}
	if err := p.waitFor(ctx, "dnsd to answer SOA", func() bool {
		_, err := p.Resolve(l.Zone, dns.TypeSOA)
		return err == nil
	}); err != nil {
		return err
	}

	for _, pod := range l.Pods {
		body := fmt.Sprintf(`{"region":%q,"lat":%v,"lon":%v,"capacity":%d}`, pod.Region, pod.Lat, pod.Lon, pod.Capacity)
		if err := sendJSON(ctx, http.MethodPut, "http://"+l.Leaders[0]+"/v1/pods/"+pod.Name, body, nil); err != nil {
			return fmt.Errorf("register pod %s: %w", pod.Name, err)
		}
	}
	first := l.Pods[0]
	var placed struct {
		Pod string `json:"pod"`
	}
	signup := fmt.Sprintf(`{"name":%q,"lat":%v,"lon":%v}`, DemoTenant, first.Lat, first.Lon)
	if err := sendJSON(ctx, http.MethodPost, "http://"+l.Leaders[len(l.Leaders)-1]+"/v1/tenants", signup, &placed); err != nil {
		return fmt.Errorf("sign up tenant %s: %w", DemoTenant, err)
	}
	p.say("registered %d pods; tenant %s placed in %s", len(l.Pods), DemoTenant, placed.Pod)

	host := DemoTenant + "." + strings.TrimSuffix(l.Zone, ".")
	if err := p.waitFor(ctx, "dnsd to resolve "+host, func() bool {
		ips, err := p.Resolve(host, dns.TypeA)
		return err == nil && len(ips) > 0
	}); err != nil {
		return err
	}
	edge := first.Edges[0].HTTP
	if err := p.waitFor(ctx, "edge "+edge+" to serve "+host, func() bool {
		code, _, err := Get(ctx, edge, host, "/")
		return err == nil && code == http.StatusOK
	}); err != nil {
		return err
	}
	return nil
}

// waitFor polls cond until it holds, a process dies or ctx ends.
func (p *Platform) waitFor(ctx context.Context, what string, cond func() bool) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return nil
		}
		p.mu.Lock()
		procs := p.procs
		p.mu.Unlock()
		for _, proc := range procs {
			if proc.Exited() {
				return proc.Failure()
			}
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("timed out after %s waiting for %s", p.opts.Timeout, what)
			}
			return fmt.Errorf("interrupted while waiting for %s", what)
		case <-tick.C:
		}
	}
}

func (p *Platform) passing(service string) int {
	entries, _, err := p.consul.Health().Service(service, "", true, nil)
	if err != nil {
		return -1
	}
	return len(entries)
}

// Kill ends the named process at once (SIGKILL), as a crash would.
func (p *Platform) Kill(name string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, proc := range p.procs {
		if proc.Name() == name {
			proc.Kill()
			return nil
		}
	}
	return fmt.Errorf("no process %q", name)
}

// Stop stops every process, the data planes first and Consul last, each with
// SIGTERM and a grace period. It returns an error naming any process that
// did not exit cleanly or any address still taken afterwards.
func (p *Platform) Stop() error {
	p.mu.Lock()
	procs := p.procs
	p.procs = nil
	p.stopping = true
	p.mu.Unlock()
	tiers := [][]string{{"edge"}, {"dnsd", "leader"}, {"-app-"}, {"consul"}}
	var errs []error
	stopped := map[*child.Process]bool{}
	for _, tier := range tiers {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, proc := range procs {
			if stopped[proc] || !matches(proc.Name(), tier) {
				continue
			}
			stopped[proc] = true
			wg.Go(func() {
				// A process that had already died (one Kill crashed) is
				// not expected to have exited cleanly.
				wasRunning := !proc.Exited()
				clean := proc.Stop(20 * time.Second)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case !clean:
					errs = append(errs, fmt.Errorf("%s did not stop within 20s and was killed", proc.Name()))
				case proc.Name() == "consul":
					// A server stopped by SIGTERM exits 1 without leaving.
				default:
					if err := proc.CleanExit(); err != nil && wasRunning {
						errs = append(errs, err)
					}
				}
			})
		}
		wg.Wait()
	}
	if err := checkFree(p.Layout.endpoints()); err != nil {
		errs = append(errs, fmt.Errorf("after stop: %w", err))
	}
	return errors.Join(errs...)
}

func matches(name string, tier []string) bool {
	for _, t := range tier {
		if strings.Contains(name, t) {
			return true
		}
	}
	return false
}

// Resolve asks dnsd for name and returns the A (or AAAA) addresses of the
// answer, following nothing: dnsd chases CNAMEs itself.
func (p *Platform) Resolve(name string, qtype uint16) ([]string, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	c := &dns.Client{Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, p.Layout.DNS)
	if err != nil {
		return nil, err
	}
	if r.Rcode != dns.RcodeSuccess {
		return nil, fmt.Errorf("%s: %s", name, dns.RcodeToString[r.Rcode])
	}
	var out []string
	for _, rr := range r.Answer {
		switch v := rr.(type) {
		case *dns.A:
			out = append(out, v.A.String())
		case *dns.AAAA:
			out = append(out, v.AAAA.String())
		}
	}
	return out, nil
}

// Get fetches path from the edge at addr with the given Host and returns
// the status and body.
func Get(ctx context.Context, addr, host, path string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return 0, "", err
	}
	req.Host = host
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

func getJSON(ctx context.Context, url string, v any) error {
	return sendJSON(ctx, http.MethodGet, url, "", v)
}

func sendJSON(ctx context.Context, method, url, body string, v any) error {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	reqCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(reqCtx, method, url, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, bytes.TrimSpace(raw))
	}
	if v != nil {
		return json.Unmarshal(raw, v)
	}
	return nil
}

// TryThis is the block `make run` prints once the platform is healthy.
func (p *Platform) TryThis() string {
	l := p.Layout
	zone := strings.TrimSuffix(l.Zone, ".")
	host := DemoTenant + "." + zone
	dnsHost, dnsPort, _ := net.SplitHostPort(l.DNS)
	e := l.Pods[0].Edges[0]
	edgeHost, edgePort, _ := net.SplitHostPort(e.HTTP)
	var b strings.Builder
	fmt.Fprintf(&b, "podedge is running. Try this:\n\n")
	fmt.Fprintf(&b, "  # resolve the demo tenant through dnsd (a CNAME to its pod, then the pod's edges)\n")
	fmt.Fprintf(&b, "  dig @%s -p %s %s A\n\n", dnsHost, dnsPort, host)
	fmt.Fprintf(&b, "  # load its page through an edge of its pod\n")
	fmt.Fprintf(&b, "  curl --resolve %s:%s:%s http://%s:%s/\n\n", host, edgePort, edgeHost, host, edgePort)
	other := l.Pods[len(l.Pods)-1]
	oe := other.Edges[0]
	oeHost, oePort, _ := net.SplitHostPort(oe.HTTP)
	fmt.Fprintf(&b, "  # sign up a tenant near %s through a leader replica, resolve it, fetch it\n", other.City)
	fmt.Fprintf(&b, "  curl -X POST http://%s/v1/tenants -d '{\"name\":\"acme\",\"lat\":%v,\"lon\":%v}'\n", l.Leaders[len(l.Leaders)-1], other.Lat, other.Lon)
	fmt.Fprintf(&b, "  dig @%s -p %s acme.%s A +short\n", dnsHost, dnsPort, zone)
	fmt.Fprintf(&b, "  curl --resolve acme.%s:%s:%s http://acme.%s:%s/\n\n", zone, oePort, oeHost, zone, oePort)
	fmt.Fprintf(&b, "  # the same through an edge of the other pod: it forwards the request to\n")
	fmt.Fprintf(&b, "  # an edge of %s, and an app server there answers\n", other.Name)
	fmt.Fprintf(&b, "  curl --resolve acme.%s:%s:%s http://acme.%s:%s/\n\n", zone, edgePort, edgeHost, zone, edgePort)
	fmt.Fprintf(&b, "  # metrics and state\n")
	fmt.Fprintf(&b, "  curl http://%s/metrics            # edge\n", e.Admin)
	fmt.Fprintf(&b, "  curl http://%s/debug/routes       # edge routing table\n", e.Admin)
	fmt.Fprintf(&b, "  curl http://%s/metrics            # dnsd\n", l.DNSAdmin)
	fmt.Fprintf(&b, "  curl http://%s/metrics            # leader\n", l.Leaders[0])
	fmt.Fprintf(&b, "  # the Consul UI: http://%s/ui in a browser\n\n", l.ConsulHTTP)
	fmt.Fprintf(&b, "Everything lives in memory: tenants are gone at the next run. A process\n")
	fmt.Fprintf(&b, "that dies stays down (this prints a line). Logs are in %s.\n", p.opts.Logs)
	fmt.Fprintf(&b, "Ctrl-C stops everything.\n")
	return b.String()
}
