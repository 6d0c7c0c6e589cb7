package harness

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/miekg/dns"
	"github.com/podedge/podedge/internal/child"
)

// DNSResult is one dnsperf run.
type DNSResult struct {
	QPS float64
	// Sent and Lost are queries sent and left unanswered (after a 1 s
	// timeout).
	Sent, Lost int64
	AvgLatency time.Duration
	// ServerCPU and ClientCPU are the CPU use of the server and of
	// dnsperf, in CPUs.
	ServerCPU, ClientCPU float64
}

// dnsperf settings: 4 client sockets (so that SO_REUSEPORT spreads them
// over the servers' sockets), at most 200 queries outstanding, one thread
// (it runs on the client CPUs).
const (
	dnsperfClients     = "4"
	dnsperfOutstanding = "200"
)

// dnsPhase measures dnsd, Knot and NSD with dnsperf on one query mix, the
// three serving the same records.
func (h *harness) dnsPhase(ctx context.Context) error {
	if h.mainEdge == nil {
		// The HTTP phase did not run (Options.Phases): its edge, the pod's
		// thirteenth, stands in as one registered for DNS only.
		if err := registerEdge(h.consul, "dns-edge-1", pod, podIPs()[0], 1); err != nil {
			return err
		}
	}
	dnsd, err := h.mainDnsdServer(ctx)
	if err != nil {
		return err
	}
	systems := []*server{dnsd}
	if !h.skip("knot") || !h.skip("nsd") {
		if _, err := h.render("example.test.zone.tmpl", "example.test.zone", map[string]any{
			"Zone": zone, "Pod": pod, "PodIPs": podIPs(), "Tenants": mainTenants(),
		}); err != nil {
			return err
		}
	}
	if !h.skip("knot") {
		s, err := h.startKnot(ctx)
		if err != nil {
			return err
		}
		systems = append(systems, s)
	}
	if !h.skip("nsd") {
		s, err := h.startNSD(ctx)
		if err != nil {
			return err
		}
		systems = append(systems, s)
	}
	for _, s := range systems {
		sizes, err := checkAnswers(s.addr)
		if err != nil {
			return fmt.Errorf("%s does not serve the bench's records: %w", s.name, err)
		}
		h.report.DNSSizes = append(h.report.DNSSizes, DNSSizes{System: s.name, Bytes: sizes})
	}
	h.say("dns: %d systems, %d rounds of %s", len(systems), h.opts.Rounds, h.opts.Duration)
	for _, s := range systems {
		if _, err := h.measureDNS(ctx, s, min(h.opts.Duration, time.Second)); err != nil {
			return fmt.Errorf("warm-up of %s: %w", s.name, err)
		}
	}
	for round := 1; round <= h.opts.Rounds; round++ {
		for _, s := range rotated(systems, round) {
			res, err := h.measureDNS(ctx, s, h.opts.Duration)
			if err != nil {
				return fmt.Errorf("%s, round %d: %w", s.name, round, err)
			}
			h.report.addDNS("mix", s.name, res)
			h.say("dns round %d %-5s %9.0f q/s  lost %d of %d  avg %s  CPU server %.2f client %.2f",
				round, s.name, res.QPS, res.Lost, res.Sent, res.AvgLatency.Round(time.Microsecond), res.ServerCPU, res.ClientCPU)
		}
	}
	for _, s := range systems {
		h.report.addMemory("dns", s.name, s.peakRSS())
		if s != dnsd {
			s.stop()
		}
	}
	return h.dnsVariants(ctx, dnsd)
}

// startDnsd runs dnsd on the server CPUs, reading prefix, and waits until
// it answers the pod with 13 addresses.
func (h *harness) startDnsd(ctx context.Context, name, prefix string) (*server, error) {
	return h.startDnsdWith(ctx, name, prefix, 0, "")
}

// startDnsdWith is startDnsd with rate limiting at rrl a second (0: off)
// and signing with the key in keyFile ("": unsigned).
func (h *harness) startDnsdWith(ctx context.Context, name, prefix string, rrl int, keyFile string) (*server, error) {
	addrs, err := freePortsAddrs(2)
	if err != nil {
		return nil, err
	}
	cfg, err := h.render("dnsd.yaml.tmpl", name+".yaml", map[string]any{"CPUs": h.cpus.ServerCount, "Prefix": prefix, "RRL": rrl, "KeyFile": keyFile})
	if err != nil {
		return nil, err
	}
	p, err := h.start(name, h.cpus.Server, nil, h.bin("dnsd"),
		"-config", cfg, "-listen", addrs[0], "-admin", addrs[1], "-consul", h.consulAddr, "-zone", zone)
	if err != nil {
		return nil, err
	}
	s := &server{name: "dnsd", addr: addrs[0], admin: addrs[1], procs: []*child.Process{p}}
	podName := pod + ".pods." + zone
	err = h.waitFor(ctx, h.startWait(), name+" to answer "+podName+" with 13 addresses", func() bool {
		r, err := ask(s.addr, podName, dns.TypeA)
		return err == nil && len(r.Answer) == 13
	}, p)
	return s, err
}

// dnsData is what the Knot and NSD templates are filled with.
func (h *harness) dnsData(name, addr string) (map[string]any, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	dir := h.path(name)
	if err := mkdirAll(dir); err != nil {
		return nil, err
	}
	return map[string]any{
		"Dir": dir, "ListenAt": host + "@" + port, "CPUs": h.cpus.ServerCount,
		"Zone": zone, "ZoneFile": h.path("example.test.zone"),
	}, nil
}

// startKnot runs knotd on the server CPUs.
func (h *harness) startKnot(ctx context.Context) (*server, error) {
	return h.startKnotAs(ctx, "knot", false)
}

// startKnotAs runs knotd as name, signing the zone itself when dnssec.
func (h *harness) startKnotAs(ctx context.Context, name string, dnssec bool) (*server, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	data, err := h.dnsData(name, addr)
	if err != nil {
		return nil, err
	}
	data["DNSSEC"] = dnssec
	if err := mkdirAll(filepath.Join(data["Dir"].(string), "knot-db")); err != nil {
		return nil, err
	}
	cfg, err := h.render("knot.conf.tmpl", name+".conf", data)
	if err != nil {
		return nil, err
	}
	bin, err := LookTool("knotd")
	if err != nil {
		return nil, err
	}
	p, err := h.start(name, h.cpus.Server, nil, bin, "-c", cfg)
	if err != nil {
		return nil, err
	}
	s := &server{name: "knot", addr: addr, procs: []*child.Process{p}}
	return s, h.waitAnswers(ctx, s, p)
}

// startNSD runs nsd in the foreground on the server CPUs.
func (h *harness) startNSD(ctx context.Context) (*server, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	data, err := h.dnsData("nsd", addr)
	if err != nil {
		return nil, err
	}
	cfg, err := h.render("nsd.conf.tmpl", "nsd.conf", data)
	if err != nil {
		return nil, err
	}
	bin, err := LookTool("nsd")
	if err != nil {
		return nil, err
	}
	p, err := h.start("nsd", h.cpus.Server, nil, bin, "-d", "-c", cfg)
	if err != nil {
		return nil, err
	}
	s := &server{name: "nsd", addr: addr, procs: []*child.Process{p}}
	return s, h.waitAnswers(ctx, s, p)
}

// waitAnswers waits until s answers the zone's SOA.
func (h *harness) waitAnswers(ctx context.Context, s *server, p *child.Process) error {
	return h.waitFor(ctx, time.Minute, s.name+" to answer the SOA of "+zone, func() bool {
		r, err := ask(s.addr, zone, dns.TypeSOA)
		return err == nil && r.Rcode == dns.RcodeSuccess && len(r.Answer) == 1
	}, p)
}

// ask sends one query over UDP.
func ask(addr, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Timeout: time.Second}
	r, _, err := c.Exchange(m, addr)
	return r, err
}

// checkAnswers asks addr the four questions of the mix, checks that the
// answers are those of the bench's records, and returns each response's
// size in bytes, in the mix's order.
func checkAnswers(addr string) ([]int, error) {
	podName := pod + ".pods." + zone
	checks := []struct {
		name  string
		qtype uint16
		check func(*dns.Msg) error
	}{
		{podName, dns.TypeA, func(r *dns.Msg) error { return count(r, dns.RcodeSuccess, dns.TypeA, 13) }},
		{tenant + "." + zone, dns.TypeA, func(r *dns.Msg) error {
			if err := count(r, dns.RcodeSuccess, dns.TypeCNAME, 1); err != nil {
				return err
			}
			return count(r, dns.RcodeSuccess, dns.TypeA, 13)
		}},
		{podName, dns.TypeMX, func(r *dns.Msg) error { return count(r, dns.RcodeSuccess, dns.TypeMX, 2) }},
		{missing + "." + zone, dns.TypeA, func(r *dns.Msg) error { return count(r, dns.RcodeNameError, dns.TypeA, 0) }},
	}
	var sizes []int
	for _, c := range checks {
		r, err := ask(addr, c.name, c.qtype)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", c.name, dns.TypeToString[c.qtype], err)
		}
		if err := c.check(r); err != nil {
			return nil, fmt.Errorf("%s %s: %w", c.name, dns.TypeToString[c.qtype], err)
		}
		if !r.Authoritative {
			return nil, fmt.Errorf("%s %s: answer is not authoritative", c.name, dns.TypeToString[c.qtype])
		}
		// The size on the wire: with name compression, as every server
		// sends it.
		r.Compress = true
		sizes = append(sizes, r.Len())
	}
	return sizes, nil
}

// count checks r's rcode and the number of records of type t in its answer.
func count(r *dns.Msg, rcode int, t uint16, want int) error {
	if r.Rcode != rcode {
		return fmt.Errorf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[rcode])
	}
	n := 0
	for _, rr := range r.Answer {
		if rr.Header().Rrtype == t {
			n++
		}
	}
	if n != want {
		return fmt.Errorf("%d %s records, want %d", n, dns.TypeToString[t], want)
	}
	return nil
}

// measureDNS runs dnsperf against s for d.
func (h *harness) measureDNS(ctx context.Context, s *server, d time.Duration) (DNSResult, error) {
	return h.measureDNSWith(ctx, s, d, false)
}

// measureDNSWith is measureDNS, with the DO bit set in every query when do.
func (h *harness) measureDNSWith(ctx context.Context, s *server, d time.Duration, do bool) (DNSResult, error) {
	bin, err := LookTool("dnsperf")
	if err != nil {
		return DNSResult{}, err
	}
	ip, port, err := net.SplitHostPort(s.addr)
	if err != nil {
		return DNSResult{}, err
	}
	pgids := s.pgids()
	before, start := cpuTicks(pgids...), time.Now()
	var out bytes.Buffer
	args := []string{
		"-s", ip, "-p", port, "-d", h.path("queries.txt"),
		"-l", strconv.FormatFloat(d.Seconds(), 'f', 3, 64), "-t", "1",
		"-c", dnsperfClients, "-T", "1", "-q", dnsperfOutstanding,
	}
	if do {
		args = append(args, "-D")
	}
	clientCPU, err := h.runClient(ctx, child.Spec{Name: "dnsperf", Stdout: &out, Bin: bin, Args: args}, 0)
	if err != nil {
		return DNSResult{}, fmt.Errorf("dnsperf: %w: %s", err, out.String())
	}
	cpu := float64(cpuTicks(pgids...)-before) / clockTicks / time.Since(start).Seconds()
	res, err := parseDnsperf(out.String())
	res.ServerCPU, res.ClientCPU = cpu, clientCPU
	return res, err
}

var (
	dnsperfSent    = regexp.MustCompile(`Queries sent:\s+(\d+)`)
	dnsperfLost    = regexp.MustCompile(`Queries lost:\s+(\d+)`)
	dnsperfQPS     = regexp.MustCompile(`Queries per second:\s+([\d.]+)`)
	dnsperfLatency = regexp.MustCompile(`Average Latency \(s\):\s+([\d.]+)`)
)

// parseDnsperf reads dnsperf's summary.
func parseDnsperf(out string) (DNSResult, error) {
	field := func(re *regexp.Regexp) (float64, error) {
		m := re.FindStringSubmatch(out)
		if m == nil {
			return 0, fmt.Errorf("dnsperf output has no %q: %s", re.String(), out)
		}
		return strconv.ParseFloat(m[1], 64)
	}
	var res DNSResult
	sent, err := field(dnsperfSent)
	if err != nil {
		return res, err
	}
	lost, err := field(dnsperfLost)
	if err != nil {
		return res, err
	}
	if res.QPS, err = field(dnsperfQPS); err != nil {
		return res, err
	}
	lat, err := field(dnsperfLatency)
	if err != nil {
		return res, err
	}
	res.Sent, res.Lost = int64(sent), int64(lost)
	res.AvgLatency = time.Duration(lat * float64(time.Second))
	return res, nil
}
