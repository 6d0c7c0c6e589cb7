package harness

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/podedge/podedge/bench/loadgen"
)

// FailureResult is one run during which a backend was killed.
type FailureResult struct {
	Requests int64
	Failed   int64
	// Failures counts the failed requests by kind ("status 502", "reset",
	// ...).
	Failures map[string]int64
}

// failureWorkload is the load of the failure runs: small responses over 64
// keep-alive connections, through the Go load generator, which counts
// every failed request and never retries.
func failureWorkload() Workload {
	return Workload{Name: "failure", Path: "/bytes/64", Conns: 64}
}

// failurePhase kills the second backend (SIGKILL) a third of the way into a
// run through each proxy, and counts the requests that failed. Each run
// starts a fresh proxy with both backends up and passing, so that no
// proxy starts with health state from the run before.
func (h *harness) failurePhase(ctx context.Context) error {
	type starter struct {
		name  string
		start func(context.Context, int) (*server, error)
	}
	var proxies []starter
	if !h.skip("nginx") {
		proxies = append(proxies, starter{"nginx", func(ctx context.Context, i int) (*server, error) {
			return h.startNginx(ctx, fmt.Sprintf("nginx-failure-%d", i), nil)
		}})
	}
	if !h.skip("haproxy") {
		proxies = append(proxies, starter{"haproxy", func(ctx context.Context, i int) (*server, error) {
			return h.startHAProxy(ctx, fmt.Sprintf("haproxy-failure-%d", i), nil)
		}})
	}
	proxies = append(proxies, starter{"edge", func(ctx context.Context, i int) (*server, error) {
		return h.startEdge(ctx, edgeSpec{name: fmt.Sprintf("edge-failure-%d", i), prefix: mainPrefix, publicIP: fmt.Sprintf("198.51.100.%d", i)})
	}})
	victim := h.backends[len(h.backends)-1]
	h.say("failure: %d rounds of %s through %d proxies, %s killed a third of the way in", h.opts.Rounds, h.opts.FailureDuration, len(proxies), victim.name)
	run := 0
	for round := 1; round <= h.opts.Rounds; round++ {
		for _, p := range proxies {
			run++
			if victim.proc.Exited() {
				if err := h.startBackend(victim); err != nil {
					return err
				}
			}
			if err := h.waitBackends(ctx); err != nil {
				return err
			}
			s, err := p.start(ctx, run)
			if err != nil {
				return err
			}
			res, err := h.failureRun(ctx, s, victim)
			s.stop()
			if err != nil {
				return fmt.Errorf("%s, round %d: %w", p.name, round, err)
			}
			h.report.addFailure(p.name, res)
			h.say("failure round %d %-8s %7d requests, %d failed %s", round, p.name, res.Requests, res.Failed, kinds(res.Failures))
		}
	}
	if victim.proc.Exited() {
		if err := h.startBackend(victim); err != nil {
			return err
		}
	}
	return h.waitBackends(ctx)
}

// failureRun loads s and kills victim a third of the way in.
func (h *harness) failureRun(ctx context.Context, s *server, victim *backendProc) (FailureResult, error) {
	d := h.opts.FailureDuration
	killed := make(chan time.Time, 1)
	started := func() {
		time.AfterFunc(d/3, func() {
			victim.proc.Kill()
			killed <- time.Now()
		})
	}
	lr, _, err := h.loadgen(ctx, s, failureWorkload(), d, started)
	ended := time.Now()
	if err != nil {
		return FailureResult{}, err
	}
	select {
	case at := <-killed:
		if at.After(ended) {
			return FailureResult{}, fmt.Errorf("the backend was killed only after the run ended: the machine is too loaded")
		}
	case <-time.After(time.Minute):
		return FailureResult{}, fmt.Errorf("the backend was not killed")
	}
	return failureOf(lr), nil
}

func failureOf(lr loadgen.Result) FailureResult {
	return FailureResult{Requests: lr.Requests + lr.Failed, Failed: lr.Failed, Failures: lr.Failures}
}

// kinds formats failure counts as "(status 502: 3, reset: 1)".
func kinds(m map[string]int64) string {
	if len(m) == 0 {
		return ""
	}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s: %d", k, m[k]))
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

func (r *Report) failureTable(w writef) {
	if len(r.Failure) == 0 {
		return
	}
	w("#### HTTP while a backend dies\n\nOne of the two backends is killed (SIGKILL) a third of the way into a %s run of small responses over 64 keep-alive connections (the Go load generator, which never retries). Each run starts a fresh proxy.\n\n", r.FailureDuration)
	w("| proxy | requests per run | failed, each run | how they failed (all runs) | passive health as configured |\n| --- | ---: | --- | --- | --- |\n")
	health := map[string]string{
		"nginx":   "nginx defaults: max_fails=1 fail_timeout=10s; proxy_next_upstream error timeout (a GET that fails is tried on the other server)",
		"haproxy": "no checks, so no passive health; retries 3, option redispatch 1 (a refused connection is retried on the other server)",
		"edge":    "edge defaults: 3 failures eject for 5 s (doubling), 2 retries on another app server, Consul's 1 s check",
	}
	for _, row := range r.Failure {
		var failed []string
		all := map[string]int64{}
		for _, rr := range row.Rounds {
			failed = append(failed, fmt.Sprint(rr.Failed))
			for k, v := range rr.Failures {
				all[k] += v
			}
		}
		reqs := median(row.Rounds, func(f FailureResult) float64 { return float64(f.Requests) })
		how := strings.Trim(kinds(all), "()")
		if how == "" {
			how = "–"
		}
		w("| %s | %.0f | %s | %s | %s |\n", row.System, reqs, strings.Join(failed, ", "), how, health[row.System])
	}
	w("\n")
}
