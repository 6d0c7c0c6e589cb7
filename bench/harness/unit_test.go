package harness

import (
	"bufio"
	"net/http"
	"net/http/httptest"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSplitCPUs(t *testing.T) {
	for _, c := range []struct {
		n              int
		server, client string
		count          int
	}{
		{1, "", "", 1},
		{2, "0", "1", 1},
		{4, "0-1", "2-3", 2},
		{5, "0-1", "2-4", 2},
	} {
		got := SplitCPUs(c.n)
		if got.Server != c.server || got.Client != c.client || got.ServerCount != c.count {
			t.Errorf("SplitCPUs(%d) = %+v, want server %q client %q count %d", c.n, got, c.server, c.client, c.count)
		}
	}
}

func TestParseWrk(t *testing.T) {
	out := "Running 10s test @ http://127.0.0.1:1/\n" +
		"BENCH-RESULT {\"requests\":200000,\"duration_us\":10000000,\"bytes\":1,\"connect_errors\":0,\"read_errors\":2," +
		"\"write_errors\":0,\"status_errors\":3,\"timeouts\":0,\"p50_us\":800,\"p99_us\":2500,\"max_us\":9000}\n"
	r, err := parseWrk(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.RPS != 20000 || r.P50 != 800*time.Microsecond || r.P99 != 2500*time.Microsecond || r.Max != 9*time.Millisecond {
		t.Fatalf("parsed %+v", r)
	}
	if r.Errors != 5 || r.Failures["read"] != 2 || r.Failures["status"] != 3 || len(r.Failures) != 2 {
		t.Fatalf("errors %d %v", r.Errors, r.Failures)
	}
	if _, err := parseWrk("unable to connect to 127.0.0.1:1 Connection refused\n"); err == nil {
		t.Fatal("no error without a result line")
	}
}

func TestParseDnsperf(t *testing.T) {
	out := `Statistics:

  Queries sent:         1000000
  Queries completed:    999990 (100.00%)
  Queries lost:         10 (0.00%)

  Response codes:       NOERROR 749993 (75.00%), NXDOMAIN 249997 (25.00%)
  Average packet size:  request 36, response 227
  Run time (s):         10.000123
  Queries per second:   99997.76

  Average Latency (s):  0.001234 (min 0.000012, max 0.012345)
  Latency StdDev (s):   0.000321
`
	r, err := parseDnsperf(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.Sent != 1000000 || r.Lost != 10 || r.QPS != 99997.76 || r.AvgLatency != 1234*time.Microsecond {
		t.Fatalf("parsed %+v", r)
	}
	if _, err := parseDnsperf("Error: no such file\n"); err == nil {
		t.Fatal("no error for output without statistics")
	}
}

func TestParseH2load(t *testing.T) {
	out := `starting benchmark...
finished in 10.00s, 47267.10 req/s, 3.21MB/s
requests: 472671 total, 472671 started, 472671 done, 472660 succeeded, 11 failed, 3 errored, 1 timeout
status codes: 472660 2xx, 0 3xx, 7 4xx, 0 5xx
TLS Protocol: TLSv1.3
Application protocol: h2
`
	r, err := parseH2load(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.RPS != 47267.10 || r.Errors != 11 || r.Failures["status 4xx"] != 7 || r.Failures["errored"] != 3 || r.Failures["timeout"] != 1 || len(r.Failures) != 3 {
		t.Fatalf("parsed %+v", r)
	}
	if _, err := parseH2load("starting benchmark...\n"); err == nil {
		t.Fatal("no error without a summary")
	}
	lines := "1700000000000000\t200\t900\n1700000000000001\t502\t1\n"
	for i := 0; i < 98; i++ {
		lines += "1700000000000002\t200\t100\n"
	}
	lines += "1700000000000003\t200\t5000\n"
	p50, p99, mx, err := h2loadLatencies(bufio.NewReader(strings.NewReader(lines)))
	if err != nil {
		t.Fatal(err)
	}
	// 100 answers of 2xx: 98 of 100 µs, one of 900, one of 5000.
	if p50 != 100*time.Microsecond || p99 != 5*time.Millisecond || mx != 5*time.Millisecond {
		t.Fatalf("p50 %s p99 %s max %s", p50, p99, mx)
	}
	if _, _, _, err := h2loadLatencies(bufio.NewReader(strings.NewReader(""))); err == nil {
		t.Fatal("no error for an empty log")
	}
}

func TestLineWatch(t *testing.T) {
	calls := 0
	w := &lineWatch{line: "started", fn: func() { calls++ }}
	for _, chunk := range []string{"warming", " up\nsta", "rted\n", "started\n"} {
		w.Write([]byte(chunk))
	}
	if calls != 1 {
		t.Fatalf("fn called %d times, want once", calls)
	}
}

// sampleReport is a report of two rounds where the edge misses some
// targets; the machine is slower in the second round.
func sampleReport() *Report {
	r := &Report{Rounds: 2, Duration: time.Second, CPUs: SplitCPUs(2), Started: time.Unix(0, 0), Finished: time.Unix(60, 0)}
	small := Workloads()[0].Name
	for _, slow := range []float64{1, 0.5} {
		r.addHTTP(small, "nginx", HTTPResult{RPS: 50000 * slow, P99: 2 * time.Millisecond, ServerCPU: 1})
		r.addHTTP(small, "haproxy", HTTPResult{RPS: 40000 * slow, P99: 3 * time.Millisecond, ServerCPU: 1})
		r.addHTTP(small, "forwarder", HTTPResult{RPS: 60000 * slow, P99: time.Millisecond, ServerCPU: 1})
		r.addHTTP(small, "loopforwarder", HTTPResult{RPS: 75000 * slow, P99: time.Millisecond, ServerCPU: 1})
		r.addHTTP(small, "edge", HTTPResult{RPS: 45000 * slow, P99: 2500 * time.Microsecond, ServerCPU: 1.2})
		r.addDNS("mix", "dnsd", DNSResult{QPS: 90000 * slow, ServerCPU: 0.9, ClientCPU: 0.95})
		r.addDNS("mix", "nsd", DNSResult{QPS: 80000 * slow, ServerCPU: 0.8, ClientCPU: 0.95})
		r.addDNS("mix", "knot", DNSResult{QPS: 120000 * slow, ServerCPU: 0.9})
	}
	for _, slow := range []float64{1, 0.5} {
		wl := HTTPSWorkloads()
		r.addHTTPS(wl[0].Name, "nginx", HTTPResult{RPS: 40000 * slow, ServerCPU: 1})
		r.addHTTPS(wl[0].Name, "edge", HTTPResult{RPS: 44000 * slow, ServerCPU: 1})
		r.addHTTPS(wl[1].Name, "nginx", HTTPResult{RPS: 30000 * slow, ServerCPU: 1})
		r.addHTTPS(wl[1].Name, "edge", HTTPResult{RPS: 30000 * slow, ServerCPU: 0.9})
		r.addHTTPS(wl[2].Name, "nginx", HTTPResult{RPS: 2000 * slow, ServerCPU: 1, ClientCPU: 0.95})
		r.addHTTPS(wl[2].Name, "edge", HTTPResult{RPS: 1900 * slow, ServerCPU: 0.9, ClientCPU: 0.95})
	}
	r.addFailure("edge", FailureResult{Requests: 1000, Failed: 2, Failures: map[string]int64{"status 502": 2}})
	r.addFailure("edge", FailureResult{Requests: 1000})
	r.addFailure("nginx", FailureResult{Requests: 1000})
	return r
}

func TestMarkdownStatesEveryTarget(t *testing.T) {
	md := sampleReport().Markdown()
	for _, want := range []string{
		// The medians mix a fast and a slow round; the ratios pair the
		// rounds, so the slow round does not skew them.
		"| edge ≥ 1.0× nginx req/s, small responses | 0.90× (0.90–0.90); medians 33750 vs 37500 | **missed** |",
		"| edge p99 no worse than nginx, small responses | 1.25× (1.25–1.25); medians 2.50 ms vs 2.00 ms | **missed** |",
		"| edge ≥ 1.0× HAProxy req/s, small responses | 1.12× (1.12–1.12); medians 33750 vs 30000 | met |",
		"| edge p99 no worse than HAProxy, small responses | 0.83× (0.83–0.83); medians 2.50 ms vs 3.00 ms | met |",
		"| edge ≥ 0.9× bare fasthttp forwarder req/s, small responses | 0.75× (0.75–0.75); medians 33750 vs 45000 | **missed** |",
		"| zero failed requests when a backend dies (edge) | 2, 0 failed in 2 runs | **missed** |",
		"| dnsd ≥ 1.0× NSD queries/s | 1.12× (1.12–1.12); medians 67500 vs 60000 | met |",
		// dnsperf was saturated: the cost per query decides.
		"| the same by CPU per query, since dnsperf was the bottleneck: dnsd's cost ≤ NSD's | 1.00× (1.00–1.00)",
		"| dnsd on the way to Knot's queries/s | 0.75× (0.75–0.75); medians 67500 vs 90000 | |",
		"| " + Workloads()[0].Name + " | 0.90× (0.90–0.90) · p99 1.25 · CPU 1.33 | 1.12× (1.12–1.12) · p99 0.83 · CPU 1.07 | 0.75× (0.75–0.75) · p99 2.50 · CPU 1.60 | – |",
		"| workload | loopforwarder/forwarder | loopforwarder/nginx | loopforwarder/HAProxy |",
		"| " + Workloads()[0].Name + " | 1.25× (1.25–1.25) · p99 1.00 · CPU 0.80 | 1.50× (1.50–1.50) · p99 0.50 · CPU 0.67 | 1.88× (1.88–1.88) · p99 0.33 · CPU 0.53 |",
		"| dnsd/Knot | 0.75× (0.75–0.75) | 1.33× (1.33–1.33) |",
		"so their throughput is the client's ceiling rather than the server's; compare CPU per query instead: dnsd, nsd.",
		"on CPU 0; the load generator and Consul on CPU 1",
		"| edge over HTTP/2 ≥ 1.0× nginx req/s | 1.00× (1.00–1.00); medians 22500 vs 22500 | met |",
		"| edge over HTTP/2: CPU per request ≤ nginx's | 0.90× (0.90–0.90); medians 45.0 vs 50.0 µs | met |",
		"| edge over HTTP/1.1 over TLS ≥ 1.2× nginx req/s | 1.10× (1.10–1.10); medians 33000 vs 30000 | **missed** |",
		"| edge new TLS 1.3 connections/s ≥ 1.0× nginx's | 0.95× (0.95–0.95); medians 1425 vs 1500 | **missed** |",
		// The Go load generator was saturated: the cost per handshake decides.
		"| the same by CPU per request, the load generator being the bottleneck: edge's ≤ nginx's | 0.95× (0.95–0.95)",
		"#### HTTPS",
		"| " + HTTPSWorkloads()[1].Name + " | 1.00× (1.00–1.00) · p99 0.00 · CPU 0.90 | – |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

// A run of the HTTP phase alone, with the app servers beside the load
// generator, says where they ran and leaves out the tables it has nothing
// for.
func TestMarkdownOfAPartialRun(t *testing.T) {
	r := sampleReport()
	r.Apps = AppsWithClient
	r.DNS, r.DNSSizes, r.Memory, r.Failure, r.Scale = nil, nil, nil, nil, nil
	md := r.Markdown()
	if want := "the system under test on CPU 0, alone; the two backends, the load generator and Consul on CPU 1"; !strings.Contains(md, want) {
		t.Errorf("report lacks %q:\n%s", want, md)
	}
	for _, absent := range []string{"#### DNS", "#### Memory", "#### HTTP while a backend dies", "dnsd ≥ 1.0× NSD"} {
		if strings.Contains(md, absent) {
			t.Errorf("report of the HTTP phase alone has %q:\n%s", absent, md)
		}
	}
	if !strings.Contains(md, "| edge ≥ 1.0× nginx req/s, small responses |") {
		t.Errorf("report lacks the HTTP targets:\n%s", md)
	}
}

// A sign-up phase that ran the leader alone reports its rate and resident
// set against the targets, and nothing of the readers.
func TestMarkdownOfTheLeaderAlone(t *testing.T) {
	r := sampleReport()
	r.Signups = &SignupResult{Tenants: 100_000, LeaderOnly: true, Throughput: 1200, LeaderPeak: 150 * 1024, LeaderWins: 1}
	md := r.Markdown()
	for _, want := range []string{"#### Sign-ups through the leader alone: 100000 tenants", "| 1200 (0) | ≥ 1,000 met |", "| 150.0 MiB | ≤ 200 MB met |"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "every reader has it") {
		t.Errorf("report of the leader alone has the readers' rows:\n%s", md)
	}
}

// A run without the HTTP phase has no HTTP table and no HTTP target.
func TestMarkdownWithoutHTTP(t *testing.T) {
	r := sampleReport()
	r.HTTP = nil
	md := r.Markdown()
	for _, absent := range []string{"#### HTTP\n", "edge ≥ 1.0× nginx"} {
		if strings.Contains(md, absent) {
			t.Errorf("report without the HTTP phase has %q:\n%s", absent, md)
		}
	}
	if !strings.Contains(md, "#### DNS") {
		t.Errorf("report lacks the DNS table:\n%s", md)
	}
}

func TestPairedRatios(t *testing.T) {
	a := &HTTPRow{Rounds: []HTTPResult{{RPS: 300}, {RPS: 100}, {RPS: 200}}}
	b := &HTTPRow{Rounds: []HTTPResult{{RPS: 200}, {RPS: 100}, {RPS: 400}}}
	p := httpRatio(a, b, rps)
	if p.med != 1 || p.lo != 0.5 || p.hi != 1.5 || p.String() != "1.00× (0.50–1.50)" {
		t.Fatalf("paired %+v %q", p, p)
	}
	if m := a.Median(); m.RPS != 200 {
		t.Fatalf("median %+v", m)
	}
	even := &DNSRow{Rounds: []DNSResult{{QPS: 10}, {QPS: 20}}}
	if m := even.Median(); m.QPS != 15 {
		t.Fatalf("median of two %v", m.QPS)
	}
	// A round without a figure (a division by zero) is left out.
	c := &HTTPRow{Rounds: []HTTPResult{{RPS: 1}, {RPS: 0}}}
	if p := httpRatio(a, c, rps); p.n != 1 || p.med != 300 || p.String() != "300.00×" {
		t.Fatalf("paired with a zero %+v", p)
	}
}

func TestSaveResults(t *testing.T) {
	dir := t.TempDir()
	started := time.Date(2026, 11, 27, 1, 0, 30, 0, time.FixedZone("CET", 3600))
	if got := ResultsName(started); got != "2026-11-27-0000.md" {
		t.Fatalf("ResultsName = %q, want the UTC minute", got)
	}
	read := func(p string) string {
		t.Helper()
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(raw)
	}
	path, err := SaveResults(dir, started, "### Run of 2026-11-27 00:00 UTC\nfirst table\n")
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "results", "2026-11-27-0000.md"); path != want {
		t.Fatalf("dated file %s, want %s", path, want)
	}
	if got := read(path); !strings.HasPrefix(got, "# bench: the run of 2026-11-27 00:00 UTC\n") || !strings.HasSuffix(got, "\nfirst table\n") {
		t.Fatalf("dated file is\n%s", got)
	}
	latest := read(filepath.Join(dir, "RESULTS.md"))
	if !strings.Contains(latest, "[results/2026-11-27-0000.md](results/2026-11-27-0000.md)") || !strings.HasSuffix(latest, "\nfirst table\n") {
		t.Fatalf("RESULTS.md is\n%s", latest)
	}

	// A second run in the same minute keeps the first one's file.
	path2, err := SaveResults(dir, started, "second table\n")
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "results", "2026-11-27-0000-2.md"); path2 != want {
		t.Fatalf("second dated file %s, want %s", path2, want)
	}
	if !strings.HasSuffix(read(path), "first table\n") || !strings.HasSuffix(read(path2), "second table\n") {
		t.Fatal("the second run overwrote the first one's file")
	}
	latest = read(filepath.Join(dir, "RESULTS.md"))
	if !strings.Contains(latest, "(results/2026-11-27-0000-2.md)") || strings.Contains(latest, "first table") {
		t.Fatalf("RESULTS.md is not the latest run:\n%s", latest)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".RESULTS.md.*")); len(left) > 0 {
		t.Fatalf("temporary files left: %v", left)
	}

	// A folder that cannot be made names the problem.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	if _, err := SaveResults(file, started, "x"); err == nil || !strings.HasPrefix(err.Error(), "results: ") {
		t.Fatalf("error %v, want one about the results", err)
	}
}

func TestOptionsNameTheBadKey(t *testing.T) {
	bin := t.TempDir()
	for _, b := range programs() {
		os.WriteFile(filepath.Join(bin, b.name), nil, 0o755)
	}
	for _, c := range []struct {
		opts Options
		want string
	}{
		{Options{}, "bin: required"},
		{Options{Bin: t.TempDir(), Consul: "consul"}, "bin: no edge"},
		{Options{Bin: bin}, "consul: required"},
		{Options{Bin: bin, Consul: "consul", Rounds: -1}, "rounds:"},
		{Options{Bin: bin, Consul: "consul", Tenants: 5}, "tenants:"},
		{Options{Bin: bin, Consul: "consul", Skip: []string{"apache"}}, `skip: unknown peer "apache"`},
		{Options{Bin: bin, Consul: "consul", Apps: "elsewhere"}, `apps: "elsewhere" is neither "server" nor "client"`},
		{Options{Bin: bin, Consul: "consul", Phases: []string{"http", "tls"}}, `phases: unknown phase "tls"`},
		{Options{Bin: bin, Consul: "consul", ConsulMode: "prod"}, `consul mode: "prod" is neither "dev" nor "server"`},
	} {
		err := c.opts.setDefaults()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want %q", c.opts, err, c.want)
		}
	}
}

func TestProfileEdgeSavesAProfile(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	dir := t.TempDir()
	h := &harness{opts: Options{ProfileDir: dir}}
	s := &server{admin: strings.TrimPrefix(srv.URL, "http://")}
	if err := <-h.profileEdge(s, profileName("edge", Workloads()[0].Name), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "edge-small-64-b-64-conns.pprof")
	if st, err := os.Stat(path); err != nil || st.Size() == 0 {
		t.Fatalf("no profile at %s: %v", path, err)
	}
	// Too short a run to profile: nothing is taken, nothing fails.
	if err := <-h.profileEdge(s, "short", time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "short.pprof")); err == nil {
		t.Fatal("a 1s run was profiled")
	}
}

func TestRotatedStartsEachRoundOneLater(t *testing.T) {
	systems := []string{"a", "b", "c"}
	for round, want := range map[int]string{1: "abc", 2: "bca", 3: "cab", 4: "abc"} {
		if got := strings.Join(rotated(systems, round), ""); got != want {
			t.Errorf("round %d: %s, want %s", round, got, want)
		}
	}
	if strings.Join(systems, "") != "abc" {
		t.Fatal("rotated changed its argument")
	}
}

// Profiles are named for their workload, with nothing a path cannot hold.
func TestProfileNamesAreFileNames(t *testing.T) {
	for _, w := range append(Workloads(), HTTPSWorkloads()...) {
		name := profileName("edge-https", w.Name)
		if strings.ContainsAny(name, "/ ()×,") {
			t.Errorf("profile name %q of %q", name, w.Name)
		}
	}
	if got := profileName("edge-https", HTTPSWorkloads()[1].Name); got != "edge-https-http2-64-b-64-conns-x-10-streams" {
		t.Errorf("got %q", got)
	}
}
