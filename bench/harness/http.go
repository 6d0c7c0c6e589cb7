package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/podedge/podedge/bench/loadgen"
	"github.com/podedge/podedge/internal/child"
)

// Workload is one way of loading an HTTP system.
type Workload struct {
	// Name is how the report names it.
	Name string
	// Path is the request target: /bytes/N answers N bytes.
	Path string
	// Conns is the number of connections (requests in flight).
	Conns int
	// NewConn opens a connection for every request (the Go load
	// generator; wrk cannot).
	NewConn bool
	// Host, if set, is the Host of the requests instead of the bench's
	// tenant; Rate, if set, paces them (requests per second). Both need
	// the Go load generator.
	Host string
	Rate float64
	// Proto, for the HTTPS workloads, is "http/1.1" or "h2" (by ALPN),
	// with Streams requests in flight on each HTTP/2 connection. With
	// NewConn, every request costs a full TLS handshake.
	Proto   string
	Streams int
}

// Workloads are the four HTTP workloads of the bench; the first is the one
// the targets are about.
func Workloads() []Workload {
	return []Workload{
		{Name: "small (64 B), 64 conns", Path: "/bytes/64", Conns: 64},
		{Name: "1 KiB, 256 conns", Path: "/bytes/1024", Conns: 256},
		{Name: "100 KiB, 64 conns", Path: "/bytes/102400", Conns: 64},
		{Name: "new conn per request (64 B), 64 in flight", Path: "/bytes/64", Conns: 64, NewConn: true},
	}
}

// HTTPResult is one measured HTTP run.
type HTTPResult struct {
	RPS           float64
	P50, P99, Max time.Duration
	// Errors are failed requests: connection errors, timeouts and
	// non-2xx answers; Failures counts them by kind.
	Errors   int64
	Failures map[string]int64
	// ServerCPU is the CPU time the system under test used, in CPUs (1.0
	// is one CPU busy all the time), its backends left out; ClientCPU the
	// load generator's.
	ServerCPU, ClientCPU float64
}

// wrkThreads is wrk's thread count: two, so that the direct runs can give
// each backend a thread of its own, and the same for every system.
const wrkThreads = 2

// httpPhase measures every HTTP system on every workload, alternating the
// systems within each round.
func (h *harness) httpPhase(ctx context.Context) error {
	if err := h.writeWrkScript(); err != nil {
		return err
	}
	systems := []*server{h.direct()}
	if !h.skip("nginx") {
		s, err := h.startNginx(ctx, "nginx", nil)
		if err != nil {
			return err
		}
		systems = append(systems, s)
	}
	if !h.skip("haproxy") {
		s, err := h.startHAProxy(ctx, "haproxy", nil)
		if err != nil {
			return err
		}
		systems = append(systems, s)
	}
	fwd, err := h.startForwarder(ctx, "forwarder")
	if err != nil {
		return err
	}
	loopFwd, err := h.startForwarder(ctx, "loopforwarder")
	if err != nil {
		return err
	}
	edge, err := h.mainEdgeServer(ctx)
	if err != nil {
		return err
	}
	systems = append(systems, fwd, loopFwd, edge)
	h.say("http: %d systems, %d workloads, %d rounds of %s", len(systems), len(Workloads()), h.opts.Rounds, h.opts.Duration)

	// One short unmeasured run per system first, so that every one starts
	// the measured rounds warm (connection pools, page cache, JIT-free but
	// lazily allocated buffers).
	warm := Workloads()[0]
	for _, s := range systems {
		if _, err := h.measureHTTP(ctx, s, warm, min(h.opts.Duration, time.Second)); err != nil {
			return fmt.Errorf("warm-up of %s: %w", s.name, err)
		}
	}
	for round := 1; round <= h.opts.Rounds; round++ {
		for _, w := range Workloads() {
			for _, s := range rotated(systems, round) {
				var profiled <-chan error
				if s == edge && round == 1 {
					profiled = h.profileEdge(s, profileName("edge", w.Name), h.opts.Duration)
				}
				res, err := h.measureHTTP(ctx, s, w, h.opts.Duration)
				if err != nil {
					return fmt.Errorf("%s, %s, round %d: %w", s.name, w.Name, round, err)
				}
				if profiled != nil {
					if err := <-profiled; err != nil {
						return err
					}
				}
				h.report.addHTTP(w.Name, s.name, res)
				h.say("http round %d %-9s %-42s %9.0f req/s  p99 %-9s CPU server %.2f client %.2f  errors %d %s",
					round, s.name, w.Name, res.RPS, res.P99.Round(time.Microsecond), res.ServerCPU, res.ClientCPU, res.Errors, kinds(res.Failures))
			}
		}
	}
	for _, s := range systems {
		h.report.addMemory("http", s.name, s.peakRSS())
	}
	for _, s := range systems {
		if s.name != "direct" && s != edge {
			s.stop()
		}
	}
	return nil
}

// measureHTTP runs one workload against s for d and measures the CPU time
// s used meanwhile.
func (h *harness) measureHTTP(ctx context.Context, s *server, w Workload, d time.Duration) (HTTPResult, error) {
	pgids := s.pgids()
	before, start := cpuTicks(pgids...), time.Now()
	var res HTTPResult
	var err error
	if w.NewConn {
		res, err = h.runLoadgen(ctx, s, w, d, nil)
	} else {
		res, err = h.runWrk(ctx, s, w, d)
	}
	if err != nil {
		return res, err
	}
	res.ServerCPU = float64(cpuTicks(pgids...)-before) / clockTicks / time.Since(start).Seconds()
	return res, nil
}

// wrkResult is the JSON line report.lua prints.
type wrkResult struct {
	Requests      int64 `json:"requests"`
	DurationUS    int64 `json:"duration_us"`
	ConnectErrors int64 `json:"connect_errors"`
	ReadErrors    int64 `json:"read_errors"`
	WriteErrors   int64 `json:"write_errors"`
	StatusErrors  int64 `json:"status_errors"`
	Timeouts      int64 `json:"timeouts"`
	P50US         int64 `json:"p50_us"`
	P99US         int64 `json:"p99_us"`
	MaxUS         int64 `json:"max_us"`
}

// runWrk runs wrk on the client CPUs.
func (h *harness) runWrk(ctx context.Context, s *server, w Workload, d time.Duration) (HTTPResult, error) {
	bin, err := LookTool("wrk")
	if err != nil {
		return HTTPResult{}, err
	}
	var env []string
	if len(s.addrs) > 0 {
		env = append(env, "BENCH_ADDRS="+strings.Join(s.addrs, ","))
	}
	// wrk runs whole seconds; a shorter run is cut short with SIGINT, on
	// which wrk stops and reports what it measured.
	secs := int(math.Ceil(d.Seconds()))
	var interrupt time.Duration
	if time.Duration(secs)*time.Second != d {
		interrupt = d
	}
	var out bytes.Buffer
	cpu, err := h.runClient(ctx, child.Spec{Name: "wrk", Env: env, Stdout: &out, Bin: bin, Args: []string{
		"-t", strconv.Itoa(wrkThreads), "-c", strconv.Itoa(max(w.Conns, wrkThreads)),
		"-d", strconv.Itoa(secs) + "s", "--timeout", "5s",
		"-s", h.path("report.lua"), "-H", "Host: " + host,
		"http://" + s.addr + w.Path,
	}}, interrupt)
	if err != nil {
		return HTTPResult{}, fmt.Errorf("wrk: %w: %s", err, out.String())
	}
	res, err := parseWrk(out.String())
	res.ClientCPU = cpu
	return res, err
}

// parseWrk reads the result line report.lua prints.
func parseWrk(out string) (HTTPResult, error) {
	_, line, ok := strings.Cut(out, "BENCH-RESULT ")
	if !ok {
		return HTTPResult{}, fmt.Errorf("wrk printed no result: %s", out)
	}
	line, _, _ = strings.Cut(line, "\n")
	var r wrkResult
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		return HTTPResult{}, fmt.Errorf("wrk result %q: %w", line, err)
	}
	if r.DurationUS <= 0 {
		return HTTPResult{}, fmt.Errorf("wrk result %q: no duration", line)
	}
	res := HTTPResult{
		RPS:      float64(r.Requests) / (float64(r.DurationUS) / 1e6),
		P50:      time.Duration(r.P50US) * time.Microsecond,
		P99:      time.Duration(r.P99US) * time.Microsecond,
		Max:      time.Duration(r.MaxUS) * time.Microsecond,
		Failures: map[string]int64{},
	}
	for k, v := range map[string]int64{"connect": r.ConnectErrors, "read": r.ReadErrors, "write": r.WriteErrors,
		"status": r.StatusErrors, "timeout": r.Timeouts} {
		if v > 0 {
			res.Failures[k] = v
			res.Errors += v
		}
	}
	return res, nil
}

// runLoadgen runs the Go load generator on the client CPUs. started, if
// set, is called when every connection runs; the failure runs use it to
// time the backend's death.
func (h *harness) runLoadgen(ctx context.Context, s *server, w Workload, d time.Duration, started func()) (HTTPResult, error) {
	lr, cpu, err := h.loadgen(ctx, s, w, d, started)
	if err != nil {
		return HTTPResult{}, err
	}
	return HTTPResult{RPS: lr.RPS, P50: lr.P50, P99: lr.P99, Max: lr.Max, Errors: lr.Failed, Failures: lr.Failures, ClientCPU: cpu}, nil
}

// loadgen runs the Go load generator and returns its result and CPU use.
func (h *harness) loadgen(ctx context.Context, s *server, w Workload, d time.Duration, started func()) (loadgen.Result, float64, error) {
	return h.loadgenArgs(ctx, s, w, d, started)
}

// loadgenArgs is loadgen with more arguments for it.
func (h *harness) loadgenArgs(ctx context.Context, s *server, w Workload, d time.Duration, started func(), more ...string) (loadgen.Result, float64, error) {
	addrs := s.addrs
	if len(addrs) == 0 {
		addrs = []string{s.addr}
	}
	hostname := host
	if w.Host != "" {
		hostname = w.Host
	}
	args := []string{"-addrs", strings.Join(addrs, ","), "-host", hostname, "-path", w.Path,
		"-conns", strconv.Itoa(w.Conns), "-duration", d.String()}
	if w.Rate > 0 {
		args = append(args, "-rate", strconv.FormatFloat(w.Rate, 'f', -1, 64))
	}
	if w.NewConn {
		args = append(args, "-new-conn")
	}
	args = append(args, more...)
	var out bytes.Buffer
	spec := child.Spec{Name: "loadgen", Stdout: &out, Bin: h.bin("loadgen"), Args: args}
	if started != nil {
		spec.Stderr = &lineWatch{line: "started", fn: started}
	}
	cpu, err := h.runClient(ctx, spec, 0)
	if err != nil {
		return loadgen.Result{}, 0, fmt.Errorf("loadgen: %w", err)
	}
	var r loadgen.Result
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		return r, 0, fmt.Errorf("loadgen result %q: %w", out.String(), err)
	}
	return r, cpu, nil
}

// lineWatch is a writer that calls fn once, when a line equal to line has
// been written.
type lineWatch struct {
	line string
	fn   func()
	buf  []byte
	done bool
}

func (l *lineWatch) Write(p []byte) (int, error) {
	if l.done {
		return len(p), nil
	}
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		if string(l.buf[:i]) == l.line {
			l.done = true
			l.fn()
			return len(p), nil
		}
		l.buf = l.buf[i+1:]
	}
}
