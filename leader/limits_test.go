package leader

import (
	"strings"
	"testing"
	"time"

	"github.com/podedge/podedge/internal/consultest"
	"github.com/podedge/podedge/router"
)

// A tenant's limits are set, shown, changed and cleared through the API,
// validated with a 400 naming the field, and reach every reader as any
// tenant change does.
func TestTenantLimits(t *testing.T) {
	agent := consultest.Start(t)
	rs := startCluster(t, agent, 2)
	lead := waitLeader(t, rs)
	expect(t, 201, "PUT", lead.url+"/v1/pods/dub", podBody(dublin, 10), "")
	edges(t, agent, "dub")
	waitEdges(t, rs, "dub", 1)
	expect(t, 201, "POST", lead.url+"/v1/tenants", signupBody("acme", dublin), "")
	sb := standby(t, rs)

	for _, c := range []struct {
		body any
		want string
	}{
		{map[string]any{}, "set at least one of rps"},
		{map[string]any{"rps": 0}, "rps: 0 is outside"},
		{map[string]any{"rps": -5}, "rps: -5 is outside"},
		{map[string]any{"burst": 10}, "burst: needs rps"},
		{map[string]any{"rps": 10, "concurrency": 0}, "concurrency: 0 is outside"},
		{map[string]any{"conns_per_ip": 100000}, "conns_per_ip: 100000 is outside"},
		{map[string]any{"rps": 10, "speed": 3}, "speed"},
	} {
		expect(t, 400, "PUT", sb.url+"/v1/tenants/acme/limits", c.body, c.want)
	}
	expect(t, 404, "PUT", sb.url+"/v1/tenants/nobody/limits", map[string]any{"rps": 10}, "not found")

	// Set through a standby (forwarded), read back from it.
	out := expect(t, 200, "PUT", sb.url+"/v1/tenants/acme/limits", map[string]any{"rps": 100, "burst": 20, "concurrency": 8, "conns_per_ip": 4}, "")
	want := router.Limits{RPS: 100, Burst: 20, Concurrency: 8, ConnsPerIP: 4}
	if got := out["limits"].(map[string]any); got["rps"] != 100.0 || got["conns_per_ip"] != 4.0 {
		t.Fatalf("answer's limits %v", got)
	}
	reader := startReader(t, agent)
	consultest.WaitFor(t, 5*time.Second, "every reader to have the limits", func() bool {
		for _, r := range []*router.Router{rs[0].srv.router, rs[1].srv.router, reader.r} {
			tn := r.Snapshot().Tenant("acme")
			if tn == nil || tn.Limits == nil || *tn.Limits != want {
				return false
			}
		}
		return true
	})
	got := expect(t, 200, "GET", sb.url+"/v1/tenants/acme", nil, "")
	if l, ok := got["limits"].(map[string]any); !ok || l["concurrency"] != 8.0 {
		t.Fatalf("GET shows limits %v", got["limits"])
	}
	// Cleared: gone from the answer and from every reader.
	out = expect(t, 200, "DELETE", lead.url+"/v1/tenants/acme/limits", nil, "")
	if _, ok := out["limits"]; ok {
		t.Fatalf("limits still in the answer: %v", out)
	}
	consultest.WaitFor(t, 5*time.Second, "readers to drop the limits", func() bool {
		tn := reader.r.Snapshot().Tenant("acme")
		return tn != nil && tn.Limits == nil
	})
	if v := kv(t, agent)["podedge/tenants/acme"]; strings.Contains(v, "limits") {
		t.Fatalf("stored value keeps limits: %s", v)
	}
}
