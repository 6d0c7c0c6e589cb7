// Package harness runs podedge's side-by-side load tests (`make bench`): the
// edge next to nginx, HAProxy and a bare fasthttp forwarder in front of the
// same two backends, over HTTP and (without the forwarders) HTTPS, dnsd next
// to Knot and NSD serving the same records, the edge, nginx and HAProxy while
// a backend dies, the edge and dnsd with 100,000 tenants, and sign-ups
// through the leader with 50 more readers. It starts every process itself (its own Consul included)
// on free loopback ports, pins the system under test and the load
// generators to separate CPUs, alternates the systems round after round and
// reports medians and ratios as Markdown. bench/README.md explains how to
// read the figures.
package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/bench/configs"
	"github.com/podedge/podedge/internal/child"
)

// Options configures a run. Zero values take the documented defaults.
type Options struct {
	// Bin is the folder holding the edge, dnsd, backend, forwarder,
	// loopforwarder and loadgen binaries (make build puts them in
	// ./bin). Required.
	Bin string
	// Consul is the consul binary. Required.
	Consul string
	// ConsulMode is how Consul runs: ConsulDev (the default), `consul
	// agent -dev`, or ConsulServer, a single server with its data on a
	// tmpfs, which answers compact JSON as production Consul does
	// (bench/README.md, "Consul").
	ConsulMode string
	// Rounds is how many times each system is measured; medians are
	// reported. Default 3.
	Rounds int
	// Duration is the length of each measured run. Default 10s.
	Duration time.Duration
	// FailureDuration is the length of each run that kills a backend, a
	// third of the way in. Default 9s.
	FailureDuration time.Duration
	// Tenants is the number of tenants of the scale and sign-up phases.
	// Default 100,000.
	Tenants int
	// Readers is the number of routers bench/cmd/readers runs in the
	// sign-up phase, besides its edge, dnsd and leader. Default 50.
	Readers int
	// SignupsLeaderOnly runs, of the sign-up phase, only the leader: its
	// first sign-up, the throughput run and its peak RSS, without the
	// edge, dnsd and readers (a shorter run to measure the leader alone).
	SignupsLeaderOnly bool
	// Quick shortens what Duration does not bound, for the smoke test:
	// fewer KV changes timed, a shorter lookup benchmark.
	Quick bool
	// Skip names peers to leave out: "nginx", "haproxy", "knot", "nsd".
	// Only the smoke test uses it, when a peer is not installed.
	Skip []string
	// CPUs splits the machine; nil means DefaultCPUs.
	CPUs *CPUs
	// Apps places the two app servers: AppsWithServer (the default) runs
	// them on the server CPUs with the proxy in front of them, so that a
	// proxy's work includes its backends'; AppsWithClient runs them on the
	// client CPUs with the load generator, leaving the server CPUs to the
	// proxy alone.
	Apps string
	// Phases names the phases to run, among Phases(); empty runs them all.
	// Consul and the platform always start.
	Phases []string
	// Dir is the folder for configurations and logs. Empty means a new
	// temporary folder, removed at the end unless the run failed.
	Dir string
	// ProfileDir, when set, receives CPU profiles of the edge, taken
	// through its admin listener: one per HTTP and HTTPS workload during
	// the first round (edge-<workload>.pprof, edge-https-<workload>.pprof;
	// that round pays the profiler's small cost), and one of the edge with many tenants during the KV changes
	// (edge-scale-changes.pprof). Read them with go tool pprof bin/edge.
	ProfileDir string
	// Progress receives a line per step. Nil discards them.
	Progress io.Writer
}

func (o *Options) setDefaults() error {
	if o.Bin == "" {
		return errors.New("bin: required (the folder of make build's binaries)")
	}
	for _, b := range programs() {
		if _, err := os.Stat(filepath.Join(o.Bin, b.name)); err != nil {
			return fmt.Errorf("bin: no %s in %s (run make build)", b.name, o.Bin)
		}
	}
	if o.Consul == "" {
		return errors.New("consul: required (scripts/consul.sh prints one)")
	}
	if o.Rounds == 0 {
		o.Rounds = 3
	}
	if o.Duration == 0 {
		o.Duration = 10 * time.Second
	}
	if o.FailureDuration == 0 {
		o.FailureDuration = 9 * time.Second
	}
	if o.Tenants == 0 {
		o.Tenants = 100_000
	}
	if o.Readers == 0 {
		o.Readers = 50
	}
	switch {
	case o.Rounds < 1:
		return fmt.Errorf("rounds: must be at least 1, got %d", o.Rounds)
	case o.Duration < 0 || o.FailureDuration < 0:
		return errors.New("duration: must be positive")
	case o.Tenants < 10:
		return fmt.Errorf("tenants: must be at least 10, got %d", o.Tenants)
	case o.Readers < 1:
		return fmt.Errorf("readers: must be at least 1, got %d", o.Readers)
	}
	if o.CPUs == nil {
		c := DefaultCPUs()
		o.CPUs = &c
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	switch o.Apps {
	case "":
		o.Apps = AppsWithServer
	case AppsWithServer, AppsWithClient:
	default:
		return fmt.Errorf("apps: %q is neither %q nor %q", o.Apps, AppsWithServer, AppsWithClient)
	}
	switch o.ConsulMode {
	case "":
		o.ConsulMode = ConsulDev
	case ConsulDev, ConsulServer:
	default:
		return fmt.Errorf("consul mode: %q is neither %q nor %q", o.ConsulMode, ConsulDev, ConsulServer)
	}
	for _, p := range o.Phases {
		if !slices.Contains(Phases(), p) {
			return fmt.Errorf("phases: unknown phase %q (known: %s)", p, strings.Join(Phases(), ", "))
		}
	}
	for _, s := range o.Skip {
		if !slices.Contains([]string{"nginx", "haproxy", "knot", "nsd"}, s) {
			return fmt.Errorf("skip: unknown peer %q", s)
		}
	}
	return nil
}

// Where the app servers run (Options.Apps).
const (
	AppsWithServer = "server"
	AppsWithClient = "client"
)

// How Consul runs (Options.ConsulMode).
const (
	ConsulDev    = "dev"
	ConsulServer = "server"
)

// program is a binary a run needs in Options.Bin, and the package (from
// the module's root) it is built from.
type program struct{ name, pkg string }

func programs() []program {
	return []program{
		{"edge", "./edge/cmd/edge"}, {"dnsd", "./dnsd/cmd/dnsd"}, {"backend", "./bench/cmd/backend"},
		{"forwarder", "./bench/cmd/forwarder"}, {"loopforwarder", "./bench/cmd/loopforwarder"}, {"loadgen", "./bench/cmd/loadgen"},
		{"leader", "./leader/cmd/leader"}, {"readers", "./bench/cmd/readers"},
	}
}

// Phases are the measuring phases of a run, in the order they run.
func Phases() []string {
	return []string{"http", "https", "failure", "isolation", "dns", "scale", "signups"}
}

// The names the bench serves, as the platform would.
const (
	zone   = "example.test."
	pod    = "pod-1"
	tenant = "acme"
	// host is the Host every HTTP request carries.
	host = tenant + ".example.test"
	// missing is the tenant of the NXDOMAIN query.
	missing = "nobody"
	// mainPrefix holds the platform of the HTTP and DNS runs (10 tenants);
	// scalePrefix the one of the scale test.
	mainPrefix  = "podedge/"
	scalePrefix = "scale/"
)

// harness is one run's state.
type harness struct {
	opts  Options
	cpus  CPUs
	dir   string
	procs procSet

	consulAddr string
	consul     *api.Client
	consulProc *child.Process
	consulData string // a server's data folder (Options.ConsulMode), removed at the end
	backends   []*backendProc
	// mainEdge and mainDnsd serve the 10 tenants from the HTTP and DNS
	// phases to the end, for the scale comparison.
	mainEdge, mainDnsd *server
	report             *Report
}

// Run runs the whole bench and returns its report. Every process it
// started is stopped before it returns, also when ctx is cancelled (Ctrl-C).
func Run(ctx context.Context, opts Options) (rep *Report, err error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	h := &harness{opts: opts, cpus: *opts.CPUs}
	h.dir = opts.Dir
	if h.dir == "" {
		if h.dir, err = os.MkdirTemp("", "podedge-bench-"); err != nil {
			return nil, err
		}
		defer func() {
			if err == nil {
				os.RemoveAll(h.dir)
			}
		}()
	} else if err := mkdirAll(h.dir); err != nil {
		return nil, err
	}
	if opts.ProfileDir != "" {
		if err := mkdirAll(opts.ProfileDir); err != nil {
			return nil, err
		}
	}
	defer func() {
		if h.consulData != "" {
			os.RemoveAll(h.consulData) // once Consul stopped
		}
	}()
	defer h.procs.stopAll(10 * time.Second)
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w (configurations and logs are in %s)", err, h.dir)
		}
	}()

	h.report = newReport(h)
	steps := []struct {
		name string
		run  func(context.Context) error
	}{
		{"consul", h.startConsul},
		{"platform", h.setUpPlatform},
		{"http", h.httpPhase},
		{"https", h.httpsPhase},
		{"failure", h.failurePhase},
		{"isolation", h.isolationPhase},
		{"dns", h.dnsPhase},
		{"scale", h.scalePhase},
		{"signups", h.signupsPhase},
	}
	for _, s := range steps {
		if slices.Contains(Phases(), s.name) && len(opts.Phases) > 0 && !slices.Contains(opts.Phases, s.name) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("interrupted before %s: %w", s.name, err)
		}
		if err := s.run(ctx); err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
	}
	h.report.Finished = time.Now()
	return h.report, nil
}

func (h *harness) say(format string, args ...any) {
	fmt.Fprintf(h.opts.Progress, "bench: "+format+"\n", args...)
}

func (h *harness) skip(peer string) bool { return slices.Contains(h.opts.Skip, peer) }

func (h *harness) bin(name string) string { return filepath.Join(h.opts.Bin, name) }

// start runs a long-lived process, stopped at the end of the run.
func (h *harness) start(name, cpus string, env []string, bin string, args ...string) (*child.Process, error) {
	return h.startSpec(child.Spec{Name: name, CPUs: cpus, Env: env, Bin: bin, Args: args})
}

func (h *harness) startSpec(spec child.Spec) (*child.Process, error) {
	p, err := h.spawn(spec)
	if err != nil {
		return nil, err
	}
	h.procs.add(p)
	return p, nil
}

// runClient runs a load generator on the client CPUs to its end, and
// returns its CPU use in CPUs (1.0: one CPU busy all along). Cancelling ctx
// kills it. interruptAfter, when positive, sends SIGINT to a client that
// still runs after this long (wrk then stops and reports).
func (h *harness) runClient(ctx context.Context, spec child.Spec, interruptAfter time.Duration) (float64, error) {
	spec.CPUs = h.cpus.Client
	start := time.Now()
	p, err := h.spawn(spec)
	if err != nil {
		return 0, err
	}
	var interrupt <-chan time.Time
	if interruptAfter > 0 {
		t := time.NewTimer(interruptAfter)
		defer t.Stop()
		interrupt = t.C
	}
	for waiting := true; waiting; {
		select {
		case <-p.Done():
			waiting = false
		case <-interrupt:
			_ = p.Signal(syscall.SIGINT)
		case <-ctx.Done():
			p.Kill()
			return 0, ctx.Err()
		}
	}
	if err := p.CleanExit(); err != nil {
		return 0, err
	}
	st := p.State()
	return (st.UserTime() + st.SystemTime()).Seconds() / time.Since(start).Seconds(), nil
}

// waitFor polls cond every 20ms until it holds; it fails when timeout
// passes, ctx ends or one of procs exits.
func (h *harness) waitFor(ctx context.Context, timeout time.Duration, what string, cond func() bool, procs ...*child.Process) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		for _, p := range procs {
			if p.Exited() {
				return fmt.Errorf("waiting for %s: %w", what, p.Failure())
			}
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("timed out after %s waiting for %s", timeout, what)
			}
			return fmt.Errorf("interrupted while waiting for %s", what)
		case <-tick.C:
		}
	}
	return nil
}

// render writes the template name (from bench/configs) filled with data to
// the run's folder as out, and returns its path.
func (h *harness) render(name, out string, data any) (string, error) {
	raw, err := configs.FS.ReadFile(name)
	if err != nil {
		return "", err
	}
	t, err := template.New(name).Option("missingkey=error").Parse(string(raw))
	if err != nil {
		return "", fmt.Errorf("template %s: %w", name, err)
	}
	var b strings.Builder
	if err := t.Execute(&b, data); err != nil {
		return "", fmt.Errorf("template %s: %w", name, err)
	}
	path := filepath.Join(h.dir, out)
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return "", err
	}
	return path, nil
}

// rootUser is the user nginx's workers must keep when the bench runs as
// root (nginx would switch them to nobody); empty otherwise.
func rootUser() string {
	if os.Geteuid() != 0 {
		return ""
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "root"
}
