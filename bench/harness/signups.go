package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/podedge/podedge/internal/child"
	"github.com/podedge/podedge/router"
)

// SignupResult is the change log at scale: Options.Tenants tenants, an
// edge, a dnsd, a leader and Options.Readers routers in one process
// (bench/cmd/readers), with sign-ups through the leader's API.
type SignupResult struct {
	Tenants, Readers int
	// Write is how long writing the tenants to Consul took.
	Write time.Duration
	// LeaderFirst is the time from the leader's start to its first
	// sign-up answered 201.
	LeaderFirst time.Duration
	// Served is, per sign-up, the time from the request to the edge
	// routing the tenant and dnsd answering it (the later of the two);
	// Seen the time to each reader publishing it, over every reader.
	Served, Seen Percentiles
	// Samples is the number of sign-ups timed, one at a time.
	Samples int
	// Over those sign-ups: Consul's CPU and bytes written (wchar), and
	// the readers' CPU, per change and per reader. AllReaders counts the
	// edge, dnsd and the leader, which read the log too.
	ConsulCPU, ReaderCPU time.Duration
	ConsulBytes          float64
	AllReaders           int
	// Resyncs are full reads of the platform by a new router.
	Resyncs []time.Duration
	// Throughput is sign-ups per second with SignupClients clients over
	// Options.Duration; Failed counts those not answered 201.
	Throughput     float64
	Signed, Failed int
	// LeaderOnly: only the leader ran (Options.SignupsLeaderOnly).
	LeaderOnly bool
	// Peak resident sets, in KiB; Readers is the whole readers process.
	EdgePeak, DnsdPeak, LeaderPeak, ReadersPeak int64
	// LeaderWins counts the leader lock won over the phase (1: never lost).
	LeaderWins int
	// OutOfBand is, per tenant written straight into KV, the time until
	// the edge routes it: the leader's auditor logs it.
	OutOfBand []time.Duration
}

// Percentiles of a set of durations.
type Percentiles struct{ P50, P99, Max time.Duration }

func percentiles(d []time.Duration) Percentiles {
	if len(d) == 0 {
		return Percentiles{}
	}
	d = slices.Clone(d)
	slices.Sort(d)
	at := func(q float64) time.Duration { return d[min(len(d)-1, int(q*float64(len(d))))] }
	return Percentiles{P50: at(0.50), P99: at(0.99), Max: d[len(d)-1]}
}

// SignupClients is the concurrency of the sign-up throughput run.
const SignupClients = 16

// signupPrefix holds the platform of the sign-up phase.
const signupPrefix = "signups/"

// signupsPhase measures the change log at scale (SignupResult).
func (h *harness) signupsPhase(ctx context.Context) error {
	n := h.opts.Tenants
	res := &SignupResult{Tenants: n, Readers: h.opts.Readers, AllReaders: h.opts.Readers + 3}
	h.report.Signups = res
	if err := putJSON(h.consul, signupPrefix+"pods/"+pod, router.Pod{Name: pod, Region: "local", Lat: podLat, Lon: podLon, Capacity: 10_000_000}); err != nil {
		return err
	}
	start := time.Now()
	if err := putTenants(ctx, h.consul, signupPrefix, scaleTenants(n)); err != nil {
		return err
	}
	res.Write = time.Since(start)
	h.say("signups: wrote %d tenants in %s", n, res.Write.Round(time.Millisecond))

	start = time.Now()
	leader, err := h.startLeader(ctx, "leader-signups", signupPrefix)
	if err != nil {
		return err
	}
	defer leader.stop()
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: SignupClients}}
	defer client.CloseIdleConnections()
	// The first sign-up starts the change log; it waits for the
	// leader's view and the reconciliation of its keys.
	if err := h.waitFor(ctx, 10*time.Minute, "the leader's first sign-up", func() bool {
		code, _ := signUp(client, leader.addr, "su-first")
		return code == http.StatusCreated || code == http.StatusConflict
	}, leader.procs...); err != nil {
		return err
	}
	res.LeaderFirst = time.Since(start)
	h.say("signups: first sign-up %s after the leader's start", res.LeaderFirst.Round(time.Millisecond))
	if h.opts.SignupsLeaderOnly {
		return h.leaderThroughput(ctx, client, res, leader)
	}

	edge, err := h.startEdge(ctx, edgeSpec{name: "edge-signups", prefix: signupPrefix, publicIP: "192.0.2.15"})
	if err != nil {
		return err
	}
	defer edge.stop()
	dnsd, err := h.startDnsd(ctx, "dnsd-signups", signupPrefix)
	if err != nil {
		return err
	}
	defer dnsd.stop()
	readers, err := h.startReaders(ctx, signupPrefix, h.opts.Readers)
	if err != nil {
		return err
	}
	defer readers.stop()
	h.say("signups: edge, dnsd and %d readers follow the log", h.opts.Readers)

	samples := 100
	if h.opts.Quick {
		samples = 5
	}
	if err := h.timeSignups(ctx, client, res, leader, edge, dnsd, readers, samples); err != nil {
		return err
	}
	h.say("signups: sign-up → served p50 %s p99 %s; readers p50 %s p99 %s; per change per reader: consul %s CPU, %.0f bytes; reader %s CPU",
		ms(res.Served.P50), ms(res.Served.P99), ms(res.Seen.P50), ms(res.Seen.P99), us(res.ConsulCPU), res.ConsulBytes, us(res.ReaderCPU))

	resyncs := 3
	if n > 200_000 || h.opts.Quick {
		resyncs = 1
	}
	for range resyncs {
		d, err := readers.resync(ctx)
		if err != nil {
			return err
		}
		res.Resyncs = append(res.Resyncs, d)
		h.say("signups: a full resync of a reader took %s", ms(d))
	}

	for i := range oobSamples(n, h.opts.Quick) {
		d, err := h.outOfBand(ctx, edge, fmt.Sprintf("su-oob-%d", i))
		if err != nil {
			return err
		}
		res.OutOfBand = append(res.OutOfBand, d)
		h.say("signups: a tenant written straight into KV was routed after %s", ms(d))
	}

	if err := h.leaderThroughput(ctx, client, res, leader); err != nil {
		return err
	}
	// The readers must keep up: the last sign-up reaches all of them.
	res.EdgePeak, res.DnsdPeak, res.ReadersPeak = edge.peakRSS(), dnsd.peakRSS(), readers.peakRSS()
	h.report.addMemory("signups", "edge, "+tenantsLabel(n), res.EdgePeak)
	h.report.addMemory("signups", "dnsd, "+tenantsLabel(n), res.DnsdPeak)
	return nil
}

// leaderThroughput runs the throughput run and takes the leader's peak
// RSS and lock wins.
func (h *harness) leaderThroughput(ctx context.Context, client *http.Client, res *SignupResult, leader *server) error {
	res.LeaderOnly = h.opts.SignupsLeaderOnly
	if err := h.signupThroughput(ctx, client, res, leader.addr, h.opts.Duration); err != nil {
		return err
	}
	h.say("signups: %.0f sign-ups/s with %d clients (%d failed)", res.Throughput, SignupClients, res.Failed)
	res.LeaderPeak = leader.peakRSS()
	res.LeaderWins = countLines(h.path("leader-signups.log"), "won the leader lock")
	h.report.addMemory("signups", "leader, "+tenantsLabel(res.Tenants), res.LeaderPeak)
	return nil
}

func oobSamples(tenants int, quick bool) int {
	if quick || tenants > 200_000 {
		return 1
	}
	return 3
}

// outOfBand writes tenant name straight into KV, bypassing the leader, and
// times it until the edge routes it.
func (h *harness) outOfBand(ctx context.Context, edge *server, name string) (time.Duration, error) {
	probe := newProbeClient()
	defer probe.CloseIdleConnections()
	start := time.Now()
	if err := putJSON(h.consul, signupPrefix+"tenants/"+name, router.Tenant{Name: name, Pod: pod, Created: time.Now().UTC()}); err != nil {
		return 0, err
	}
	var took time.Duration
	err := h.waitFor(ctx, 3*time.Minute, "the edge to route "+name+", written straight into KV", func() bool {
		code, _, err := probeHost(probe, edge.addr, name+".example.test", "/bytes/1")
		took = time.Since(start)
		return err == nil && code == http.StatusOK
	}, edge.procs...)
	return took, err
}

// Where the sign-ups are placed from: the pod's own coordinates.
const podLat, podLon = 53.35, -6.26

// signUp posts a sign-up and returns the status.
func signUp(client *http.Client, addr, name string) (int, error) {
	body := fmt.Sprintf(`{"name":%q,"lat":%g,"lon":%g}`, name, podLat, podLon)
	resp, err := client.Post("http://"+addr+"/v1/tenants", "application/json", strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// timeSignups signs up samples tenants one at a time, each timed until the
// edge routes it and dnsd answers it, then until every reader has it, and
// takes Consul's and the readers' costs over them.
func (h *harness) timeSignups(ctx context.Context, client *http.Client, res *SignupResult, leader, edge, dnsd *server, r *readersProc, samples int) error {
	consulPid := h.consulProc.Pid()
	cpu0, io0 := cpuTicks(consulPid), writtenBytes(consulPid)
	rcpu0 := cpuTicks(r.pgids()...)
	var served, seen []time.Duration
	probe := newProbeClient()
	defer probe.CloseIdleConnections()
	for i := range samples {
		name := fmt.Sprintf("su-t-%d", i)
		hostname := name + ".example.test"
		start := time.Now()
		code, err := signUp(client, leader.addr, name)
		if err != nil || code != http.StatusCreated {
			return fmt.Errorf("sign-up %s: status %d, %v", name, code, err)
		}
		var wg sync.WaitGroup
		var edgeT, dnsdT time.Duration
		var edgeErr, dnsdErr error
		wg.Go(func() {
			edgeT, edgeErr = pollUntil(ctx, start, func() bool {
				code, _, err := probeHost(probe, edge.addr, hostname, "/bytes/1")
				return err == nil && code == http.StatusOK
			})
		})
		wg.Go(func() {
			dnsdT, dnsdErr = pollUntil(ctx, start, func() bool {
				m, err := ask(dnsd.addr, hostname+".", dns.TypeA)
				return err == nil && m.Rcode == dns.RcodeSuccess && len(m.Answer) > 0
			})
		})
		wg.Wait()
		if err := errors.Join(edgeErr, dnsdErr); err != nil {
			return fmt.Errorf("sign-up %s served: %w", name, err)
		}
		served = append(served, max(edgeT, dnsdT))
		times, err := r.waitSeen(ctx, name)
		if err != nil {
			return err
		}
		for _, t := range times {
			seen = append(seen, time.Unix(0, t).Sub(start))
		}
	}
	cpu1, io1 := cpuTicks(consulPid), writtenBytes(consulPid)
	rcpu1 := cpuTicks(r.pgids()...)
	per := float64(samples * res.AllReaders)
	res.Samples = samples
	res.Served, res.Seen = percentiles(served), percentiles(seen)
	res.ConsulCPU = ticksDuration(cpu1-cpu0, per)
	res.ConsulBytes = float64(io1-io0) / per
	res.ReaderCPU = ticksDuration(rcpu1-rcpu0, float64(samples*res.Readers))
	return nil
}

// ticksDuration is ticks of CPU divided by n.
func ticksDuration(ticks uint64, n float64) time.Duration {
	return time.Duration(float64(ticks) * float64(time.Second) / clockTicks / n)
}

// signupThroughput runs SignupClients clients signing up tenants for d.
func (h *harness) signupThroughput(ctx context.Context, client *http.Client, res *SignupResult, addr string, d time.Duration) error {
	var ok, failed atomic.Int64
	deadline := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for c := range SignupClients {
		wg.Go(func() {
			for i := 0; time.Now().Before(deadline) && ctx.Err() == nil; i++ {
				code, err := signUp(client, addr, fmt.Sprintf("su-p-%d-%d", c, i))
				if err == nil && code == http.StatusCreated {
					ok.Add(1)
				} else {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	res.Signed, res.Failed = int(ok.Load()), int(failed.Load())
	res.Throughput = float64(ok.Load()) / time.Since(start).Seconds()
	return ctx.Err()
}

// startLeader runs a leader replica on the server CPUs reading prefix, and
// waits until it leads.
func (h *harness) startLeader(ctx context.Context, name, prefix string) (*server, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	cfg, err := h.render("leader.yaml.tmpl", name+".yaml", map[string]any{"Service": name, "Prefix": prefix})
	if err != nil {
		return nil, err
	}
	p, err := h.start(name, h.cpus.Server, nil, h.bin("leader"), "-config", cfg, "-listen", addr, "-consul", h.consulAddr, "-zone", zone)
	if err != nil {
		return nil, err
	}
	s := &server{name: "leader", addr: addr, admin: addr, procs: []*child.Process{p}}
	client := newProbeClient()
	defer client.CloseIdleConnections()
	err = h.waitFor(ctx, 10*time.Minute, name+" to lead", func() bool {
		resp, err := client.Get("http://" + addr + "/v1/leader")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var st struct {
			IsLeader bool `json:"is_leader"`
		}
		return json.NewDecoder(resp.Body).Decode(&st) == nil && st.IsLeader
	}, p)
	return s, err
}

// readersProc is bench/cmd/readers.
type readersProc struct {
	*server
	client *http.Client
}

// startReaders runs n routers in one process on the client CPUs (they
// stand for other machines) and waits until all follow the log.
func (h *harness) startReaders(ctx context.Context, prefix string, n int) (*readersProc, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	p, err := h.start("readers", h.cpus.Client, nil, h.bin("readers"),
		"-consul", h.consulAddr, "-prefix", prefix, "-zone", zone, "-n", fmt.Sprint(n), "-listen", addr)
	if err != nil {
		return nil, err
	}
	r := &readersProc{server: &server{name: "readers", addr: addr, procs: []*child.Process{p}}, client: &http.Client{Timeout: 10 * time.Minute}}
	err = h.waitFor(ctx, 20*time.Minute, fmt.Sprintf("%d readers to follow the log", n), func() bool {
		resp, err := r.client.Get("http://" + addr + "/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, p)
	return r, err
}

// waitSeen waits until every reader has published tenant name, and returns
// when each did (Unix nanoseconds).
func (r *readersProc) waitSeen(ctx context.Context, name string) ([]int64, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		resp, err := r.client.Get("http://" + r.addr + "/seen?name=" + name)
		if err == nil {
			var st struct{ Times []int64 }
			err = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if err == nil && !slices.Contains(st.Times, 0) {
				return st.Times, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("readers seeing %s: %w", name, ctx.Err())
		case <-tick.C:
		}
	}
}

// resync has the readers time a new router's full read of the platform.
func (r *readersProc) resync(ctx context.Context) (time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+r.addr+"/resync", nil)
	if err != nil {
		return 0, err
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("resync: %w", err)
	}
	defer resp.Body.Close()
	var st struct {
		MS    float64 `json:"ms"`
		Error string  `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("resync: status %d %s %v", resp.StatusCode, st.Error, err)
	}
	return time.Duration(st.MS * float64(time.Millisecond)), nil
}

// writtenBytes is wchar of /proc/<pid>/io: bytes the process wrote, to
// sockets included.
func writtenBytes(pid int) uint64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0
	}
	for line := range bytes.Lines(raw) {
		if v, ok := bytes.CutPrefix(line, []byte("wchar:")); ok {
			var n uint64
			fmt.Sscan(string(bytes.TrimSpace(v)), &n)
			return n
		}
	}
	return 0
}

// countLines counts the lines of a file that hold s.
func countLines(path, s string) int {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			n++
		}
	}
	return n
}

// us formats a duration in microseconds.
func us(d time.Duration) string {
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}

// signupTables renders the sign-up phase, with the targets where
// it ran at 100,000 tenants.
func (r *Report) signupTables(w writef) {
	s := r.Signups
	if s == nil {
		return
	}
	if s.LeaderOnly {
		r.leaderOnlyTable(w)
		return
	}
	w("#### Sign-ups through the leader: %d tenants, %d readers\n\n", s.Tenants, s.AllReaders)
	w("%d tenants written to Consul in %s; the leader's first sign-up answered %s after its start (it campaigns once its view has read them all). ",
		s.Tenants, s.Write.Round(time.Millisecond), s.LeaderFirst.Round(time.Millisecond))
	w("Readers: an edge, a dnsd, the leader and %d routers in one process (bench/cmd/readers). %d sign-ups timed one at a time; the costs are over them, divided by sign-ups × readers (Consul: all %d readers; a router: the %d of bench/cmd/readers). The machine is shared: other work ran beside the bench.\n\n",
		s.Readers, s.Samples, s.AllReaders, s.Readers)
	t := targetCell(s.Tenants == 100_000)
	w("| what | result | target (100,000 tenants) |\n| --- | ---: | --- |\n")
	w("| sign-up → the edge routes it and dnsd answers it, p50 / p99 (max) | %s / %s (%s) | %s |\n", ms(s.Served.P50), ms(s.Served.P99), ms(s.Served.Max),
		t(s.Served.P50 <= 100*time.Millisecond && s.Served.P99 <= 250*time.Millisecond, "≤ 100 / 250 ms"))
	w("| sign-up → every reader has it, p50 / p99 (max) | %s / %s (%s) | |\n", ms(s.Seen.P50), ms(s.Seen.P99), ms(s.Seen.Max))
	w("| Consul CPU per change per reader | %s | %s |\n", us(s.ConsulCPU), t(s.ConsulCPU <= time.Millisecond, "≤ 1 ms"))
	w("| Consul bytes written per change per reader | %.1f KiB | %s |\n", s.ConsulBytes/1024, t(s.ConsulBytes <= 16*1024, "≤ 16 KiB"))
	w("| a reader's CPU per change | %s | %s |\n", us(s.ReaderCPU), t(s.ReaderCPU <= time.Millisecond, "≤ 1 ms"))
	var rs []string
	for _, d := range s.Resyncs {
		rs = append(rs, ms(d))
	}
	w("| a full resync (a new reader reads the platform whole) | %s | %s |\n", strings.Join(rs, ", "),
		map[bool]string{true: "≤ 10 s at 1,000,000 " + verdict(slices.Max(append([]time.Duration{0}, s.Resyncs...)) <= 10*time.Second), false: ""}[s.Tenants >= 1_000_000])
	w("| peak RSS: edge / dnsd / leader | %s / %s / %s | %s |\n", mib(s.EdgePeak), mib(s.DnsdPeak), mib(s.LeaderPeak),
		t(s.EdgePeak <= 150*1024 && s.DnsdPeak <= 150*1024 && s.LeaderPeak <= 200*1024, "≤ 150 / 150 / 200 MB"))
	w("| peak RSS of the %d routers' process, per router | %s | |\n", s.Readers, mib(s.ReadersPeak/int64(s.Readers)))
	w("| sign-ups per second, %d clients, %s (failed) | %.0f (%d) | %s |\n", SignupClients, r.Duration, s.Throughput, s.Failed, t(s.Throughput >= 1000, "≥ 1,000"))
	var oob []string
	for _, d := range s.OutOfBand {
		oob = append(oob, ms(d))
	}
	w("| a tenant written straight into KV → the edge routes it | %s | %s |\n", strings.Join(oob, ", "),
		t(slices.Max(append([]time.Duration{0}, s.OutOfBand...)) <= 5*time.Second, "≤ 5 s"))
	w("| leader lock won over the phase (1: never lost) | %d | |\n", s.LeaderWins)
	w("\n")
}

// leaderOnlyTable renders a sign-up phase that ran the leader alone.
func (r *Report) leaderOnlyTable(w writef) {
	s := r.Signups
	w("#### Sign-ups through the leader alone: %d tenants\n\n", s.Tenants)
	w("%d tenants written to Consul in %s; the leader's first sign-up answered %s after its start. No edge, dnsd or readers ran (-signups-leader-only). The machine is shared: other work ran beside the bench.\n\n",
		s.Tenants, s.Write.Round(time.Millisecond), s.LeaderFirst.Round(time.Millisecond))
	t := targetCell(s.Tenants == 100_000)
	w("| what | result | target (100,000 tenants) |\n| --- | ---: | --- |\n")
	w("| sign-ups per second, %d clients, %s (failed) | %.0f (%d) | %s |\n", SignupClients, r.Duration, s.Throughput, s.Failed, t(s.Throughput >= 1000, "≥ 1,000"))
	w("| peak RSS of the leader | %s | %s |\n", mib(s.LeaderPeak), t(s.LeaderPeak <= 200*1024, "≤ 200 MB"))
	w("| leader lock won over the phase (1: never lost) | %d | |\n", s.LeaderWins)
	w("\n")
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

// targetCell returns the target column's writer: the goal and its verdict
// for a run at the tenants the targets are set for, nothing otherwise.
func targetCell(target bool) func(ok bool, goal string) string {
	return func(ok bool, goal string) string {
		if !target {
			return ""
		}
		return goal + " " + verdict(ok)
	}
}
