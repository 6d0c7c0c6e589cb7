package harness

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Report is everything a run measured. Markdown renders it.
type Report struct {
	Started, Finished time.Time
	// Command is the command line that ran the bench, for the README.
	Command  string
	Machine  Machine
	Versions []Version
	CPUs     CPUs
	// Apps is where the app servers ran (Options.Apps).
	Apps string
	// ConsulMode is Options.ConsulMode.
	ConsulMode string
	Rounds     int
	Duration   time.Duration
	// FailureDuration is the length of each failure run.
	FailureDuration time.Duration
	Quick           bool

	// HTTP and DNS hold every round, by workload then system, in the
	// order they first ran.
	HTTP []*HTTPRow
	// HTTPS holds the HTTPS phase's rounds, the same way.
	HTTPS    []*HTTPRow
	DNS      []*DNSRow
	Failure  []*FailureRow
	Memory   []MemoryRow
	DNSSizes []DNSSizes
	Scale    *ScaleResult
	Signups  *SignupResult
	// Isolation holds the rounds of the tenant isolation phase.
	Isolation []IsolationResult
}

// HTTPRow is one system on one workload, every round.
type HTTPRow struct {
	Workload, System string
	Rounds           []HTTPResult
}

// DNSRow is one DNS system, every round.
type DNSRow struct {
	Workload, System string
	Rounds           []DNSResult
}

// FailureRow is one proxy's failure runs.
type FailureRow struct {
	System string
	Rounds []FailureResult
}

// MemoryRow is a server's peak resident set over a phase, in KiB.
type MemoryRow struct {
	Phase, System string
	PeakKiB       int64
}

// DNSSizes are the sizes in bytes of a system's responses to the four
// queries of the mix.
type DNSSizes struct {
	System string
	Bytes  []int
}

func newReport(h *harness) *Report {
	return &Report{
		Started:         time.Now(),
		Machine:         readMachine(),
		Versions:        readVersions(h.opts),
		CPUs:            h.cpus,
		Apps:            h.opts.Apps,
		ConsulMode:      h.opts.ConsulMode,
		Rounds:          h.opts.Rounds,
		Duration:        h.opts.Duration,
		FailureDuration: h.opts.FailureDuration,
		Quick:           h.opts.Quick,
	}
}

func (r *Report) addHTTP(workload, system string, res HTTPResult) {
	for _, row := range r.HTTP {
		if row.Workload == workload && row.System == system {
			row.Rounds = append(row.Rounds, res)
			return
		}
	}
	r.HTTP = append(r.HTTP, &HTTPRow{Workload: workload, System: system, Rounds: []HTTPResult{res}})
}

func (r *Report) addDNS(workload, system string, res DNSResult) {
	for _, row := range r.DNS {
		if row.Workload == workload && row.System == system {
			row.Rounds = append(row.Rounds, res)
			return
		}
	}
	r.DNS = append(r.DNS, &DNSRow{Workload: workload, System: system, Rounds: []DNSResult{res}})
}

func (r *Report) addFailure(system string, res FailureResult) {
	for _, row := range r.Failure {
		if row.System == system {
			row.Rounds = append(row.Rounds, res)
			return
		}
	}
	r.Failure = append(r.Failure, &FailureRow{System: system, Rounds: []FailureResult{res}})
}

func (r *Report) addMemory(phase, system string, kib int64) {
	r.Memory = append(r.Memory, MemoryRow{Phase: phase, System: system, PeakKiB: kib})
}

// HTTPMedian is the median of every field of a row's rounds, each taken
// on its own.
func (row *HTTPRow) Median() HTTPResult {
	var m HTTPResult
	m.RPS = median(row.Rounds, func(r HTTPResult) float64 { return r.RPS })
	m.P50 = time.Duration(median(row.Rounds, func(r HTTPResult) float64 { return float64(r.P50) }))
	m.P99 = time.Duration(median(row.Rounds, func(r HTTPResult) float64 { return float64(r.P99) }))
	m.Max = time.Duration(median(row.Rounds, func(r HTTPResult) float64 { return float64(r.Max) }))
	m.Errors = int64(median(row.Rounds, func(r HTTPResult) float64 { return float64(r.Errors) }))
	m.ServerCPU = median(row.Rounds, func(r HTTPResult) float64 { return r.ServerCPU })
	m.ClientCPU = median(row.Rounds, func(r HTTPResult) float64 { return r.ClientCPU })
	return m
}

// CostUS is the median CPU time the system under test spent per request,
// in microseconds: a figure that does not depend on which side of the
// machine was the bottleneck.
func (row *HTTPRow) CostUS() float64 {
	return median(row.Rounds, func(r HTTPResult) float64 { return cost(r.ServerCPU, r.RPS) })
}

// Median is the median of every field of a row's rounds, each taken on its
// own.
func (row *DNSRow) Median() DNSResult {
	var m DNSResult
	m.QPS = median(row.Rounds, func(r DNSResult) float64 { return r.QPS })
	m.Sent = int64(median(row.Rounds, func(r DNSResult) float64 { return float64(r.Sent) }))
	m.Lost = int64(median(row.Rounds, func(r DNSResult) float64 { return float64(r.Lost) }))
	m.AvgLatency = time.Duration(median(row.Rounds, func(r DNSResult) float64 { return float64(r.AvgLatency) }))
	m.ServerCPU = median(row.Rounds, func(r DNSResult) float64 { return r.ServerCPU })
	m.ClientCPU = median(row.Rounds, func(r DNSResult) float64 { return r.ClientCPU })
	return m
}

// CostUS is the median CPU time the server spent per query, in
// microseconds.
func (row *DNSRow) CostUS() float64 {
	return median(row.Rounds, func(r DNSResult) float64 { return cost(r.ServerCPU, r.QPS) })
}

// cost is CPU use over throughput, in microseconds of CPU per operation.
func cost(cpu, perSecond float64) float64 {
	if perSecond == 0 {
		return 0
	}
	return cpu / perSecond * 1e6
}

func median[T any](rounds []T, f func(T) float64) float64 {
	if len(rounds) == 0 {
		return 0
	}
	v := make([]float64, len(rounds))
	for i, r := range rounds {
		v[i] = f(r)
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func (r *Report) http(workload, system string) *HTTPRow {
	for _, row := range r.HTTP {
		if row.Workload == workload && row.System == system {
			return row
		}
	}
	return nil
}

func (r *Report) dns(workload, system string) *DNSRow {
	for _, row := range r.DNS {
		if row.Workload == workload && row.System == system {
			return row
		}
	}
	return nil
}

// workloads lists the HTTP workloads in the order they ran, the scale rows
// left out.
func (r *Report) workloads() []string {
	var out []string
	for _, row := range r.HTTP {
		if row.Workload != scaleWorkload && !slices.Contains(out, row.Workload) {
			out = append(out, row.Workload)
		}
	}
	return out
}

// systems lists the systems that ran workload, in order.
func (r *Report) systems(workload string) []string {
	var out []string
	for _, row := range r.HTTP {
		if row.Workload == workload {
			out = append(out, row.System)
		}
	}
	return out
}

// Markdown renders the report: the targets first, then every table.
func (r *Report) Markdown() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("### Run of %s\n\n", r.Started.UTC().Format("2006-01-02 15:04 MST"))
	m := r.Machine
	w("- Machine: %d CPUs (%s), %.1f GiB memory, %s, %s.\n", m.CPUs, m.Model, m.MemoryGB, m.Kernel, m.OS)
	if r.Command != "" {
		w("- Command: `%s`.\n", r.Command)
	}
	switch {
	case r.CPUs.Server != "" && r.Apps == AppsWithClient:
		w("- CPUs: the system under test on CPU %s, alone; the two backends, the load generator and Consul on CPU %s (taskset).\n", r.CPUs.Server, r.CPUs.Client)
	case r.CPUs.Server != "":
		w("- CPUs: the system under test (with the two backends behind a proxy) on CPU %s; the load generator and Consul on CPU %s (taskset).\n", r.CPUs.Server, r.CPUs.Client)
	default:
		w("- CPUs: one only, nothing pinned: servers and load generators share it.\n")
	}
	var vs []string
	for _, v := range r.Versions {
		vs = append(vs, v.Name+" "+v.Version)
	}
	w("- Versions: %s.\n", strings.Join(vs, ", "))
	if r.ConsulMode == ConsulServer {
		w("- Consul: one server (`-server -bootstrap-expect=1`), its data on a tmpfs; compact JSON, as in production.\n")
	} else {
		w("- Consul: `consul agent -dev` (pretty-printed JSON answers).\n")
	}
	w("- %d rounds of %s per system and workload, systems alternating within each round, each round starting one system later; medians shown.", r.Rounds, r.Duration)
	if r.Quick {
		w(" Quick (smoke) run: the figures mean nothing.")
	}
	w(" Took %s.\n\n", r.Finished.Sub(r.Started).Round(time.Second))

	r.targets(w)
	r.httpTables(w)
	r.httpsTables(w)
	r.failureTable(w)
	r.isolationTable(w)
	r.dnsTables(w)
	r.memoryTable(w)
	r.scaleTables(w)
	r.signupTables(w)
	return b.String()
}

type writef func(format string, args ...any)

// paired summarises the per-round ratios of a figure between two systems:
// the runs of one round ran one after the other, so their ratio suffers
// less from the machine's drift than a ratio of medians.
type paired struct {
	med, lo, hi float64
	n           int
}

// pairRatios returns the median, least and greatest of ratio(i) over n
// rounds.
func pairRatios(n int, ratio func(i int) float64) paired {
	var v []float64
	for i := range n {
		if x := ratio(i); !math.IsNaN(x) && !math.IsInf(x, 0) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return paired{}
	}
	return paired{med: median(v, func(x float64) float64 { return x }), lo: slices.Min(v), hi: slices.Max(v), n: len(v)}
}

// String is "0.84×" or, over several rounds, "0.84× (0.79–0.91)".
func (p paired) String() string {
	if p.n < 2 {
		return fmt.Sprintf("%.2f×", p.med)
	}
	return fmt.Sprintf("%.2f× (%.2f–%.2f)", p.med, p.lo, p.hi)
}

// httpRatio pairs a figure of a's and b's rounds.
func httpRatio(a, b *HTTPRow, f func(HTTPResult) float64) paired {
	return pairRatios(min(len(a.Rounds), len(b.Rounds)), func(i int) float64 { return f(a.Rounds[i]) / f(b.Rounds[i]) })
}

// dnsRatio pairs a figure of a's and b's rounds.
func dnsRatio(a, b *DNSRow, f func(DNSResult) float64) paired {
	return pairRatios(min(len(a.Rounds), len(b.Rounds)), func(i int) float64 { return f(a.Rounds[i]) / f(b.Rounds[i]) })
}

func rps(r HTTPResult) float64      { return r.RPS }
func p99(r HTTPResult) float64      { return float64(r.P99) }
func httpCost(r HTTPResult) float64 { return cost(r.ServerCPU, r.RPS) }
func qps(r DNSResult) float64       { return r.QPS }
func dnsCost(r DNSResult) float64   { return cost(r.ServerCPU, r.QPS) }

// targets is the table of the targets and where the run stands.
// Ratios are medians of the per-round ratios, with their range.
func (r *Report) targets(w writef) {
	w("#### Targets\n\nRatios are the median of the per-round ratios (systems run one after the other within a round), with the least and greatest in brackets.\n\n| target | measured | |\n| --- | --- | --- |\n")
	small := Workloads()[0].Name
	edge := r.http(small, "edge")
	for _, peer := range []string{"nginx", "haproxy"} {
		p := r.http(small, peer)
		if edge == nil || p == nil {
			continue
		}
		e, q := edge.Median(), p.Median()
		ratio, lat := httpRatio(edge, p, rps), httpRatio(edge, p, p99)
		w("| edge ≥ 1.0× %s req/s, small responses | %s; medians %.0f vs %.0f | %s |\n", systemLabel(peer), ratio, e.RPS, q.RPS, verdict(ratio.med >= 1))
		w("| edge p99 no worse than %s, small responses | %s; medians %s vs %s | %s |\n", systemLabel(peer), lat, ms(e.P99), ms(q.P99), verdict(lat.med <= 1))
	}
	if f := r.http(small, "forwarder"); edge != nil && f != nil {
		e, q := edge.Median(), f.Median()
		ratio := httpRatio(edge, f, rps)
		w("| edge ≥ 0.9× bare fasthttp forwarder req/s, small responses | %s; medians %.0f vs %.0f | %s |\n", ratio, e.RPS, q.RPS, verdict(ratio.med >= 0.9))
	}
	r.httpsTargets(w, verdict)
	for _, row := range r.Failure {
		if row.System != "edge" {
			continue
		}
		var failed []string
		total := int64(0)
		for _, rr := range row.Rounds {
			failed = append(failed, fmt.Sprint(rr.Failed))
			total += rr.Failed
		}
		w("| zero failed requests when a backend dies (edge) | %s failed in %d runs | %s |\n", strings.Join(failed, ", "), len(row.Rounds), verdict(total == 0))
	}
	d := r.dns("mix", "dnsd")
	if n := r.dns("mix", "nsd"); d != nil && n != nil {
		ratio := dnsRatio(d, n, qps)
		w("| dnsd ≥ 1.0× NSD queries/s | %s; medians %.0f vs %.0f | %s |\n", ratio, d.Median().QPS, n.Median().QPS, verdict(ratio.med >= 1))
		if d.Median().ClientCPU >= clientBound || n.Median().ClientCPU >= clientBound {
			c := dnsRatio(d, n, dnsCost)
			w("| the same by CPU per query, since dnsperf was the bottleneck: dnsd's cost ≤ NSD's | %s; medians %.1f vs %.1f µs | %s |\n",
				c, d.CostUS(), n.CostUS(), verdict(c.med <= 1))
		}
	}
	if k := r.dns("mix", "knot"); d != nil && k != nil {
		w("| dnsd on the way to Knot's queries/s | %s; medians %.0f vs %.0f | |\n", dnsRatio(d, k, qps), d.Median().QPS, k.Median().QPS)
	}
	if s := r.Scale; s != nil {
		few, many := r.http(scaleWorkload, tenantsLabel(s.Change[0].Tenants)), r.http(scaleWorkload, tenantsLabel(s.Tenants))
		if few != nil && many != nil {
			ratio := httpRatio(many, few, rps)
			v := verdict(ratio.lo <= 1 && 1 <= ratio.hi)
			if ratio.n < 2 {
				v = "– (one round: no noise to compare with)"
			}
			w("| edge req/s with %d tenants unchanged from %d, within noise (1.00 within the rounds' range) | %s | %s |\n",
				s.Tenants, s.Change[0].Tenants, ratio, v)
		}
	}
	w("\n")
}

func (r *Report) httpTables(w writef) {
	if len(r.HTTP) == 0 {
		return
	}
	w("#### HTTP\n\nRequests per second and latency of each system, median of %d rounds. Errors are failed requests per run (connection errors, timeouts, non-2xx). CPU is the CPU time the kernel charged to the system under test (its backends left out) and to the load generator, in CPUs (user and system time; the network softirq work the kernel accounts apart is in neither); CPU/req is the server's CPU time per request, which does not depend on which side was the bottleneck.\n\n", r.Rounds)
	w("| workload | system | req/s | p50 | p99 | max | errors | CPU server / client | CPU/req |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, wl := range r.workloads() {
		for _, sys := range r.systems(wl) {
			row := r.http(wl, sys)
			m := row.Median()
			w("| %s | %s | %.0f | %s | %s | %s | %d | %.2f / %.2f | %.1f µs |\n", wl, sys, m.RPS, ms(m.P50), ms(m.P99), ms(m.Max), m.Errors, m.ServerCPU, m.ClientCPU, row.CostUS())
		}
	}
	w("\nRatios, edge over each system: requests per second (median of the per-round ratios, with their range), then p99 latency and CPU per request (medians of the per-round ratios; below 1.00 the edge is faster or cheaper):\n\n")
	r.ratioTable(w, "edge", "nginx", "haproxy", "forwarder", "direct")
	if r.has("loopforwarder") {
		w("\nThe same ratios for the loop forwarder, the bare forwarder rebuilt on epoll loops (same parser, same work): what an event-loop data path would save the edge.\n\n")
		r.ratioTable(w, "loopforwarder", "forwarder", "nginx", "haproxy")
	}
	var bound []string
	for _, row := range r.HTTP {
		if row.Workload != scaleWorkload && row.Median().ClientCPU >= clientBound {
			bound = append(bound, row.System+" ("+row.Workload+")")
		}
	}
	r.clientBoundNote(w, bound, "request")
	w("\n")
}

// ratioTable writes sys's ratios over each of peers, per workload.
func (r *Report) ratioTable(w writef, sys string, peers ...string) {
	w("| workload |")
	for _, p := range peers {
		w(" %s/%s |", sys, systemLabel(p))
	}
	w("\n| --- |%s\n", strings.Repeat(" ---: |", len(peers)))
	for _, wl := range r.workloads() {
		row := r.http(wl, sys)
		if row == nil {
			continue
		}
		w("| %s |", wl)
		for _, peer := range peers {
			p := r.http(wl, peer)
			if p == nil {
				w(" – |")
				continue
			}
			w(" %s · p99 %.2f · CPU %.2f |", httpRatio(row, p, rps), httpRatio(row, p, p99).med, httpRatio(row, p, httpCost).med)
		}
		w("\n")
	}
}

// has reports whether the run measured system sys over HTTP.
func (r *Report) has(sys string) bool {
	for _, row := range r.HTTP {
		if row.System == sys {
			return true
		}
	}
	return false
}

// systemLabel is how ratio headers name a system.
func systemLabel(sys string) string {
	if sys == "haproxy" {
		return "HAProxy"
	}
	return sys
}

// clientBound is the load generator's CPU use above which a run measured
// the client more than the server.
const clientBound = 0.9

// clientBoundNote says which runs the load generator limited, if any.
func (r *Report) clientBoundNote(w writef, runs []string, unit string) {
	if len(runs) == 0 {
		return
	}
	w("\nThe load generator used %.0f%% or more of its CPU in these runs, so their throughput is the client's ceiling rather than the server's; compare CPU per %s instead: %s.\n",
		clientBound*100, unit, strings.Join(runs, ", "))
}

func (r *Report) dnsTables(w writef) {
	if len(r.DNS) == 0 {
		return
	}
	w("#### DNS\n\ndnsperf, %s clients, up to %s queries outstanding, one query mix in turn: the pod's A (13 records), the tenant's A (CNAME to the pod, chased), the pod's MX, a missing tenant (NXDOMAIN). Median of %d rounds.\n\n", dnsperfClients, dnsperfOutstanding, r.Rounds)
	w("| system | queries/s | lost | avg latency | CPU server / client | CPU/query | response bytes (pod A, tenant A, MX, NXDOMAIN) |\n| --- | ---: | ---: | ---: | ---: | ---: | --- |\n")
	for _, row := range r.DNS {
		if row.Workload != "mix" {
			continue
		}
		m := row.Median()
		var sizes string
		for _, s := range r.DNSSizes {
			if s.System == row.System {
				sizes = strings.Trim(strings.ReplaceAll(fmt.Sprint(s.Bytes), " ", ", "), "[]")
			}
		}
		w("| %s | %.0f | %d of %d | %s | %.2f / %.2f | %.1f µs | %s |\n", row.System, m.QPS, m.Lost, m.Sent, ms(m.AvgLatency), m.ServerCPU, m.ClientCPU, row.CostUS(), sizes)
	}
	d := r.dns("mix", "dnsd")
	if d != nil {
		w("\n| ratio | queries/s | CPU per query |\n| --- | ---: | ---: |\n")
		for _, peer := range []struct{ name, label string }{{"knot", "dnsd/Knot"}, {"nsd", "dnsd/NSD"}} {
			if p := r.dns("mix", peer.name); p != nil {
				w("| %s | %s | %s |\n", peer.label, dnsRatio(d, p, qps), dnsRatio(d, p, dnsCost))
			}
		}
	}
	r.dnsVariantTables(w)
	var bound []string
	for _, row := range r.DNS {
		if row.Workload == "mix" && row.Median().ClientCPU >= clientBound {
			bound = append(bound, row.System)
		}
	}
	if len(bound) > 0 {
		r.clientBoundNote(w, bound, "query")
	}
	w("\n")
}

// dnsVariantTables renders the DNS phase's variants (dnsvariants.go), each
// system beside what it is compared with, in the same rounds.
func (r *Report) dnsVariantTables(w writef) {
	for _, v := range []struct{ workload, text, sys, peer, label string }{
		{rrlWorkload, "Response rate limiting on (`rrl.rate_limit` 262143: every answer is checked, none limited), beside dnsd without, in the same rounds", "dnsd+rrl", "dnsd", "dnsd+rrl/dnsd"},
		{dnssecWorkload, "Signed, DO set in every query: dnsd (ECDSA P-256, signatures made when the zone changes, compact denial) beside Knot signing the same records itself (`dnssec-signing: on`, its default policy: ECDSA P-256, NSEC)", "dnsd", "knot", "dnsd/Knot"},
	} {
		a, b := r.dns(v.workload, v.sys), r.dns(v.workload, v.peer)
		if a == nil || b == nil {
			continue
		}
		w("\n%s. Median of %d rounds.\n\n| system | queries/s | lost | avg latency | CPU server / client | CPU/query |\n| --- | ---: | ---: | ---: | ---: | ---: |\n", v.text, r.Rounds)
		for _, row := range []*DNSRow{a, b} {
			m := row.Median()
			w("| %s | %.0f | %d of %d | %s | %.2f / %.2f | %.1f µs |\n", row.System, m.QPS, m.Lost, m.Sent, ms(m.AvgLatency), m.ServerCPU, m.ClientCPU, row.CostUS())
		}
		w("| %s | %s | | | | %s |\n", v.label, dnsRatio(a, b, qps), dnsRatio(a, b, dnsCost))
	}
}

func (r *Report) memoryTable(w writef) {
	if len(r.Memory) == 0 {
		return
	}
	w("#### Memory\n\nPeak resident set (VmHWM) of each server over its phase; for servers of several processes (nginx's master and workers, NSD's), the sum over them.\n\n")
	w("| phase | system | peak RSS |\n| --- | --- | ---: |\n")
	for _, m := range r.Memory {
		w("| %s | %s | %s |\n", m.Phase, m.System, mib(m.PeakKiB))
	}
	w("\n")
}

// ms formats a duration in milliseconds with three significant digits.
func ms(d time.Duration) string {
	v := float64(d) / float64(time.Millisecond)
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f ms", v)
	case v >= 10:
		return fmt.Sprintf("%.1f ms", v)
	default:
		return fmt.Sprintf("%.2f ms", v)
	}
}

func mib(kib int64) string { return fmt.Sprintf("%.1f MiB", float64(kib)/1024) }
