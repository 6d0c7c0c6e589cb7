package edge

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podedge/podedge/internal/consultest"
)

// TestIntegrationRateSharedByEdges checks that a tenant's rate holds for
// the pod as a whole, not per edge: two and then three edges of the pod,
// under traffic skewed 4:1 between them, together admit the limit ±10%
// over 10 s. Each edge admits limit/N, N being the pod's passing edges in
// Consul; the limit travels in the tenant's KV value.
func TestIntegrationRateSharedByEdges(t *testing.T) {
	if testing.Short() {
		t.Skip("20 s of traffic")
	}
	agent := consultest.Start(t)
	seedPods(t, agent, map[string]string{"acme": "pod-1"})
	const rps, window = 100, 10 * time.Second
	agent.Put(t, "podedge/tenants/acme", fmt.Sprintf(`{"name":"acme","pod":"pod-1","limits":{"rps":%d,"burst":10}}`, rps))
	b := newBackend(t, "a", nil)
	registerApp(t, agent, "app-a", "pod-1", b)

	var edges []*Edge
	for i, weights := range [][]int{{4, 1}, {4, 1, 1}} {
		for len(edges) < len(weights) {
			edges = append(edges, startEdge(t, agent, "pod-1", fmt.Sprintf("192.0.2.%d", len(edges)+1), nil))
		}
		waitPassingEdges(t, edges)
		admitted := offer(t, edges, weights, 3*rps, window)
		want := float64(rps) * window.Seconds()
		if float64(admitted) < 0.9*want || float64(admitted) > 1.1*want {
			t.Errorf("%d edges, traffic %v: admitted %d in %v, want %v ± 10%%", len(edges), weights, admitted, window, want)
		} else {
			t.Logf("%d edges, traffic %v: admitted %d in %v (limit %v)", len(edges), weights, admitted, window, want)
		}
		if i == 0 {
			continue
		}
		// Clearing the limit in KV frees the tenant on every edge.
		agent.Put(t, "podedge/tenants/acme", `{"name":"acme","pod":"pod-1"}`)
		consultest.WaitFor(t, 10*time.Second, "every edge to drop acme's limits", func() bool {
			for _, e := range edges {
				r, ok := e.Proxy().Snapshot().LookupString("acme.example.test")
				if !ok || r.Tenant.Limits != nil {
					return false
				}
			}
			return true
		})
		if n := offer(t, edges, weights, 3*rps, time.Second); n < 200 {
			t.Errorf("after the limit was cleared, %d of about 300 requests were admitted", n)
		}
	}
}

// waitPassingEdges waits until every edge sees all of them passing.
func waitPassingEdges(t *testing.T, edges []*Edge) {
	t.Helper()
	consultest.WaitFor(t, 20*time.Second, fmt.Sprintf("%d passing edges in every snapshot", len(edges)), func() bool {
		for _, e := range edges {
			s := e.Proxy().Snapshot()
			if s == nil || s.Pod("pod-1") == nil || len(s.Pod("pod-1").PassingEdges) != len(edges) {
				return false
			}
		}
		return true
	})
}

// offer sends total requests per second for acme to the edges, shared by
// weights, for d, and returns how many were admitted (200). Requests are
// paced, never retried; one that finds every worker busy is not sent.
func offer(t *testing.T, edges []*Edge, weights []int, total int, d time.Duration) int64 {
	t.Helper()
	sum := 0
	for _, w := range weights {
		sum += w
	}
	var admitted, other atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var wg sync.WaitGroup
	for i, e := range edges {
		rate := float64(total) * float64(weights[i]) / float64(sum)
		addr := e.HTTPAddr().String()
		c := client(t)
		work := make(chan struct{}, 64)
		for range 16 {
			wg.Go(func() {
				for range work {
					if ctx.Err() != nil {
						continue // the window is over
					}
					code, _, err := tryGet(c, addr, "acme.example.test", "/")
					switch {
					case err == nil && code == http.StatusOK:
						admitted.Add(1)
					case err != nil || code != http.StatusTooManyRequests:
						other.Add(1)
					}
				}
			})
		}
		wg.Go(func() {
			defer close(work)
			tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
					select {
					case work <- struct{}{}:
					default:
					}
				}
			}
		})
	}
	wg.Wait()
	if n := other.Load(); n > 0 {
		t.Errorf("%d requests got neither 200 nor 429", n)
	}
	return admitted.Load()
}
