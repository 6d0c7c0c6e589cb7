package leader

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/consulkv"
	"github.com/podedge/podedge/internal/consultest"
	"github.com/podedge/podedge/router"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// testFence is a Fence whose belief the test controls: it may go on
// believing in a session Consul has already taken the lock from.
type testFence struct {
	mu      sync.Mutex
	session string
	lost    []string
}

func (f *testFence) Session() (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.session, f.session != ""
}

func (f *testFence) Lost(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lost = append(f.lost, s)
}

// lockWith creates a session and takes the leader lock with it.
func lockWith(t *testing.T, agent *consultest.Agent) string {
	t.Helper()
	sid, _, err := agent.Client.Session().CreateNoChecks(&api.SessionEntry{TTL: "30s", LockDelay: time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	consultest.WaitFor(t, 5*time.Second, "lock acquired", func() bool {
		ok, _, err := agent.Client.KV().Acquire(&api.KVPair{Key: "podedge/leader/lock", Value: []byte("test"), Session: sid}, nil)
		return err == nil && ok
	})
	return sid
}

// viewWithEdges is a router view in which each pod has one passing edge.
func viewWithEdges(t *testing.T, pods ...string) func() *router.Snapshot {
	t.Helper()
	r, err := router.New(router.Config{})
	if err != nil {
		t.Fatal(err)
	}
	var st router.State
	for i, p := range pods {
		st.Edges = append(st.Edges, router.EdgeEndpoint{
			Endpoint: router.Endpoint{ID: "edge-" + p, Node: "n", Pod: p, Addr: fmt.Sprintf("127.0.0.1:%d", 8080+i), Weight: 1, Passing: true},
			PublicIP: netip.MustParseAddr(fmt.Sprintf("192.0.2.%d", i+1)),
		})
	}
	r.Publish(st)
	return r.Snapshot
}

func testStore(t *testing.T, agent *consultest.Agent, fence Fence, view func() *router.Snapshot, retries int) *Store {
	t.Helper()
	// The reader the replicas use: Consul's answers read in place.
	cfg := api.DefaultConfig()
	cfg.Address = agent.HTTPAddr
	kvr, err := consulkv.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return newStore(StoreConfig{
		Client: agent.Client, KV: kvr, Prefix: "podedge/", Zone: "example.test.", Fence: fence, View: view,
		NearKm: 500, Retries: retries, Reserved: DefaultReservedNames(), MaxDomains: 20, Logger: testLogger(t),
	}, newMetrics(prometheus.NewRegistry(), nil))
}

// TestSeatGuardWithoutSerialisation: ten stores, each with its own cache
// and lock, sign up 30 tenants at once under the same session, as replicas
// that all believe they lead would. The seat count's check-and-set alone
// keeps the pod at its capacity.
func TestSeatGuardWithoutSerialisation(t *testing.T) {
	agent := consultest.Start(t)
	fence := &testFence{session: lockWith(t, agent)}
	view := viewWithEdges(t, "dublin")
	stores := make([]*Store, 10)
	for i := range stores {
		stores[i] = testStore(t, agent, fence, view, 100)
	}
	ctx := context.Background()
	if _, _, err := stores[0].PutPod(ctx, router.Pod{Name: "dublin", Lat: dublin[0], Lon: dublin[1], Capacity: 5}); err != nil {
		t.Fatal(err)
	}
	// Every store reads the pod (and its empty seat count) before any
	// sign-up, so all of them start from the same stale picture.
	for _, s := range stores {
		if _, err := s.loadPods(ctx); err != nil {
			t.Fatal(err)
		}
		s.reconciled = fence.session
		s.podsFor = fence.session
	}

	const total = 30
	errs := make([]error, total)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range total {
		wg.Go(func() {
			<-start
			_, _, errs[i] = stores[i%len(stores)].SignUp(ctx, Signup{Name: fmt.Sprintf("t%02d", i), Lat: dublin[0], Lon: dublin[1]})
		})
	}
	close(start)
	wg.Wait()

	placed, full := 0, 0
	for i, err := range errs {
		switch {
		case err == nil:
			placed++
		case asError(err).Kind == KindNoCapacity:
			full++
		default:
			t.Errorf("t%02d: %v", i, err)
		}
	}
	retries := 0.0
	for _, s := range stores {
		retries += counterValue(t, s.m.retries.WithLabelValues("signup"))
	}
	t.Logf("placed %d, refused %d, after %v retries", placed, full, retries)
	if placed != 5 || full != total-5 {
		t.Fatalf("placed %d and refused %d; want 5 and %d", placed, full, total-5)
	}
	if retries == 0 {
		t.Fatal("no transaction was rolled back: the guard was not exercised")
	}
	checkSeats(t, agent)
}

// TestDeposedLeaderCannotWrite: a store that still believes in a session
// that lost the lock has every write refused by Consul, atomically, and
// reports the loss.
func TestDeposedLeaderCannotWrite(t *testing.T) {
	agent := consultest.Start(t)
	old := lockWith(t, agent)
	oldFence := &testFence{session: old}
	view, syncView := folderView(t, agent)
	deposed := testStore(t, agent, oldFence, view, 10)
	ctx := context.Background()
	if _, _, err := deposed.PutPod(ctx, router.Pod{Name: "dublin", Lat: dublin[0], Lon: dublin[1], Capacity: 5}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"london", "empty"} {
		if _, _, err := deposed.PutPod(ctx, router.Pod{Name: p, Lat: london[0], Lon: london[1], Capacity: 5}); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := deposed.SignUp(ctx, Signup{Name: "first", Lat: dublin[0], Lon: dublin[1], Domains: []string{"first.org"}}); err != nil {
		t.Fatal(err)
	}
	before := kv(t, agent)

	// Consul invalidates the old session (as when its check fails) and
	// another replica takes the lock.
	if _, err := agent.Client.Session().Destroy(old, nil); err != nil {
		t.Fatal(err)
	}
	newFence := &testFence{session: lockWith(t, agent)}

	writes := map[string]func() error{
		"sign-up": func() error {
			_, _, err := deposed.SignUp(ctx, Signup{Name: "late", Lat: dublin[0], Lon: dublin[1], Domains: []string{"late.com"}})
			return err
		},
		"put pod":       func() error { _, _, err := deposed.PutPod(ctx, router.Pod{Name: "paris", Capacity: 1}); return err },
		"move":          func() error { _, _, err := deposed.MoveTenant(ctx, "first", "london"); return err },
		"add domain":    func() error { _, _, err := deposed.AddDomain(ctx, "first", "first.com"); return err },
		"remove domain": func() error { _, err := deposed.RemoveDomain(ctx, "first", "first.org"); return err },
		"delete tenant": func() error { _, err := deposed.DeleteTenant(ctx, "first"); return err },
		"delete pod":    func() error { _, err := deposed.DeletePod(ctx, "empty"); return err },
		"reconcile":     func() error { return deposed.Reconcile(ctx) },
	}
	for name, write := range writes {
		t.Run(name, func(t *testing.T) {
			err := write()
			if name == "reconcile" && err == nil {
				return // nothing to repair, nothing written
			}
			if err != errNotLeader {
				t.Fatalf("a deposed leader's %s got %v, want it fenced off", name, err)
			}
		})
	}
	if len(oldFence.lost) == 0 || oldFence.lost[0] != old {
		t.Fatalf("loss not reported: %v", oldFence.lost)
	}
	after := kv(t, agent)
	delete(before, "podedge/leader/lock")
	delete(after, "podedge/leader/lock")
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Fatalf("a fenced write changed KV:\nbefore %v\nafter  %v", before, after)
	}

	// The new leader writes as usual, from a view that has what the
	// deposed one wrote.
	syncView()
	current := testStore(t, agent, newFence, view, 10)
	if _, _, err := current.SignUp(ctx, Signup{Name: "late", Lat: dublin[0], Lon: dublin[1]}); err != nil {
		t.Fatal(err)
	}
	checkSeats(t, agent)
}

// folderView is a router view with one passing edge in dublin and the
// tenants of podedge/tenants/ as they are when sync is called: what the
// auditor makes of the view, once it has logged what was written behind
// the leader's back.
func folderView(t *testing.T, agent *consultest.Agent) (view func() *router.Snapshot, sync func()) {
	t.Helper()
	r, err := router.New(router.Config{})
	if err != nil {
		t.Fatal(err)
	}
	edges := []router.EdgeEndpoint{{
		Endpoint: router.Endpoint{ID: "edge-dublin", Node: "n", Pod: "dublin", Addr: "127.0.0.1:8080", Weight: 1, Passing: true},
		PublicIP: netip.MustParseAddr("192.0.2.1"),
	}}
	sync = func() {
		t.Helper()
		pairs, _, err := agent.Client.KV().List("podedge/tenants/", nil)
		if err != nil {
			t.Fatal(err)
		}
		var tenants []router.Tenant
		for _, kv := range pairs {
			if tn, err := router.DecodeTenant(strings.TrimPrefix(kv.Key, "podedge/tenants/"), kv.Value); err == nil {
				tenants = append(tenants, tn)
			}
		}
		r.Publish(router.State{Edges: edges, Tenants: tenants})
	}
	sync()
	return r.Snapshot, sync
}

// TestReconcileRepairsDrift: tenants written to KV behind the leader's
// back are counted and indexed when reconciliation runs, before the next
// write, so capacity and domain ownership hold for them too.
func TestReconcileRepairsDrift(t *testing.T) {
	agent := consultest.Start(t)
	fence := &testFence{session: lockWith(t, agent)}
	view, syncView := folderView(t, agent)
	s := testStore(t, agent, fence, view, 10)
	ctx := context.Background()
	if _, _, err := s.PutPod(ctx, router.Pod{Name: "dublin", Lat: dublin[0], Lon: dublin[1], Capacity: 3}); err != nil {
		t.Fatal(err)
	}
	agent.Put(t, "podedge/tenants/x1", `{"name":"x1","pod":"dublin","domains":["X.com"],"created":"2020-01-01T00:00:00Z"}`)
	agent.Put(t, "podedge/tenants/x2", `{"name":"x2","pod":"dublin","domains":["x.com","x2.com"],"created":"2021-01-01T00:00:00Z"}`)
	agent.Put(t, "podedge/tenants/broken", `{"name":"broken","pod":`)
	agent.Put(t, "podedge/leader/seats/dublin", "7")
	agent.Put(t, "podedge/leader/seats/gone", "2")
	agent.Put(t, "podedge/leader/domains/orphan.com", "ghost")
	agent.Put(t, "podedge/leader/domains/x2.com", "x1")
	syncView()

	if err := s.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	all := kv(t, agent)
	want := map[string]string{
		"podedge/leader/seats/dublin":   "2",
		"podedge/leader/domains/x.com":  "x1", // the older claim
		"podedge/leader/domains/x2.com": "x2",
	}
	for k, v := range want {
		if all[k] != v {
			t.Errorf("%s = %q, want %q", k, all[k], v)
		}
	}
	for _, k := range []string{"podedge/leader/seats/gone", "podedge/leader/domains/orphan.com"} {
		if _, ok := all[k]; ok {
			t.Errorf("%s survived reconciliation", k)
		}
	}
	if got := counterValue(t, s.m.repairs.WithLabelValues("seats")); got != 2 {
		t.Errorf("%v seat repairs counted, want 2", got)
	}
	if _, _, err := s.SignUp(ctx, Signup{Name: "x3", Lat: dublin[0], Lon: dublin[1], Domains: []string{"x2.com"}}); asError(err).Kind != KindConflict {
		t.Fatalf("a domain claimed in KV was given again: %v", err)
	}
	if _, _, err := s.SignUp(ctx, Signup{Name: "x3", Lat: dublin[0], Lon: dublin[1]}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.SignUp(ctx, Signup{Name: "x4", Lat: dublin[0], Lon: dublin[1]}); asError(err).Kind != KindNoCapacity {
		t.Fatalf("fourth tenant in a pod of 3: %v", err)
	}

	// A new leadership reconciles before its first write.
	agent.Put(t, "podedge/tenants/x5", `{"name":"x5","pod":"dublin"}`)
	agent.Put(t, "podedge/pods/london", `{"name":"london","lat":51.5,"lon":-0.1,"capacity":10}`)
	syncView()
	if _, err := agent.Client.Session().Destroy(fence.session, nil); err != nil {
		t.Fatal(err)
	}
	next := lockWith(t, agent)
	fence.mu.Lock()
	fence.session = next
	fence.mu.Unlock()
	if _, _, err := s.SignUp(ctx, Signup{Name: "x6", Lat: dublin[0], Lon: dublin[1]}); err == nil || asError(err).Kind != KindNoCapacity {
		t.Fatalf("the view has no edge in london, dublin is over-full: got %v", err)
	}
	if got := kv(t, agent)["podedge/leader/seats/dublin"]; got != "4" {
		t.Fatalf("seat count after a new leadership: %s, want 4", got)
	}
}

// counterValue reads a counter.
func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
