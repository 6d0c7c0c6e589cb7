package router

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// testRouter returns a router fed by hand, with a fixed clock.
func testRouter(t testing.TB, cfg Config) (*Router, *fakeClock) {
	t.Helper()
	clk := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	cfg.Clock = clk.Now
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r, clk
}

type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time          { return c.now }
func (c *fakeClock) Advance(d time.Duration) { c.now = c.now.Add(d) }

func app(pod, addr string, weight int, pass bool) Endpoint {
	return Endpoint{ID: "app-" + addr, Node: "n", Pod: pod, Addr: addr, Weight: weight, Passing: pass}
}

func edge(pod, ip string, pass bool) EdgeEndpoint {
	return EdgeEndpoint{
		Endpoint: Endpoint{ID: "edge-" + ip, Node: "n-" + ip, Pod: pod, Addr: ip + ":80", Weight: 1, Passing: pass},
		PublicIP: netip.MustParseAddr(ip),
	}
}

func sampleState() State {
	return State{
		Pods: []Pod{
			{Name: "pod-1", Region: "eu", Lat: 53.35, Lon: -6.26, Capacity: 10},
			{Name: "pod-2", Region: "us", Lat: 40.71, Lon: -74.0, Capacity: 10},
		},
		Tenants: []Tenant{
			{Name: "acme", Pod: "pod-1", Domains: []string{"www.acme.com", "acme.com"}, Created: time.Unix(1, 0)},
			{Name: "globex", Pod: "pod-2", Created: time.Unix(2, 0)},
			// A later claim of acme's domain loses.
			{Name: "initech", Pod: "pod-2", Domains: []string{"acme.com", "initech.io"}, Created: time.Unix(3, 0)},
		},
		Edges: []EdgeEndpoint{edge("pod-1", "192.0.2.1", true), edge("pod-1", "192.0.2.2", false), edge("pod-2", "192.0.2.3", true)},
		Apps:  []Endpoint{app("pod-1", "10.0.0.1:80", 1, true), app("pod-1", "10.0.0.2:80", 1, false), app("pod-2", "10.0.1.1:80", 1, true)},
		Index: 42,
	}
}

func TestLookup(t *testing.T) {
	r, _ := testRouter(t, Config{})
	s := r.Publish(sampleState())
	cases := []struct {
		host, tenant, pod string
	}{
		{"acme.example.test", "acme", "pod-1"},
		{"ACME.Example.TEST", "acme", "pod-1"},
		{"acme.example.test:8080", "acme", "pod-1"},
		{"acme.example.test.", "acme", "pod-1"},
		{"Acme.Example.Test.:443", "acme", "pod-1"},
		{"www.acme.com", "acme", "pod-1"},
		{"ACME.COM", "acme", "pod-1"},
		{"initech.io", "initech", "pod-2"},
		{"globex.example.test", "globex", "pod-2"},
		{"unknown.example.test", "", ""},
		{"example.test", "", ""},
		{"pods.example.test", "", ""},
		{"", "", ""},
		{":80", "", ""},
		{"[::1]:80", "", ""},
		{"acme.example.test..", "", ""},
		{string(make([]byte, 300)), "", ""},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%.40q", c.host), func(t *testing.T) {
			got, ok := s.Lookup([]byte(c.host))
			gotS, okS := s.LookupString(c.host)
			if ok != okS || got != gotS {
				t.Fatalf("Lookup and LookupString disagree: %v/%v", got, gotS)
			}
			if c.tenant == "" {
				if ok {
					t.Fatalf("found tenant %q, want none", got.Tenant.Name)
				}
				return
			}
			if !ok {
				t.Fatalf("not found, want tenant %q", c.tenant)
			}
			if got.Tenant.Name != c.tenant || got.Pod.Name != c.pod {
				t.Fatalf("got %s in %s, want %s in %s", got.Tenant.Name, got.Pod.Name, c.tenant, c.pod)
			}
		})
	}
}

func TestSnapshotContents(t *testing.T) {
	r, _ := testRouter(t, Config{})
	if r.Snapshot() == nil || r.Snapshot().Synced {
		t.Fatal("a new router must serve an empty, unsynced snapshot")
	}
	s := r.Publish(sampleState())
	if !s.Synced || s.Index != 42 || r.Snapshot() != s {
		t.Fatalf("published snapshot not current: synced=%v index=%d", s.Synced, s.Index)
	}
	p1 := s.Pod("pod-1")
	if p1 == nil || !p1.Registered || p1.Tenants != 1 {
		t.Fatalf("pod-1 = %+v", p1)
	}
	if len(p1.Edges) != 2 || len(p1.PassingEdges) != 1 || p1.PassingEdges[0].PublicIP.String() != "192.0.2.1" {
		t.Fatalf("pod-1 edges = %v passing %v", p1.Edges, p1.PassingEdges)
	}
	if p1.Apps.Len() != 1 || p1.Apps.Members()[0].Addr != "10.0.0.1:80" {
		t.Fatalf("pod-1 apps = %v, want only the passing one", p1.Apps.Members())
	}
	if p2 := s.Pod("pod-2"); p2.Tenants != 2 || p2.EdgePool.Len() != 1 {
		t.Fatalf("pod-2 = %+v", p2)
	}
	if len(s.Pods()) != 2 || s.Pods()[0].Name != "pod-1" {
		t.Fatalf("pods not sorted: %v", s.Pods())
	}
	if len(s.Tenants()) != 3 || s.Tenants()[2].Name != "initech" {
		t.Fatalf("tenants not sorted: %v", s.Tenants())
	}
	if got := s.Hostname("acme"); got != "acme.example.test" {
		t.Fatalf("Hostname = %q", got)
	}
}

func TestPodOnlyInServices(t *testing.T) {
	r, _ := testRouter(t, Config{})
	st := sampleState()
	st.Apps = append(st.Apps, app("pod-9", "10.9.0.1:80", 1, true))
	st.Tenants = append(st.Tenants, Tenant{Name: "lost", Pod: "pod-7"})
	s := r.Publish(st)
	if p := s.Pod("pod-9"); p == nil || p.Registered || p.Apps.Len() != 1 {
		t.Fatalf("pod-9 = %+v", p)
	}
	rt, ok := s.LookupString("lost.example.test")
	if !ok || rt.Pod == nil || rt.Pod.Apps.Len() != 0 || rt.Pod.Apps.Pick(0) != nil {
		t.Fatalf("tenant of an unknown pod must route to an empty pool: %+v", rt)
	}
}

func TestSubscribe(t *testing.T) {
	r, _ := testRouter(t, Config{})
	var got []uint64
	r.Subscribe(func(s *Snapshot) { got = append(got, s.Index) })
	select {
	case <-r.Ready():
		t.Fatal("ready before the first publish")
	default:
	}
	st := sampleState()
	r.Publish(st)
	st.Index = 43
	r.Publish(st)
	<-r.Ready()
	var late []uint64
	r.Subscribe(func(s *Snapshot) { late = append(late, s.Index) })
	if fmt.Sprint(got) != "[42 43]" || fmt.Sprint(late) != "[43]" {
		t.Fatalf("subscribers saw %v and %v", got, late)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  Config
	}{
		{"policy", Config{Policy: "random"}},
		{"zone", Config{Zone: "bad_zone."}},
		{"root zone", Config{Zone: "."}},
		{"health", Config{Health: PassiveHealth{MaxFails: 1, BaseEjection: time.Second, MaxEjection: time.Millisecond}}},
		{"panic", Config{Health: PassiveHealth{MaxFails: 1, BaseEjection: time.Second, MaxEjection: time.Second, PanicThreshold: 2}}},
	} {
		if _, err := New(c.cfg); err == nil {
			t.Errorf("%s: New accepted %+v", c.name, c.cfg)
		}
	}
	r, err := New(Config{Zone: "Platform.Example"})
	if err != nil || r.Zone() != "platform.example." {
		t.Fatalf("zone normalised to %q, err %v", r.Zone(), err)
	}
}

func BenchmarkLookup(b *testing.B) {
	r, _ := testRouter(b, Config{})
	st := sampleState()
	for i := range 10_000 {
		st.Tenants = append(st.Tenants, Tenant{Name: fmt.Sprintf("tenant-%d", i), Pod: "pod-1", Domains: []string{fmt.Sprintf("shop-%d.example.com", i)}})
	}
	s := r.Publish(st)
	for _, c := range []struct{ name, host string }{
		{"tenant", "tenant-4242.example.test"},
		{"mixed-case-port", "Tenant-4242.Example.Test:443"},
		{"custom-domain", "shop-4242.example.com"},
		{"unknown", "nobody.example.test"},
	} {
		host := []byte(c.host)
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := s.Lookup(host); ok == (c.name == "unknown") {
					b.Fatal("wrong answer")
				}
			}
		})
	}
}

// BenchmarkPublish100k is a snapshot build with 100,000 tenants (a fifth
// with a custom domain) in 100 pods: "health" is a change of health alone,
// which reuses the tenant index; "tenants" a change of tenants, which
// rebuilds it.
func BenchmarkPublish100k(b *testing.B) {
	r, _ := testRouter(b, Config{})
	st := sampleState()
	for i := range 100_000 {
		t := Tenant{Name: fmt.Sprintf("tenant-%d", i), Pod: fmt.Sprintf("pod-%d", i%100)}
		if i%5 == 0 {
			t.Domains = []string{fmt.Sprintf("shop-%d.example.com", i)}
		}
		st.Tenants = append(st.Tenants, t)
	}
	r.Publish(st)
	b.Run("health", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			st.Apps = slices.Clone(st.Apps) // what a health change hands over
			r.Publish(st)
		}
	})
	b.Run("tenants", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			st.Tenants = slices.Clone(st.Tenants) // what a KV change hands over
			r.Publish(st)
		}
	})
}

func TestHealthChangeReusesTenantIndex(t *testing.T) {
	r, _ := testRouter(t, Config{})
	st := sampleState()
	s1 := r.Publish(st)
	route1, ok := s1.LookupString("acme.example.test")
	if !ok {
		t.Fatal("acme not routed")
	}

	// A change of health: same tenants, one app server fewer.
	st.Apps = slices.Clone(st.Apps[1:])
	s2 := r.Publish(st)
	if s2.tenants != s1.tenants {
		t.Fatal("a change of health rebuilt the tenant index")
	}
	route2, ok := s2.LookupString("acme.example.test")
	if !ok || route2.Tenant != route1.Tenant {
		t.Fatalf("acme: %+v, %v", route2, ok)
	}
	if route2.Pod == route1.Pod || route2.Pod != s2.Pod(route1.Pod.Name) {
		t.Fatal("the route does not lead to the new snapshot's pod")
	}
	if route2.Pod.Apps.Len() != route1.Pod.Apps.Len()-1 || route2.Pod.Tenants != route1.Pod.Tenants {
		t.Fatalf("pod after the change: %d apps, %d tenants; before: %d, %d",
			route2.Pod.Apps.Len(), route2.Pod.Tenants, route1.Pod.Apps.Len(), route1.Pod.Tenants)
	}

	// A change of tenants (a new slice, as the watcher hands over): acme
	// moves to pod-2.
	st.Tenants = slices.Clone(st.Tenants)
	for i := range st.Tenants {
		if st.Tenants[i].Name == "acme" {
			st.Tenants[i].Pod = "pod-2"
		}
	}
	s3 := r.Publish(st)
	if s3.tenants == s2.tenants {
		t.Fatal("a change of tenants reused the old index")
	}
	if route3, ok := s3.LookupString("acme.example.test"); !ok || route3.Pod.Name != "pod-2" {
		t.Fatalf("acme after the move: %+v, %v", route3, ok)
	}
	if s2.Tenant("acme").Pod != "pod-1" {
		t.Fatal("the move changed an older snapshot")
	}
}

func TestAscendTenantsInNameOrderAfterACursor(t *testing.T) {
	r, _ := testRouter(t, Config{})
	s := r.Publish(sampleState())
	var got []string
	s.AscendTenants("", func(tn *Tenant) bool { got = append(got, tn.Name); return true })
	if want := []string{"acme", "globex", "initech"}; !slices.Equal(got, want) {
		t.Fatalf("from the start: got %v, want %v", got, want)
	}
	got = nil
	s.AscendTenants("acme", func(tn *Tenant) bool { got = append(got, tn.Name); return len(got) < 1 })
	if want := []string{"globex"}; !slices.Equal(got, want) {
		t.Fatalf("after acme, one: got %v, want %v", got, want)
	}
	got = nil
	s.AscendTenants("b", func(tn *Tenant) bool { got = append(got, tn.Name); return true })
	if want := []string{"globex", "initech"}; !slices.Equal(got, want) {
		t.Fatalf("after a name that is no tenant: got %v, want %v", got, want)
	}
}

func TestWaitIndexReturnsOnceASnapshotReachesTheIndex(t *testing.T) {
	r, _ := testRouter(t, Config{})
	st := sampleState()
	st.LogIndex = 10
	r.Publish(st)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if s, err := r.WaitIndex(ctx, 10); err != nil || s.LogIndex != 10 {
		t.Fatalf("index reached: got %v, %v", s.LogIndex, err)
	}
	if _, err := r.WaitIndex(ctx, 11); err == nil {
		t.Fatal("index not reached: want the context's error")
	}
	done := make(chan uint64)
	go func() {
		s, _ := r.WaitIndex(context.Background(), 12)
		done <- s.LogIndex
	}()
	st.LogIndex = 12
	r.Publish(st)
	select {
	case got := <-done:
		if got != 12 {
			t.Fatalf("woke with index %d, want 12", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitIndex did not wake at the publish")
	}
}
