package router

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/consultest"
)

// runWatcher starts a router watching agent and waits for its first sync.
func runWatcher(t *testing.T, agent *consultest.Agent) *Router {
	t.Helper()
	r, err := New(Config{Logger: slog.New(slog.DiscardHandler), RetryBase: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { r.Run(ctx, agent.Client) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	select {
	case <-r.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("no first snapshot within 10s")
	}
	return r
}

func seed(t *testing.T, a *consultest.Agent) {
	a.Put(t, "podedge/pods/pod-1", `{"name":"pod-1","region":"eu","lat":53.35,"lon":-6.26,"capacity":100}`)
	a.Put(t, "podedge/tenants/acme", `{"name":"acme","pod":"pod-1","domains":["acme.com"]}`)
	a.App(t, "app-1", "pod-1", "127.0.0.1", 9001, api.HealthPassing)
	a.App(t, "app-2", "pod-1", "127.0.0.1", 9002, api.HealthPassing)
	a.Edge(t, "edge-1", "pod-1", "127.0.0.1", 8080, "192.0.2.11", api.HealthPassing)
}

func apps(s *Snapshot, pod string) string {
	p := s.Pod(pod)
	if p == nil {
		return "[]"
	}
	var addrs []string
	for _, m := range p.Apps.Members() {
		addrs = append(addrs, m.Addr)
	}
	return fmt.Sprint(addrs)
}

func TestWatcherFollowsConsul(t *testing.T) {
	agent := consultest.Start(t)
	seed(t, agent)
	r := runWatcher(t, agent)
	consultest.WaitFor(t, time.Second, "seeded data in the snapshot", func() bool {
		s := r.Snapshot()
		_, ok := s.LookupString("acme.com")
		return ok && apps(s, "pod-1") == "[127.0.0.1:9001 127.0.0.1:9002]" && len(s.Pod("pod-1").PassingEdges) == 1
	})
	if st := r.Status(); !st.Synced || !st.Healthy {
		t.Fatalf("status %+v", st)
	}

	t.Run("kv change within 1s", func(t *testing.T) {
		agent.Put(t, "podedge/tenants/globex", `{"name":"globex","pod":"pod-1"}`)
		consultest.WaitFor(t, time.Second, "new tenant", func() bool {
			_, ok := r.Snapshot().LookupString("globex.example.test")
			return ok
		})
	})
	t.Run("health change within 1s", func(t *testing.T) {
		agent.SetStatus(t, "app-2", api.HealthCritical)
		consultest.WaitFor(t, time.Second, "critical app server out of the pool", func() bool {
			return apps(r.Snapshot(), "pod-1") == "[127.0.0.1:9001]"
		})
		agent.SetStatus(t, "app-2", api.HealthWarning)
		agent.SetStatus(t, "app-1", api.HealthPassing)
		consultest.WaitFor(t, time.Second, "warning app server still out", func() bool {
			return apps(r.Snapshot(), "pod-1") == "[127.0.0.1:9001]"
		})
		agent.SetStatus(t, "app-2", api.HealthPassing)
		consultest.WaitFor(t, time.Second, "recovered app server back", func() bool {
			return apps(r.Snapshot(), "pod-1") == "[127.0.0.1:9001 127.0.0.1:9002]"
		})
	})
	t.Run("maintenance mode", func(t *testing.T) {
		if err := agent.Client.Agent().EnableServiceMaintenance("app-1", "test"); err != nil {
			t.Fatal(err)
		}
		consultest.WaitFor(t, time.Second, "app server in maintenance out of the pool", func() bool {
			return apps(r.Snapshot(), "pod-1") == "[127.0.0.1:9002]"
		})
		if err := agent.Client.Agent().DisableServiceMaintenance("app-1"); err != nil {
			t.Fatal(err)
		}
		consultest.WaitFor(t, time.Second, "app server back from maintenance", func() bool {
			return apps(r.Snapshot(), "pod-1") == "[127.0.0.1:9001 127.0.0.1:9002]"
		})
	})
	t.Run("edge health", func(t *testing.T) {
		agent.SetStatus(t, "edge-1", api.HealthCritical)
		consultest.WaitFor(t, time.Second, "critical edge not passing", func() bool {
			p := r.Snapshot().Pod("pod-1")
			return len(p.PassingEdges) == 0 && len(p.Edges) == 1
		})
		agent.SetStatus(t, "edge-1", api.HealthPassing)
	})
	t.Run("malformed value skipped", func(t *testing.T) {
		agent.Put(t, "podedge/tenants/broken", `{"name": "broken", "pod": `)
		agent.Put(t, "podedge/tenants/initech", `{"name":"initech","pod":"pod-1"}`)
		consultest.WaitFor(t, time.Second, "a good tenant written after a bad one", func() bool {
			_, ok := r.Snapshot().LookupString("initech.example.test")
			return ok
		})
		s := r.Snapshot()
		if s.Tenant("broken") != nil || s.Tenant("acme") == nil || s.Tenant("globex") == nil {
			t.Fatalf("malformed value poisoned the snapshot: %v", s.Tenants())
		}
	})
	t.Run("unchanged data publishes nothing", func(t *testing.T) {
		before := r.Status().Builds
		// A new index with the same data: a check's output changes.
		if err := agent.Client.Agent().UpdateTTL("ttl-app-1", "other output", api.HealthPassing); err != nil {
			t.Fatal(err)
		}
		agent.Put(t, "podedge/tenants/acme", `{"name":"acme","pod":"pod-1","domains":["acme.com"]}`)
		agent.Put(t, "podedge/tenants/marker", `{"name":"marker","pod":"pod-1"}`)
		consultest.WaitFor(t, time.Second, "marker tenant", func() bool { return r.Snapshot().Tenant("marker") != nil })
		// The rewrite of acme changed its ModifyIndex but not its value;
		// the marker is one real change. Allow the tenants query to have
		// seen them apart (two builds), never more.
		if got := r.Status().Builds - before; got > 2 {
			t.Fatalf("%d builds for one real change", got)
		}
	})
}

func TestWatcherSurvivesConsulRestart(t *testing.T) {
	agent := consultest.Start(t)
	seed(t, agent)
	r := runWatcher(t, agent)
	consultest.WaitFor(t, time.Second, "seeded data", func() bool { return apps(r.Snapshot(), "pod-1") != "[]" })
	last := r.Snapshot()

	agent.Stop()
	consultest.WaitFor(t, 5*time.Second, "router to notice Consul is gone", func() bool { return !r.Status().Healthy })
	frozen := r.Status().LastSync
	consultest.WaitFor(t, 5*time.Second, "snapshot age to grow", func() bool {
		return time.Since(r.Status().LastSync) > 300*time.Millisecond
	})
	// The last sync never moves on while Consul is down; it may move back
	// by the moments between the queries' noticing it.
	if st := r.Status(); st.LastSync.After(frozen) || frozen.Sub(st.LastSync) > time.Second || st.Error == "" {
		t.Fatalf("last sync moved while Consul was down: %v -> %v (%s)", frozen, st.LastSync, st.Error)
	}
	if r.Snapshot() != last {
		t.Fatal("the snapshot changed while Consul was down")
	}
	if _, ok := r.Snapshot().LookupString("acme.example.test"); !ok {
		t.Fatal("routes lost while Consul was down")
	}

	// A dev agent comes back empty, with indexes from zero: the router must
	// reset its blocking indexes and pick up the new data on its own.
	agent.Restart()
	agent.Put(t, "podedge/pods/pod-1", `{"name":"pod-1","region":"eu","lat":53.35,"lon":-6.26,"capacity":100}`)
	agent.Put(t, "podedge/tenants/after", `{"name":"after","pod":"pod-1"}`)
	agent.App(t, "app-3", "pod-1", "127.0.0.1", 9003, api.HealthPassing)
	consultest.WaitFor(t, 10*time.Second, "recovery after restart", func() bool {
		s := r.Snapshot()
		return s.Tenant("after") != nil && s.Tenant("acme") == nil && apps(s, "pod-1") == "[127.0.0.1:9003]"
	})
	consultest.WaitFor(t, 5*time.Second, "healthy status", func() bool { return r.Status().Healthy })
}

// TestFoldersNeverLoseAPod: while there is no change log, the router reads
// the pods/ and tenants/ folders with two blocking queries, each sleeping
// MinWait after an answer. A pod registered during the pods query's sleep
// (an empty pods/ folder answers at every write anywhere in KV), then
// filled at once, must not reach a snapshot after its tenants: no
// snapshot may hold tenants in a pod it does not show registered.
func TestFoldersNeverLoseAPod(t *testing.T) {
	agent := consultest.Start(t)
	r, err := New(Config{Logger: slog.New(slog.DiscardHandler), MinWait: 250 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var torn []string
	r.Subscribe(func(s *Snapshot) {
		for _, ps := range s.Pods() {
			if ps.Tenants > 0 && !ps.Registered {
				mu.Lock()
				torn = append(torn, fmt.Sprintf("a snapshot at index %d holds %d tenants in pod %s but not the pod", s.Index, ps.Tenants, ps.Name))
				mu.Unlock()
			}
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { r.Run(ctx, agent.Client) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	<-r.Ready()

	for round := range 6 {
		if round == 0 {
			// Writes elsewhere in KV wake the query of the empty pods/.
			agent.Put(t, "podedge/leader/other", "x")
		} else {
			agent.Put(t, "podedge/pods/far", `{"name":"far","lat":-33.9,"lon":151.2,"capacity":1000}`)
		}
		pod := fmt.Sprintf("tiny-%d", round)
		agent.Put(t, "podedge/pods/"+pod, `{"name":"`+pod+`","lat":53.3,"lon":-6.3,"capacity":5}`)
		var ops api.TxnOps
		for i := range 5 {
			name := fmt.Sprintf("r%d-t%d", round, i)
			ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: "podedge/tenants/" + name, Value: []byte(`{"name":"` + name + `","pod":"` + pod + `"}`)}})
		}
		if ok, resp, _, err := agent.Client.Txn().Txn(ops, nil); err != nil || !ok {
			t.Fatalf("tenants: %v %+v", err, resp)
		}
		consultest.WaitFor(t, 5*time.Second, pod+" and its tenants", func() bool {
			p := r.Snapshot().Pod(pod)
			return p != nil && p.Registered && p.Tenants == 5
		})
	}
	mu.Lock()
	defer mu.Unlock()
	for _, s := range torn {
		t.Error(s)
	}
}
