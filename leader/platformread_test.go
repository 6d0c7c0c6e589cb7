package leader

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/consultest"
)

// TestReconcileReadOutlivesWrites: a new leader with no change log yet
// reconciles from a read of the whole platform. When Consul takes longer
// to answer that read than a write may wait (a million tenants), the
// read goes on past the write that started it, and the write after it
// takes its result: writes succeed once it is in, and Consul is asked for
// the platform once, not at every write. Before, each write cut its read
// at its deadline and started another: none ever succeeded.
func TestReconcileReadOutlivesWrites(t *testing.T) {
	agent := consultest.Start(t)
	p := consultest.NewProxy(t, agent)
	const folder = "podedge/tenants/"
	// Two tenants written before any leader: no log exists.
	for _, name := range []string{"early-1", "early-2"} {
		agent.Put(t, folder+name, fmt.Sprintf(`{"name":%q,"pod":"dublin","domains":[],"created":"2026-01-01T00:00:00Z"}`, name))
	}
	p.DelayTxnsOn(folder, 2500*time.Millisecond)
	r := startReplica(t, agent, func(c *Config) {
		c.Consul.Address = p.HTTPAddr
		c.WriteTimeout = time.Second
	})
	waitLeader(t, []*replica{r})
	edges(t, agent, "dublin")
	waitEdges(t, []*replica{r}, "dublin", 1)

	attempts := 0
	body := `{"region":"test","lat":53.3,"lon":-6.2,"capacity":10}`
	consultest.WaitFor(t, 20*time.Second, "a write to succeed while the platform read takes longer than a write", func() bool {
		attempts++
		code, _, err := tryCall("PUT", r.url+"/v1/pods/dublin", body)
		return err == nil && code == 201
	})
	// One read by the reconciliation; the view's resync once the write
	// started the log may be a second.
	if n := p.TxnsOn(folder); n > 2 {
		t.Errorf("Consul was asked for the whole platform %d times over %d writes, want at most 2", n, attempts)
	}
	seats := kv(t, agent)["podedge/leader/seats/dublin"]
	if seats != "2" {
		t.Errorf("seats of dublin: %q, want the 2 tenants written before the leader", seats)
	}
}

// TestBoundReadRidesOutLateProbes: while Consul builds a large answer it
// answers the leader probes late; a read of the platform is then left to
// finish (boundRead), where a call bound by boundCall is ended as stuck.
func TestBoundReadRidesOutLateProbes(t *testing.T) {
	agent := consultest.Start(t)
	read := api.TxnOps{{KV: &api.KVTxnOp{Verb: api.KVGetTree, Key: "podedge/tenants/"}}}
	for _, c := range []struct {
		name  string
		bound func(context.Context, *api.Client) (context.Context, context.CancelFunc)
		fault func(p *consultest.Proxy)
		heal  func(p *consultest.Proxy)
		want  error
	}{
		{"busy, read", boundRead,
			func(p *consultest.Proxy) { p.Delay("/v1/status/leader", 700*time.Millisecond) },
			func(p *consultest.Proxy) { p.Delay("/v1/status/leader", 0) }, nil},
		{"busy, call", boundCall,
			func(p *consultest.Proxy) { p.Delay("/v1/status/leader", 700*time.Millisecond) },
			func(p *consultest.Proxy) { p.Delay("/v1/status/leader", 0) }, errConsulBack},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := consultest.NewProxy(t, agent)
			client := proxyClient(t, p)
			p.DelayTxnsOn("podedge/tenants/", 3*time.Second)
			c.fault(p)
			time.AfterFunc(1500*time.Millisecond, func() { c.heal(p) })
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cctx, stop := c.bound(ctx, client)
			_, _, _, err := client.Txn().Txn(read, (&api.QueryOptions{}).WithContext(cctx))
			err = callErr(cctx, err)
			stop()
			if c.want == nil && err != nil || c.want != nil && !errors.Is(err, c.want) {
				t.Fatalf("error %v, want %v", err, c.want)
			}
		})
	}
}

// TestAuditorFollowsALeadershipLostWhileReconciling: the auditor starts
// once its session has reconciled. A session lost before that (Consul
// busy with the read of the platform missed the check's TTL) must not
// hold the auditor: under the next session, a value written straight into
// KV still reaches the view. Before, the auditor waited for the lost
// session's reconciliation for good.
func TestAuditorFollowsALeadershipLostWhileReconciling(t *testing.T) {
	agent := consultest.Start(t)
	p := consultest.NewProxy(t, agent)
	const folder = "podedge/tenants/"
	agent.Put(t, folder+"early", `{"name":"early","pod":"dublin","domains":[],"created":"2026-01-01T00:00:00Z"}`)
	p.DelayTxnsOn(folder, 3*time.Second)
	r := startReplica(t, agent, func(c *Config) {
		c.Consul.Address = p.HTTPAddr
		c.WriteTimeout = time.Second
		c.AuditInterval = 100 * time.Millisecond
	})
	waitLeader(t, []*replica{r})
	first, _ := r.srv.elector.Session()
	// A write that times out behind the read: the auditor of the first
	// session has started meanwhile, and waits for its reconciliation.
	body := `{"region":"test","lat":53.3,"lon":-6.2,"capacity":10}`
	if code, _, err := tryCall("PUT", r.url+"/v1/pods/dublin", body); err != nil || code != 503 {
		t.Fatalf("a write behind the read of the platform: %d, %v; want 503", code, err)
	}
	if _, err := agent.Client.Session().Destroy(first, nil); err != nil {
		t.Fatal(err)
	}
	consultest.WaitFor(t, 15*time.Second, "the replica to lead again under a new session", func() bool {
		now, ok := r.srv.elector.Session()
		return ok && now != first
	})
	p.DelayTxnsOn(folder, 0)
	// A write starts the change log: the view follows it, and no longer
	// the folder itself.
	edges(t, agent, "dublin")
	waitEdges(t, []*replica{r}, "dublin", 1)
	consultest.WaitFor(t, 15*time.Second, "a write to start the change log", func() bool {
		code, _, err := tryCall("PUT", r.url+"/v1/pods/dublin", body)
		return err == nil && code == 201
	})
	consultest.WaitFor(t, 10*time.Second, "the view to follow the log", func() bool {
		return r.srv.router.LogStatus().Following
	})
	agent.Put(t, folder+"oob", `{"name":"oob","pod":"dublin","domains":[],"created":"2026-01-01T00:00:00Z"}`)
	consultest.WaitFor(t, 20*time.Second, "the value written straight into KV to reach the view", func() bool {
		return r.srv.router.Snapshot().Tenant("oob") != nil
	})
}

// A read that ended long ago is not handed to a reconciliation: its seat
// counts would be old.
func TestPlatformReadGoesStale(t *testing.T) {
	now := time.Now()
	inFlight := &platformRead{done: make(chan struct{})}
	if inFlight.stale(now.Add(time.Hour)) {
		t.Error("a read in flight is stale")
	}
	ended := &platformRead{done: make(chan struct{}), at: now}
	close(ended.done)
	if ended.stale(now.Add(platformReadFresh / 2)) {
		t.Error("a read that just ended is stale")
	}
	if !ended.stale(now.Add(platformReadFresh + time.Second)) {
		t.Error("a read that ended long ago is not stale")
	}
}
