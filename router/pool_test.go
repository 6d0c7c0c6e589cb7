package router

import (
	"fmt"
	"math"
	"testing"
	"time"
)

// poolOf publishes one pod whose passing app servers have the given weights
// and returns its pool.
func poolOf(t testing.TB, r *Router, weights ...int) *Pool {
	t.Helper()
	var apps []Endpoint
	for i, w := range weights {
		apps = append(apps, app("pod-1", fmt.Sprintf("10.0.0.%d:80", i+1), w, true))
	}
	return r.Publish(State{Pods: []Pod{{Name: "pod-1", Capacity: 1}}, Apps: apps}).Pod("pod-1").Apps
}

func TestRoundRobinHonoursWeights(t *testing.T) {
	r, _ := testRouter(t, Config{})
	p := poolOf(t, r, 1, 2, 3, 4)
	counts := map[string]int{}
	const picks = 10_000
	for range picks {
		m := p.Pick(0)
		counts[m.Addr]++
	}
	for i, m := range p.Members() {
		want := float64(picks) * float64(i+1) / 10
		if got := float64(counts[m.Addr]); math.Abs(got-want) > want*0.10 {
			t.Errorf("%s (weight %d) got %.0f picks, want %.0f ±10%%", m.Addr, m.Weight, got, want)
		}
	}
}

func TestRoundRobinIsSmooth(t *testing.T) {
	// nginx's smooth order for weights 5,1,1 is a a b a c a a: never more
	// than the weight's share in a row.
	got := smoothSchedule([]int{5, 1, 1})
	if fmt.Sprint(got) != "[0 0 1 0 2 0 0]" {
		t.Fatalf("schedule = %v", got)
	}
	if got := smoothSchedule([]int{100, 200}); len(got) != 3 {
		t.Fatalf("weights are not reduced by their gcd: %d entries", len(got))
	}
	if got := smoothSchedule([]int{100_000, 1}); len(got) > maxSchedule || got[len(got)-1] != 0 && got[0] != 0 {
		t.Fatalf("huge weights not scaled: %d entries", len(got))
	}
}

func TestRoundRobinKeepsItsPlaceAcrossSnapshots(t *testing.T) {
	r, _ := testRouter(t, Config{})
	p := poolOf(t, r, 1, 1, 1)
	first := p.Pick(0).Addr
	// A new snapshot with the same pool continues the rotation rather than
	// restarting it, so frequent health changes cannot favour one endpoint.
	p = poolOf(t, r, 1, 1, 1)
	if next := p.Pick(0).Addr; next == first {
		t.Fatalf("rotation restarted at %s after a snapshot swap", next)
	}
}

func TestPickSkipsTried(t *testing.T) {
	for _, policy := range []string{PolicyRoundRobin, PolicyLeastRequest} {
		t.Run(policy, func(t *testing.T) {
			r, _ := testRouter(t, Config{Policy: policy})
			p := poolOf(t, r, 1, 1, 1)
			var tried uint64
			seen := map[string]bool{}
			for range 3 {
				m := p.Pick(tried)
				if m == nil || seen[m.Addr] {
					t.Fatalf("pick %v after %v", m, seen)
				}
				seen[m.Addr] = true
				tried |= m.Bit()
			}
			if m := p.Pick(tried); m != nil {
				t.Fatalf("every member tried, yet picked %s", m.Addr)
			}
		})
	}
}

func TestLeastRequestPrefersLessLoaded(t *testing.T) {
	r, _ := testRouter(t, Config{Policy: PolicyLeastRequest})
	p := poolOf(t, r, 1, 1)
	busy := p.Members()[0]
	for range 10 {
		busy.Begin()
	}
	for range 1000 {
		if m := p.Pick(0); m == busy {
			t.Fatal("picked the endpoint with 10 requests in flight over an idle one")
		}
	}
	// With three endpoints, two random choices still keep the busiest one
	// out: it loses every comparison.
	p = poolOf(t, r, 1, 1, 1)
	for range 10 {
		p.Members()[0].Begin() // the same state: the registry shares it
	}
	for range 1000 {
		if m := p.Pick(0); m.Addr == busy.Addr {
			t.Fatal("picked the busiest of three endpoints")
		}
	}
	for range 20 {
		busy.Done()
	}
}

func TestLeastRequestHonoursWeights(t *testing.T) {
	r, _ := testRouter(t, Config{Policy: PolicyLeastRequest})
	p := poolOf(t, r, 1, 4)
	light, heavy := p.Members()[0], p.Members()[1]
	for range 3 {
		heavy.Begin() // 3 in flight at weight 4 is less load than 1 at weight 1
	}
	light.Begin()
	for range 100 {
		if m := p.Pick(0); m != heavy {
			t.Fatalf("picked %s, want the heavier endpoint with less load per weight", m.Addr)
		}
	}
}

func TestEjectionAndRecovery(t *testing.T) {
	for _, policy := range []string{PolicyRoundRobin, PolicyLeastRequest} {
		t.Run(policy, func(t *testing.T) {
			r, clk := testRouter(t, Config{Policy: policy})
			h := DefaultPassiveHealth()
			p := poolOf(t, r, 1, 1, 1, 1)
			bad := p.Members()[1]
			for i := 1; i <= h.MaxFails; i++ {
				bad.Begin()
				if ejected := bad.Failure(); ejected != (i == h.MaxFails) {
					t.Fatalf("failure %d: ejected=%v", i, ejected)
				}
			}
			if bad.Available() {
				t.Fatal("still available after MaxFails failures")
			}
			for range 200 {
				if p.Pick(0) == bad {
					t.Fatal("ejected endpoint picked")
				}
			}
			// It comes back on its own when the ejection ends.
			clk.Advance(h.BaseEjection)
			if !bad.Available() {
				t.Fatal("not back after BaseEjection")
			}
			found := false
			for range 200 {
				found = found || p.Pick(0) == bad
			}
			if !found {
				t.Fatal("recovered endpoint never picked")
			}
			// Failing again at once doubles the ejection.
			for range h.MaxFails {
				bad.Begin()
				bad.Failure()
			}
			clk.Advance(h.BaseEjection)
			if bad.Available() {
				t.Fatal("second ejection did not grow")
			}
			clk.Advance(h.BaseEjection)
			if !bad.Available() {
				t.Fatal("second ejection lasted more than twice the base")
			}
			// A success after a healthy base period resets the backoff.
			clk.Advance(h.BaseEjection)
			bad.Begin()
			bad.Success()
			for range h.MaxFails {
				bad.Begin()
				bad.Failure()
			}
			clk.Advance(h.BaseEjection)
			if !bad.Available() {
				t.Fatal("backoff did not reset after recovery")
			}
		})
	}
}

func TestSuccessBreaksFailureStreak(t *testing.T) {
	r, _ := testRouter(t, Config{})
	m := poolOf(t, r, 1).Members()[0]
	for range 10 {
		m.Begin()
		m.Failure()
		m.Begin()
		m.Success()
	}
	if !m.Available() || m.InFlight() != 0 {
		t.Fatalf("interleaved failures ejected: available=%v inflight=%d", m.Available(), m.InFlight())
	}
}

func TestEjectionSurvivesSnapshotSwap(t *testing.T) {
	r, _ := testRouter(t, Config{})
	p := poolOf(t, r, 1, 1)
	bad := p.Members()[0]
	for range DefaultPassiveHealth().MaxFails {
		bad.Begin()
		bad.Failure()
	}
	p2 := poolOf(t, r, 1, 1, 1)
	if p2.Members()[0].Available() || p2.Members()[0].EndpointState != bad.EndpointState {
		t.Fatal("a new snapshot lost the ejection")
	}
}

func TestPanicThreshold(t *testing.T) {
	for _, policy := range []string{PolicyRoundRobin, PolicyLeastRequest} {
		t.Run(policy, func(t *testing.T) {
			r, _ := testRouter(t, Config{Policy: policy})
			p := poolOf(t, r, 1, 1, 1, 1)
			eject := func(m *Member) {
				for range DefaultPassiveHealth().MaxFails {
					m.Begin()
					m.Failure()
				}
			}
			// Half ejected is within the 50% threshold: only the healthy
			// half takes traffic.
			eject(p.Members()[0])
			eject(p.Members()[1])
			for range 200 {
				if m := p.Pick(0); m == p.Members()[0] || m == p.Members()[1] {
					t.Fatal("picked an ejected endpoint below the panic threshold")
				}
			}
			// Three of four ejected: the pool panics and routes to all.
			eject(p.Members()[2])
			counts := map[*Member]int{}
			for range 4000 {
				counts[p.Pick(0)]++
			}
			for _, m := range p.Members() {
				if counts[m] < 500 {
					t.Fatalf("in panic mode %s got %d of 4000 picks: %v", m.Addr, counts[m], counts)
				}
			}
			// All ejected: still routes rather than failing every request.
			eject(p.Members()[3])
			if p.Pick(0) == nil {
				t.Fatal("fully ejected pool picked nothing")
			}
		})
	}
}

func TestNoEjectionWhenDisabled(t *testing.T) {
	r, _ := testRouter(t, Config{Health: PassiveHealth{MaxFails: 0, MaxEjection: time.Second}})
	m := poolOf(t, r, 1).Members()[0]
	for range 100 {
		m.Begin()
		if m.Failure() {
			t.Fatal("ejected with max_fails 0")
		}
	}
}

func TestEmptyPool(t *testing.T) {
	r, _ := testRouter(t, Config{})
	var nilPool *Pool
	if p := poolOf(t, r); p.Pick(0) != nil || p.Len() != 0 || nilPool.Pick(0) != nil || nilPool.Len() != 0 {
		t.Fatal("empty pool picked something")
	}
}

func TestRegistryDropsGoneAddresses(t *testing.T) {
	reg := &Registry{Keep: time.Minute}
	released := map[string]bool{}
	reg.NewValue = func(addr string) any { return "conn-" + addr }
	reg.ReleaseValue = func(addr string, v any) { released[addr] = v == "conn-"+addr }
	r, clk := testRouter(t, Config{Registry: reg})
	p := poolOf(t, r, 1, 1)
	if p.Members()[1].Value() != "conn-10.0.0.2:80" {
		t.Fatalf("attachment = %v", p.Members()[1].Value())
	}
	poolOf(t, r, 1) // 10.0.0.2 leaves
	clk.Advance(30 * time.Second)
	poolOf(t, r, 1)
	if reg.Len() != 2 {
		t.Fatal("state dropped before Keep")
	}
	clk.Advance(31 * time.Second)
	poolOf(t, r, 1)
	if reg.Len() != 1 || !released["10.0.0.2:80"] {
		t.Fatalf("gone address not released after Keep: len=%d released=%v", reg.Len(), released)
	}
}

func BenchmarkPick(b *testing.B) {
	for _, policy := range []string{PolicyRoundRobin, PolicyLeastRequest} {
		b.Run(policy, func(b *testing.B) {
			r, _ := testRouter(b, Config{Policy: policy})
			p := poolOf(b, r, 1, 2, 1, 3, 1, 1, 2, 1)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					m := p.Pick(0)
					m.Begin()
					m.Success()
				}
			})
		})
	}
}
