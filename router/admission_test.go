package router

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestShareOfDividesAmongEdges(t *testing.T) {
	cases := []struct {
		name  string
		l     Limits
		n     int
		rate  float64 // requests per second admitted by one edge
		burst float64
		conc  int64
		perIP int32
	}{
		{"one edge", Limits{RPS: 100, Burst: 50, Concurrency: 10, ConnsPerIP: 4}, 1, 100, 50, 10, 4},
		{"two edges", Limits{RPS: 100, Burst: 50, Concurrency: 10, ConnsPerIP: 4}, 2, 50, 25, 5, 4},
		{"no edge counts as one", Limits{RPS: 100}, 0, 100, 100, 0, 0},
		{"burst defaults to a second", Limits{RPS: 30}, 3, 10, 10, 0, 0},
		{"every edge gets one at least", Limits{RPS: 2, Burst: 1, Concurrency: 1}, 5, 0.4, 1, 1, 0},
		{"no limits", Limits{}, 4, 0, 0, 0, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sh := ShareOf(c.l, c.n)
			rate, burst := 0.0, 0.0
			if sh.Interval > 0 {
				rate = float64(time.Second) / float64(sh.Interval)
				burst = float64(sh.Tolerance)/float64(sh.Interval) + 1
			}
			if d := rate - c.rate; d > 1e-6 || d < -1e-6 || burst-c.burst > 1e-6 || c.burst-burst > 1e-6 || sh.Concurrency != c.conc || sh.ConnsPerIP != c.perIP {
				t.Fatalf("rate %v burst %v concurrency %d per IP %d; want %v %v %d %d", rate, burst, sh.Concurrency, sh.ConnsPerIP, c.rate, c.burst, c.conc, c.perIP)
			}
		})
	}
}

// The rate admitted over a long run is the share's rate, whatever the
// offered load, after an initial burst of at most Burst.
func TestAdmitRateHoldsTheRate(t *testing.T) {
	for _, offered := range []int{200, 1000, 10000} { // per second
		var s TenantState
		sh := ShareOf(Limits{RPS: 100, Burst: 20}, 1)
		admitted, first := 0, 0
		step := int64(time.Second) / int64(offered)
		for now := int64(0); now < int64(10*time.Second); now += step {
			if ok, _ := s.AdmitRate(now, &sh); ok {
				admitted++
				if now < int64(10*time.Millisecond) {
					first++
				}
			}
		}
		if admitted < 1000 || admitted > 1020 || first > 21 {
			t.Errorf("offered %d/s: admitted %d in 10 s (%d in the first 10 ms); want 1000 plus a burst of at most 20", offered, admitted, first)
		}
		if rate, _, _ := s.Refused(); rate == 0 {
			t.Errorf("offered %d/s: no rejection counted", offered)
		}
	}
}

func TestAdmitRateSaysWhenToRetry(t *testing.T) {
	var s TenantState
	sh := ShareOf(Limits{RPS: 2, Burst: 1}, 1)
	if ok, _ := s.AdmitRate(0, &sh); !ok {
		t.Fatal("the first request was refused")
	}
	ok, retry := s.AdmitRate(int64(100*time.Millisecond), &sh)
	if ok || retry != 400*time.Millisecond {
		t.Fatalf("second request 100 ms later: %v, retry after %s; want refused, 400ms", ok, retry)
	}
	if ok, _ := s.AdmitRate(int64(500*time.Millisecond), &sh); !ok {
		t.Fatal("refused when the retry was due")
	}
}

// Requests beyond the concurrency share wait in order and are woken as
// slots free; one that gives up leaves the queue.
func TestConcurrencySlotsAndWaiters(t *testing.T) {
	var s TenantState
	sh := ShareOf(Limits{Concurrency: 2}, 1)
	if !s.AcquireOrWait(&sh, nil) || !s.AcquireOrWait(&sh, nil) {
		t.Fatal("two slots of two were refused")
	}
	if s.AcquireOrWait(&sh, nil) {
		t.Fatal("a third slot was given")
	}
	var woke []string
	a := &Waiter{Wake: func() { woke = append(woke, "a") }}
	b := &Waiter{Wake: func() { woke = append(woke, "b") }}
	c := &Waiter{Wake: func() { woke = append(woke, "c") }}
	for _, w := range []*Waiter{a, b, c} {
		if s.AcquireOrWait(&sh, w) {
			t.Fatal("a waiter got a slot none had freed")
		}
	}
	s.Withdraw(b)
	s.Release(&sh)
	s.Release(&sh)
	if len(woke) != 2 || woke[0] != "a" || woke[1] != "c" {
		t.Fatalf("woken %v; want a then c (b gave up)", woke)
	}
	if !s.AcquireOrWait(&sh, a) || !s.AcquireOrWait(&sh, c) || s.Inflight() != 2 {
		t.Fatalf("woken waiters did not get their slots: in flight %d", s.Inflight())
	}
}

// Under concurrent use the slots never exceed the share and none is lost.
func TestConcurrencyUnderRace(t *testing.T) {
	var s TenantState
	sh := ShareOf(Limits{Concurrency: 3}, 1)
	var peak, now atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 2000 {
				ch := make(chan struct{}, 1)
				w := &Waiter{Wake: func() { ch <- struct{}{} }}
				for !s.AcquireOrWait(&sh, w) {
					<-ch
				}
				if n := now.Add(1); n > peak.Load() {
					peak.Store(n)
				}
				now.Add(-1)
				s.Release(&sh)
			}
		})
	}
	wg.Wait()
	if peak.Load() > 3 || s.Inflight() != 0 {
		t.Fatalf("peak %d in flight (share 3), %d left", peak.Load(), s.Inflight())
	}
}

func TestConnectionsPerAddress(t *testing.T) {
	var s TenantState
	sh := ShareOf(Limits{ConnsPerIP: 2}, 3)
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	if !s.OpenConn(a, &sh) || !s.OpenConn(a, &sh) || s.OpenConn(a, &sh) {
		t.Fatal("want two connections of one address, not three")
	}
	if !s.OpenConn(b, &sh) {
		t.Fatal("another address was refused")
	}
	s.CloseConn(a)
	if !s.OpenConn(a, &sh) {
		t.Fatal("a connection closed was not given back")
	}
	if _, _, conns := s.Refused(); conns != 1 {
		t.Fatalf("%d rejections counted, want 1", conns)
	}
}

// Every version of a tenant shares its state, through full builds and
// changes alike; a new tenant gets its own.
func TestTenantStateSurvivesChanges(t *testing.T) {
	r, _ := testRouter(t, Config{})
	st := sampleState()
	s1 := r.Publish(st)
	acme := s1.Tenant("acme").State()
	if acme == nil || acme == s1.Tenant("globex").State() {
		t.Fatalf("states: acme %p, globex %p", acme, s1.Tenant("globex").State())
	}
	st.Tenants = append([]Tenant(nil), st.Tenants...)
	st.Tenants[0].Domains = []string{"new.acme.com"}
	s2 := r.Publish(st)
	if s2.Tenant("acme").State() != acme {
		t.Fatal("a full build gave acme a new state")
	}
	idx, _ := s2.tenants.apply([]tenantChange{{name: "acme", t: &Tenant{Name: "acme", Pod: "pod-2"}}})
	e, _ := idx.byName.get("acme")
	if e.t.State() != acme {
		t.Fatal("a change gave acme a new state")
	}
}

// BenchmarkAdmit is the limiter's cost on the request path: a rate check
// and a concurrency slot taken and given back.
func BenchmarkAdmit(b *testing.B) {
	var s TenantState
	sh := ShareOf(Limits{RPS: 1e9, Burst: 1e9, Concurrency: 1 << 20}, 2)
	now := time.Now().UnixNano()
	b.ReportAllocs()
	for b.Loop() {
		now++
		if ok, _ := s.AdmitRate(now, &sh); !ok || !s.AcquireOrWait(&sh, nil) {
			b.Fatal("refused")
		}
		s.Release(&sh)
	}
}

// BenchmarkAdmitRate is the rate check alone.
func BenchmarkAdmitRate(b *testing.B) {
	var s TenantState
	sh := ShareOf(Limits{RPS: 1e9, Burst: 1e9}, 2)
	now := time.Now().UnixNano()
	b.ReportAllocs()
	for b.Loop() {
		now++
		if ok, _ := s.AdmitRate(now, &sh); !ok {
			b.Fatal("refused")
		}
	}
}
