package leader

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/consultest"
)

// TestBoundCall: a call stuck behind a failure of Consul (sent to a server
// that then stopped answering) ends as soon as Consul answers again, long
// before its caller's deadline; a call that is only slow while Consul
// answers (slow commits) is left to finish, however long it takes.
func TestBoundCall(t *testing.T) {
	agent := consultest.Start(t)
	for _, c := range []struct {
		name  string
		fault func(p *consultest.Proxy)
		heal  func(p *consultest.Proxy) // 1s into the call; nil: never
		want  error
	}{
		{"stuck on a server that stopped answering",
			func(p *consultest.Proxy) { p.Hang() }, func(p *consultest.Proxy) { p.Heal() }, errConsulBack},
		{"slow commits while Consul answers",
			func(p *consultest.Proxy) { p.Delay("/v1/txn", 1500*time.Millisecond) }, nil, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := consultest.NewProxy(t, agent)
			client := proxyClient(t, p)
			c.fault(p)
			healed := make(chan time.Time, 1)
			if c.heal != nil {
				time.AfterFunc(time.Second, func() { healed <- time.Now(); c.heal(p) })
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			start := time.Now()
			cctx, stop := boundCall(ctx, client)
			ok, _, _, err := client.Txn().Txn(api.TxnOps{{KV: &api.KVTxnOp{Verb: api.KVSet, Key: "podedge/probe-" + c.name[:4], Value: []byte("x")}}}, (&api.QueryOptions{}).WithContext(cctx))
			err = callErr(cctx, err)
			stop()
			took := time.Since(start)
			if !errors.Is(err, c.want) || (c.want == nil && !ok) {
				t.Fatalf("after %s: ok %v, error %v; want %v", took, ok, err, c.want)
			}
			if c.heal != nil {
				if d := time.Since(<-healed); d > time.Second {
					t.Errorf("the call ended %s after Consul answered again, want within a second", d)
				}
			} else if took < 1500*time.Millisecond {
				t.Errorf("the call took %s, less than the delay: it was not slow", took)
			}
		})
	}
}

// proxyClient is a Consul client that talks through p.
func proxyClient(t *testing.T, p *consultest.Proxy) *api.Client {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = p.HTTPAddr
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return client
}
