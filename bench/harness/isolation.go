package harness

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/podedge/podedge/router"
)

// The isolation phase: does one tenant far over its limits slow another
// tenant of the same pod? A quiet tenant gets a steady paced load, alone
// and then beside a noisy one sending ten times what the edge admits of
// it; the quiet one's rate and p99 should not move.
const (
	quietTenant = "tenant-1"
	noisyTenant = "tenant-2"
	// noisyShare is what the edge admits of the noisy tenant per second.
	noisyShare = 500
	quietRate  = 4000
)

// IsolationResult is one round: the quiet tenant alone and beside the
// noisy one, and what the noisy one got.
type IsolationResult struct {
	Alone, Beside HTTPResult
	// NoisyAdmitted and NoisyRefused are per second.
	NoisyAdmitted, NoisyRefused float64
}

func isolationQuiet() Workload {
	return Workload{Name: "quiet tenant", Host: quietTenant + "." + zoneName(), Path: "/bytes/64", Conns: 16, Rate: quietRate}
}

func isolationNoisy() Workload {
	return Workload{Name: "noisy tenant", Host: noisyTenant + "." + zoneName(), Path: "/bytes/64", Conns: 16, Rate: 10 * noisyShare}
}

// zoneName is the zone without its final dot.
func zoneName() string { return zone[:len(zone)-1] }

func (h *harness) isolationPhase(ctx context.Context) error {
	edge, err := h.mainEdgeServer(ctx)
	if err != nil {
		return err
	}
	// The edge admits limit/N of the pod's N passing edges (the 13 of
	// podIPs once the bench edge passes): the limit is
	// set so that its share is noisyShare.
	n := len(podIPs())
	limits := &router.Limits{RPS: float64(noisyShare * n), Burst: noisyShare * n / 10}
	t := router.Tenant{Name: noisyTenant, Pod: pod, Created: time.Now().UTC(), Limits: limits}
	if err := putJSON(h.consul, mainPrefix+"tenants/"+noisyTenant, t); err != nil {
		return err
	}
	client := &http.Client{Timeout: 2 * time.Second}
	if err := h.waitFor(ctx, 30*time.Second, "the noisy tenant's limit at the edge", func() bool {
		for range 200 {
			if code, _, err := probeHost(client, edge.addr, noisyTenant+"."+zoneName(), "/bytes/64"); err == nil && code == http.StatusTooManyRequests {
				return true
			}
		}
		return false
	}, edge.procs...); err != nil {
		return err
	}
	quiet, noisy := isolationQuiet(), isolationNoisy()
	h.say("isolation: %s at %d req/s, alone and beside %s at %d req/s (10× the %d/s the edge admits of it; limit %.0f/s over %d edges)",
		quietTenant, quietRate, noisyTenant, 10*noisyShare, noisyShare, limits.RPS, n)
	for round := 1; round <= h.opts.Rounds; round++ {
		var res IsolationResult
		var err error
		if res.Alone, err = h.runLoadgen(ctx, edge, quiet, h.opts.Duration, nil); err != nil {
			return fmt.Errorf("quiet alone, round %d: %w", round, err)
		}
		res, err = h.beside(ctx, edge, quiet, noisy, res)
		if err != nil {
			return fmt.Errorf("quiet beside noisy, round %d: %w", round, err)
		}
		h.report.Isolation = append(h.report.Isolation, res)
		h.say("isolation round %d: quiet alone %.0f req/s p99 %s; beside noisy %.0f req/s p99 %s; noisy admitted %.0f/s, refused %.0f/s",
			round, res.Alone.RPS, res.Alone.P99.Round(time.Microsecond), res.Beside.RPS, res.Beside.P99.Round(time.Microsecond), res.NoisyAdmitted, res.NoisyRefused)
	}
	return nil
}

// beside runs the noisy load and, once it runs, the quiet one.
func (h *harness) beside(ctx context.Context, edge *server, quiet, noisy Workload, res IsolationResult) (IsolationResult, error) {
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		lr, _, err := h.loadgen(ctx, edge, noisy, h.opts.Duration+2*time.Second, func() { close(started) })
		if err == nil {
			res.NoisyAdmitted = float64(lr.Requests) / lr.Seconds
			res.NoisyRefused = float64(lr.Failures["status 429"]) / lr.Seconds
		}
		done <- err
	}()
	select {
	case <-started:
	case err := <-done:
		if err == nil {
			err = errors.New("the noisy load ended before it started")
		}
		return res, err
	}
	beside, err := h.runLoadgen(ctx, edge, quiet, h.opts.Duration, nil)
	if nerr := <-done; err == nil {
		err = nerr
	}
	res.Beside = beside
	return res, err
}

func (r *Report) isolationTable(w writef) {
	if len(r.Isolation) == 0 {
		return
	}
	w("#### Tenant isolation\n\nA quiet tenant at %d req/s (16 connections, paced), alone and then beside a noisy tenant of the same pod sending %d req/s, ten times the %d/s the edge admits of it (its limit divided by the pod's passing edges). Medians of %d rounds; ratios are beside/alone, per round.\n\n",
		quietRate, 10*noisyShare, noisyShare, len(r.Isolation))
	alone := func(i int) HTTPResult { return r.Isolation[i].Alone }
	beside := func(i int) HTTPResult { return r.Isolation[i].Beside }
	n := len(r.Isolation)
	w("| | alone | beside the noisy tenant | beside/alone |\n| --- | ---: | ---: | ---: |\n")
	w("| quiet req/s | %.0f | %.0f | %s |\n", median(r.Isolation, func(x IsolationResult) float64 { return x.Alone.RPS }),
		median(r.Isolation, func(x IsolationResult) float64 { return x.Beside.RPS }),
		pairRatios(n, func(i int) float64 { return beside(i).RPS / alone(i).RPS }))
	w("| quiet p99 | %s | %s | %s |\n", ms(time.Duration(median(r.Isolation, func(x IsolationResult) float64 { return float64(x.Alone.P99) }))),
		ms(time.Duration(median(r.Isolation, func(x IsolationResult) float64 { return float64(x.Beside.P99) }))),
		pairRatios(n, func(i int) float64 { return float64(beside(i).P99) / float64(alone(i).P99) }))
	w("| quiet failed requests | %.0f | %.0f | |\n", median(r.Isolation, func(x IsolationResult) float64 { return float64(x.Alone.Errors) }),
		median(r.Isolation, func(x IsolationResult) float64 { return float64(x.Beside.Errors) }))
	w("| noisy admitted / refused per second | | %.0f / %.0f | |\n\n", median(r.Isolation, func(x IsolationResult) float64 { return x.NoisyAdmitted }),
		median(r.Isolation, func(x IsolationResult) float64 { return x.NoisyRefused }))
}
