package harness_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podedge/podedge/bench/harness"
	"github.com/podedge/podedge/internal/consultest"
)

// TestSmoke runs the whole bench with tiny durations and one round, so that
// the harness cannot rot: every system starts from its committed template,
// serves the same routes and records, is measured and stopped, and the
// report has every table. The figures themselves mean nothing here.
func TestSmoke(t *testing.T) {
	opts := smokeOptions(t)
	rep, err := harness.Run(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, opts.Dir)

	peers := map[string]bool{}
	for _, s := range []string{"nginx", "haproxy", "edge", "forwarder", "loopforwarder", "direct"} {
		peers[s] = true
	}
	for _, s := range opts.Skip {
		delete(peers, s)
	}
	for _, w := range harness.Workloads() {
		for sys := range peers {
			row := find(rep.HTTP, func(r *harness.HTTPRow) bool { return r.Workload == w.Name && r.System == sys })
			if row == nil || len(row.Rounds) != 1 || row.Median().RPS <= 0 {
				t.Errorf("%s, %s: no requests measured: %+v", sys, w.Name, row)
			}
		}
	}
	for _, w := range harness.HTTPSWorkloads() {
		for _, sys := range []string{"nginx", "haproxy", "edge"} {
			if !peers[sys] {
				continue
			}
			row := find(rep.HTTPS, func(r *harness.HTTPRow) bool { return r.Workload == w.Name && r.System == sys })
			if row == nil || len(row.Rounds) != 1 || row.Median().RPS <= 0 || row.Median().P99 <= 0 {
				t.Errorf("%s over HTTPS, %s: no requests measured: %+v", sys, w.Name, row)
			}
		}
	}
	for _, sys := range []string{"nginx", "haproxy", "edge"} {
		if !peers[sys] {
			continue
		}
		row := find(rep.Failure, func(r *harness.FailureRow) bool { return r.System == sys })
		if row == nil || len(row.Rounds) != 1 || row.Rounds[0].Requests == 0 {
			t.Errorf("failure run through %s measured nothing: %+v", sys, row)
		}
	}
	dnsSystems := []string{"dnsd"}
	for _, s := range []string{"knot", "nsd"} {
		if !skipped(opts, s) {
			dnsSystems = append(dnsSystems, s)
		}
	}
	for _, sys := range dnsSystems {
		row := find(rep.DNS, func(r *harness.DNSRow) bool { return r.Workload == "mix" && r.System == sys })
		if row == nil || row.Median().QPS <= 0 {
			t.Errorf("dnsperf against %s measured nothing: %+v", sys, row)
		}
		// The sizes are recorded only once the four answers were checked.
		if s := find(ptrs(rep.DNSSizes), func(s *harness.DNSSizes) bool { return s.System == sys }); s == nil || len(s.Bytes) != 4 {
			t.Errorf("%s's answers were not checked: %+v", sys, s)
		}
	}
	variants := [][2]string{{"rrl", "dnsd"}, {"rrl", "dnsd+rrl"}}
	if !skipped(opts, "knot") {
		variants = append(variants, [2]string{"dnssec", "dnsd"}, [2]string{"dnssec", "knot"})
	}
	for _, v := range variants {
		row := find(rep.DNS, func(r *harness.DNSRow) bool { return r.Workload == v[0] && r.System == v[1] })
		if row == nil || row.Median().QPS <= 0 {
			t.Errorf("dnsperf against %s (%s) measured nothing: %+v", v[1], v[0], row)
		}
	}
	sc := rep.Scale
	if sc == nil || sc.Tenants != opts.Tenants {
		t.Fatalf("scale result %+v", sc)
	}
	for i, c := range sc.Change {
		if c.EdgeMedian <= 0 || c.DnsdMedian <= 0 {
			t.Errorf("change times %d not measured: %+v", i, c)
		}
		if sc.Lookup[i].Allocs != 0 || sc.Lookup[i].NsPerOp <= 0 {
			t.Errorf("lookup among %d tenants: %+v, want 0 allocs", sc.Lookup[i].Tenants, sc.Lookup[i])
		}
		if sc.RSS[i].EdgeRSS <= 0 || sc.RSS[i].DnsdRSS <= 0 {
			t.Errorf("memory not read: %+v", sc.RSS[i])
		}
	}

	su := rep.Signups
	switch {
	case su == nil || su.Tenants != opts.Tenants:
		t.Errorf("sign-up result %+v", su)
	case su.Served.P50 <= 0 || su.Seen.P50 <= 0 || len(su.Resyncs) == 0 || su.Resyncs[0] <= 0 || len(su.OutOfBand) == 0:
		t.Errorf("sign-up figures not measured: %+v", su)
	case su.Signed == 0 || su.LeaderPeak <= 0 || su.ReadersPeak <= 0:
		t.Errorf("sign-up throughput or memory not measured: %+v", su)
	}

	md := rep.Markdown()
	if peers["nginx"] && !strings.Contains(md, "| edge over HTTP/2 ≥ 1.0× nginx req/s |") {
		t.Errorf("report lacks the HTTPS targets:\n%s", md)
	}
	for _, want := range []string{"#### Targets", "edge ≥ 0.9× bare fasthttp forwarder", "zero failed requests when a backend dies",
		"#### HTTP", "edge/forwarder", "#### HTTPS", "#### HTTP while a backend dies", "#### DNS", "dnsd+rrl/dnsd", "#### Memory", "#### Scale", "#### Sign-ups through the leader"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	t.Logf("report:\n%s", md)
}

// TestInterruptStopsEverything cancels a run while its servers are up, as
// Ctrl-C does, and checks that no process it started is left.
func TestInterruptStopsEverything(t *testing.T) {
	opts := smokeOptions(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	progress := opts.Progress
	var once sync.Once
	opts.Progress = writerFunc(func(p []byte) (int, error) {
		// The first measured HTTP round: every HTTP server runs.
		if strings.Contains(string(p), "http round 1") {
			once.Do(cancel)
		}
		return progress.Write(p)
	})
	_, err := harness.Run(ctx, opts)
	if err == nil {
		t.Fatal("an interrupted run succeeded")
	}
	t.Logf("interrupted run: %v", err)
	assertNothingLeft(t, opts.Dir)
}

// smokeOptions builds the binaries and returns options for a tiny run,
// skipping a peer only when it is not installed and the test runs with
// -short.
func smokeOptions(t *testing.T) harness.Options {
	t.Helper()
	consul, err := consultest.Binary()
	if err != nil {
		if testing.Short() {
			t.Skip(err.Error())
		}
		t.Fatal(err)
	}
	var skip []string
	for _, tool := range harness.Missing() {
		if tool.Peer != "" && testing.Short() {
			t.Logf("%s is not installed: %s skipped (go test -short)", tool.Name, tool.Peer)
			skip = append(skip, tool.Peer)
			continue
		}
		t.Fatalf("%s is not installed: run `sudo %s`", tool.Name, harness.InstallCommand)
	}
	return harness.Options{
		Bin:             buildBinaries(t),
		Consul:          consul,
		Rounds:          1,
		Duration:        150 * time.Millisecond,
		FailureDuration: 900 * time.Millisecond,
		Tenants:         1000,
		Readers:         3,
		Quick:           true,
		Skip:            skip,
		Dir:             t.TempDir(),
		Progress:        writerFunc(func(p []byte) (int, error) { t.Log(strings.TrimSpace(string(p))); return len(p), nil }),
	}
}

// buildBinaries builds the programs the harness runs into a temporary
// folder.
func buildBinaries(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	cmd := exec.Command("go", append([]string{"build", "-o", bin + "/"}, harness.ProgramPackages()...)...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// assertNothingLeft fails when a process still runs with the run's folder
// on its command line (every server's configuration is there).
func assertNothingLeft(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(raw) == 0 {
			continue
		}
		cmdline := strings.ReplaceAll(string(raw), "\x00", " ")
		if strings.Contains(cmdline, dir) {
			t.Errorf("process %s still runs: %s", e.Name(), cmdline)
		}
	}
}

func skipped(opts harness.Options, peer string) bool {
	for _, s := range opts.Skip {
		if s == peer {
			return true
		}
	}
	return false
}

func find[T any](rows []T, match func(T) bool) T {
	var zero T
	for _, r := range rows {
		if match(r) {
			return r
		}
	}
	return zero
}

func ptrs[T any](v []T) []*T {
	out := make([]*T, len(v))
	for i := range v {
		out[i] = &v[i]
	}
	return out
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
