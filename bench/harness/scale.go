package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/podedge/podedge/bench/configs"
	"github.com/podedge/podedge/router"
)

// ScaleResult compares the edge and dnsd serving the 10 tenants of the
// other runs with the same programs serving Options.Tenants.
type ScaleResult struct {
	Tenants int
	// Write is how long writing the tenants to Consul took, in
	// transactions of 64 sets, 8 at a time.
	Write time.Duration
	// EdgeStart and DnsdStart are the time from starting the process to
	// serving every tenant.
	EdgeStart, DnsdStart time.Duration
	// Change holds, for 10 tenants and for many, the time from a KV write
	// adding a tenant to the edge routing it and to dnsd answering it.
	Change [2]ChangeResult
	// RSS holds the resident set after the load (now and peak), in KiB.
	RSS [2]ScaleRSS
	// Lookup is the cost of Snapshot.Lookup of a tenant's host name.
	Lookup [2]LookupResult
}

// ChangeResult is the KV-change-to-snapshot time, over several changes.
type ChangeResult struct {
	Tenants             int
	EdgeMedian, EdgeMax time.Duration
	DnsdMedian, DnsdMax time.Duration
}

// ScaleRSS is the memory of the edge and dnsd at one scale.
type ScaleRSS struct {
	Tenants                              int
	EdgeRSS, EdgePeak, DnsdRSS, DnsdPeak int64
}

// LookupResult is the cost of one host lookup in a snapshot.
type LookupResult struct {
	Tenants int
	NsPerOp float64
	Allocs  float64
}

// scaleTenants are the tenants of the scale test: acme and n-1 others.
func scaleTenants(n int) []router.Tenant {
	created := time.Now().UTC()
	out := []router.Tenant{{Name: tenant, Pod: pod, Created: created}}
	for i := 1; i < n; i++ {
		out = append(out, router.Tenant{Name: fmt.Sprintf("t-%06d", i), Pod: pod, Created: created})
	}
	return out
}

// scalePhase writes Options.Tenants tenants under their own prefix, starts
// an edge and a dnsd reading them, and compares them with the edge and dnsd
// of the other runs (10 tenants).
func (h *harness) scalePhase(ctx context.Context) error {
	if err := h.startMainServers(ctx); err != nil {
		return err
	}
	n := h.opts.Tenants
	res := &ScaleResult{Tenants: n}
	h.report.Scale = res
	if err := putJSON(h.consul, scalePrefix+"pods/"+pod, router.Pod{Name: pod, Region: "local", Capacity: 10_000_000}); err != nil {
		return err
	}
	start := time.Now()
	if err := putTenants(ctx, h.consul, scalePrefix, scaleTenants(n)); err != nil {
		return err
	}
	res.Write = time.Since(start)
	h.say("scale: wrote %d tenants in %s", n, res.Write.Round(time.Millisecond))

	start = time.Now()
	edge, err := h.startEdge(ctx, edgeSpec{name: "edge-scale", prefix: scalePrefix, publicIP: "192.0.2.14"})
	if err != nil {
		return err
	}
	if err := h.waitTenants(ctx, edge, n); err != nil {
		return err
	}
	res.EdgeStart = time.Since(start)
	start = time.Now()
	dnsd, err := h.startDnsd(ctx, "dnsd-scale", scalePrefix)
	if err != nil {
		return err
	}
	last := fmt.Sprintf("t-%06d.%s", n-1, zone)
	if err := h.waitFor(ctx, time.Minute, "dnsd-scale to answer "+last, func() bool {
		r, err := ask(dnsd.addr, last, dns.TypeA)
		return err == nil && r.Rcode == dns.RcodeSuccess
	}, dnsd.procs...); err != nil {
		return err
	}
	res.DnsdStart = time.Since(start)
	h.say("scale: edge serving %d tenants %s after its start, dnsd %s", n, res.EdgeStart.Round(time.Millisecond), res.DnsdStart.Round(time.Millisecond))

	samples := 5
	if h.opts.Quick {
		samples = 2
	}
	small := mainTenants()
	for i, c := range []struct {
		tenants    int
		prefix     string
		edge, dnsd *server
	}{
		{len(small), mainPrefix, h.mainEdge, h.mainDnsd},
		{n, scalePrefix, edge, dnsd},
	} {
		var profiled <-chan error
		if i == 1 {
			// The profile needs a length before the samples run: with
			// many tenants a change and its deletion take a few seconds.
			profiled = h.profileEdge(edge, "edge-scale-changes", time.Duration(samples)*5*time.Second)
		}
		cr, err := h.changeTimes(ctx, c.prefix, c.edge, c.dnsd, samples)
		if err != nil {
			return err
		}
		if profiled != nil {
			if err := <-profiled; err != nil {
				return err
			}
		}
		cr.Tenants = c.tenants
		res.Change[i] = cr
		h.say("scale: %d tenants: KV change to edge routing it median %s (max %s), to dnsd answering it median %s (max %s)",
			c.tenants, cr.EdgeMedian, cr.EdgeMax, cr.DnsdMedian, cr.DnsdMax)
	}

	// Throughput, alternating 10 and n tenants round after round.
	w := Workloads()[0]
	for _, s := range []*server{h.mainEdge, edge} {
		if _, err := h.measureHTTP(ctx, s, w, min(h.opts.Duration, time.Second)); err != nil {
			return err
		}
	}
	for round := 1; round <= h.opts.Rounds; round++ {
		for i, s := range []*server{h.mainEdge, edge} {
			r, err := h.measureHTTP(ctx, s, w, h.opts.Duration)
			if err != nil {
				return fmt.Errorf("scale, %s, round %d: %w", s.name, round, err)
			}
			h.report.addHTTP(scaleWorkload, tenantsLabel([]int{len(small), n}[i]), r)
			h.say("scale round %d edge, %6d tenants %9.0f req/s  p99 %s", round, []int{len(small), n}[i], r.RPS, r.P99.Round(time.Microsecond))
		}
		for i, s := range []*server{h.mainDnsd, dnsd} {
			r, err := h.measureDNS(ctx, s, h.opts.Duration)
			if err != nil {
				return fmt.Errorf("scale, %s, round %d: %w", s.name, round, err)
			}
			h.report.addDNS(scaleWorkload, tenantsLabel([]int{len(small), n}[i]), r)
			h.say("scale round %d dnsd, %6d tenants %9.0f q/s", round, []int{len(small), n}[i], r.QPS)
		}
	}
	for i, pair := range [][2]*server{{h.mainEdge, h.mainDnsd}, {edge, dnsd}} {
		res.RSS[i] = ScaleRSS{Tenants: []int{len(small), n}[i],
			EdgeRSS: pair[0].rss(), EdgePeak: pair[0].peakRSS(), DnsdRSS: pair[1].rss(), DnsdPeak: pair[1].peakRSS()}
	}
	h.report.addMemory("scale", "edge, "+tenantsLabel(n), edge.peakRSS())
	h.report.addMemory("scale", "dnsd, "+tenantsLabel(n), dnsd.peakRSS())

	d := time.Second
	if h.opts.Quick {
		d = 50 * time.Millisecond
	}
	for i, count := range []int{len(small), n} {
		res.Lookup[i] = lookupCost(count, d)
		h.say("scale: lookup among %d tenants: %.1f ns, %.0f allocs", count, res.Lookup[i].NsPerOp, res.Lookup[i].Allocs)
	}
	return nil
}

// startMainServers starts the edge and dnsd of the 10 tenants that the
// HTTP and DNS phases leave running, when those phases did not run
// (Options.Phases): the scale phase compares with them.
func (h *harness) startMainServers(ctx context.Context) error {
	if h.mainEdge == nil {
		// The throughput runs below read wrk's results through the HTTP
		// phase's script.
		if err := h.writeWrkScript(); err != nil {
			return err
		}
	}
	if _, err := h.mainEdgeServer(ctx); err != nil {
		return err
	}
	_, err := h.mainDnsdServer(ctx)
	return err
}

// mainEdgeServer returns the edge of the 10 tenants, started on first use.
func (h *harness) mainEdgeServer(ctx context.Context) (*server, error) {
	if h.mainEdge == nil {
		edge, err := h.startEdge(ctx, edgeSpec{name: "edge", prefix: mainPrefix, publicIP: podIPs()[0]})
		if err != nil {
			return nil, err
		}
		h.mainEdge = edge
	}
	return h.mainEdge, nil
}

// mainDnsdServer returns the dnsd of the 10 tenants, started on first use
// with the file of queries dnsperf reads.
func (h *harness) mainDnsdServer(ctx context.Context) (*server, error) {
	if h.mainDnsd == nil {
		if _, err := h.render("queries.txt.tmpl", "queries.txt", map[string]any{
			"Pod": pod, "Zone": zone, "Tenant": tenant, "Missing": missing,
		}); err != nil {
			return nil, err
		}
		dnsd, err := h.startDnsd(ctx, "dnsd", mainPrefix)
		if err != nil {
			return nil, err
		}
		h.mainDnsd = dnsd
	}
	return h.mainDnsd, nil
}

// writeWrkScript writes the script through which wrk reports its results.
func (h *harness) writeWrkScript() error {
	script, err := configs.FS.ReadFile("report.lua")
	if err != nil {
		return err
	}
	return writeFile(h.path("report.lua"), script)
}

// scaleWorkload names the scale rows of the HTTP and DNS results.
const scaleWorkload = "scale"

func tenantsLabel(n int) string { return fmt.Sprintf("%d tenants", n) }

// waitTenants waits until the edge's /debug/routes reports n tenants.
func (h *harness) waitTenants(ctx context.Context, s *server, n int) error {
	client := newProbeClient()
	defer client.CloseIdleConnections()
	return h.waitFor(ctx, 2*time.Minute, fmt.Sprintf("%s to load %d tenants", s.name, n), func() bool {
		resp, err := client.Get("http://" + s.admin + "/debug/routes")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var routes struct {
			Tenants int `json:"tenants"`
		}
		return json.NewDecoder(resp.Body).Decode(&routes) == nil && routes.Tenants == n
	}, s.procs...)
}

// changeTimes adds samples tenants under prefix, one at a time, and
// measures how long each takes to be routed by edge and answered by dnsd
// (polled every millisecond). The tenants are removed afterwards.
func (h *harness) changeTimes(ctx context.Context, prefix string, edge, dnsd *server, samples int) (ChangeResult, error) {
	var edgeTimes, dnsdTimes []time.Duration
	client := &http.Client{Timeout: 2 * time.Second}
	defer client.CloseIdleConnections()
	for i := range samples {
		name := fmt.Sprintf("new-%d-%d", time.Now().UnixNano()%1_000_000, i)
		hostname := name + ".example.test"
		start := time.Now()
		if err := putJSON(h.consul, prefix+"tenants/"+name, router.Tenant{Name: name, Pod: pod, Created: time.Now().UTC()}); err != nil {
			return ChangeResult{}, err
		}
		// edgeStatus is the edge's answer for the new host (0: none).
		edgeStatus := func() int {
			req, _ := http.NewRequest(http.MethodGet, "http://"+edge.addr+"/bytes/1", nil)
			req.Host = hostname
			resp, err := client.Do(req)
			if err != nil {
				return 0
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return resp.StatusCode
		}
		var wg sync.WaitGroup
		var edgeErr, dnsdErr error
		var edgeT, dnsdT time.Duration
		wg.Go(func() {
			edgeT, edgeErr = pollUntil(ctx, start, func() bool { return edgeStatus() == http.StatusOK })
		})
		wg.Go(func() {
			dnsdT, dnsdErr = pollUntil(ctx, start, func() bool {
				r, err := ask(dnsd.addr, hostname+".", dns.TypeA)
				return err == nil && r.Rcode == dns.RcodeSuccess && len(r.Answer) > 0
			})
		})
		wg.Wait()
		if edgeErr != nil {
			return ChangeResult{}, fmt.Errorf("edge routing %s: %w", hostname, edgeErr)
		}
		if dnsdErr != nil {
			return ChangeResult{}, fmt.Errorf("dnsd answering %s: %w", hostname, dnsdErr)
		}
		edgeTimes, dnsdTimes = append(edgeTimes, edgeT), append(dnsdTimes, dnsdT)
		if _, err := h.consul.KV().Delete(prefix+"tenants/"+name, nil); err != nil {
			return ChangeResult{}, fmt.Errorf("delete %s: %w", name, err)
		}
		// Wait for the deletion to be served too, so that the rebuild it
		// causes is over before the next sample or the next measured run.
		if _, err := pollUntil(ctx, time.Now(), func() bool { return edgeStatus() == http.StatusNotFound }); err != nil {
			return ChangeResult{}, fmt.Errorf("edge forgetting %s: %w", hostname, err)
		}
		if _, err := pollUntil(ctx, time.Now(), func() bool {
			r, err := ask(dnsd.addr, hostname+".", dns.TypeA)
			return err == nil && r.Rcode == dns.RcodeNameError
		}); err != nil {
			return ChangeResult{}, fmt.Errorf("dnsd forgetting %s: %w", hostname, err)
		}
	}
	slices.Sort(edgeTimes)
	slices.Sort(dnsdTimes)
	return ChangeResult{
		EdgeMedian: edgeTimes[len(edgeTimes)/2], EdgeMax: edgeTimes[len(edgeTimes)-1],
		DnsdMedian: dnsdTimes[len(dnsdTimes)/2], DnsdMax: dnsdTimes[len(dnsdTimes)-1],
	}, nil
}

// pollUntil calls cond every millisecond until it holds, and returns the
// time since start; it gives up after 30 s.
func pollUntil(ctx context.Context, start time.Time, cond func() bool) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return time.Since(start), nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("not after %s", time.Since(start).Round(time.Millisecond))
		case <-tick.C:
		}
	}
}

// lookupCost times Snapshot.Lookup over a snapshot of n tenants, cycling
// through 4096 of their host names, for about d, in this process.
func lookupCost(n int, d time.Duration) LookupResult {
	r, err := router.New(router.Config{Zone: zone, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		panic(err) // the zone is a constant
	}
	snap := r.Publish(router.State{Tenants: scaleTenants(n)})
	hosts := make([][]byte, 4096)
	all := snap.Tenants()
	for i := range hosts {
		hosts[i] = []byte(snap.Hostname(all[(i*7919)%n].Name))
	}
	var ops int
	start := time.Now()
	for time.Since(start) < d {
		for _, h := range hosts {
			if _, ok := snap.Lookup(h); !ok {
				panic("lookup of a tenant failed: " + string(h))
			}
		}
		ops += len(hosts)
	}
	ns := float64(time.Since(start).Nanoseconds()) / float64(ops)
	allocs := testing.AllocsPerRun(1000, func() { snap.Lookup(hosts[0]) })
	return LookupResult{Tenants: n, NsPerOp: ns, Allocs: allocs}
}

func (r *Report) scaleTables(w writef) {
	s := r.Scale
	if s == nil {
		return
	}
	few := s.Change[0].Tenants
	w("#### Scale: %d tenants\n\n", s.Tenants)
	w("Writing them to Consul (transactions of %d sets, %d in flight) took %s. From its start, the edge served them all after %s and dnsd after %s.\n\n",
		txnOps, txnWorkers, s.Write.Round(time.Millisecond), s.EdgeStart.Round(time.Millisecond), s.DnsdStart.Round(time.Millisecond))
	w("| | %d tenants | %d tenants |\n| --- | ---: | ---: |\n", few, s.Tenants)
	w("| KV write of a new tenant → edge routes it (median / max) | %s / %s | %s / %s |\n",
		ms(s.Change[0].EdgeMedian), ms(s.Change[0].EdgeMax), ms(s.Change[1].EdgeMedian), ms(s.Change[1].EdgeMax))
	w("| KV write of a new tenant → dnsd answers it (median / max) | %s / %s | %s / %s |\n",
		ms(s.Change[0].DnsdMedian), ms(s.Change[0].DnsdMax), ms(s.Change[1].DnsdMedian), ms(s.Change[1].DnsdMax))
	w("| edge RSS after the load (peak) | %s (%s) | %s (%s) |\n", mib(s.RSS[0].EdgeRSS), mib(s.RSS[0].EdgePeak), mib(s.RSS[1].EdgeRSS), mib(s.RSS[1].EdgePeak))
	w("| dnsd RSS after the load (peak) | %s (%s) | %s (%s) |\n", mib(s.RSS[0].DnsdRSS), mib(s.RSS[0].DnsdPeak), mib(s.RSS[1].DnsdRSS), mib(s.RSS[1].DnsdPeak))
	w("| Snapshot.Lookup of a tenant host | %.1f ns, %.0f allocs | %.1f ns, %.0f allocs |\n", s.Lookup[0].NsPerOp, s.Lookup[0].Allocs, s.Lookup[1].NsPerOp, s.Lookup[1].Allocs)
	a, b := r.http(scaleWorkload, tenantsLabel(few)), r.http(scaleWorkload, tenantsLabel(s.Tenants))
	if a != nil && b != nil {
		w("| edge req/s, small responses (p99) | %.0f (%s) | %.0f (%s) |\n", a.Median().RPS, ms(a.Median().P99), b.Median().RPS, ms(b.Median().P99))
	}
	c, d := r.dns(scaleWorkload, tenantsLabel(few)), r.dns(scaleWorkload, tenantsLabel(s.Tenants))
	if c != nil && d != nil {
		w("| dnsd queries/s, the mix | %.0f | %.0f |\n", c.Median().QPS, d.Median().QPS)
	}
	w("\n")
}
