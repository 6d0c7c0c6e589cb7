package leader

import (
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/consultest"
)

// TestLockLost: a leader whose session Consul invalidates (its check
// failed, an operator destroyed it) stops leading at once, takes part in
// the election again with a new session, and writes go on through whoever
// wins.
func TestLockLost(t *testing.T) {
	for _, c := range []struct {
		name string
		lose func(t *testing.T, agent *consultest.Agent, lead *replica)
	}{
		{"session destroyed", func(t *testing.T, agent *consultest.Agent, lead *replica) {
			sid, _ := lead.srv.elector.Session()
			if _, err := agent.Client.Session().Destroy(sid, nil); err != nil {
				t.Fatal(err)
			}
		}},
		{"check critical", func(t *testing.T, agent *consultest.Agent, lead *replica) {
			// As if the replica had stalled past its check TTL; its next
			// heartbeat makes it passing again.
			if err := agent.Client.Agent().UpdateTTL(lead.srv.elector.checkID, "stalled", api.HealthCritical); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			agent := consultest.Start(t)
			rs := startCluster(t, agent, 2)
			lead := waitLeader(t, rs)
			edges(t, agent, "dublin")
			waitEdges(t, rs, "dublin", 1)
			expect(t, 201, "PUT", lead.url+"/v1/pods/dublin", podBody(dublin, 100), "")
			old, _ := lead.srv.elector.Session()

			c.lose(t, agent, lead)
			consultest.WaitFor(t, 5*time.Second, "the old session to stop leading", func() bool {
				sid, leading := lead.srv.elector.Session()
				return !leading || sid != old
			})
			now := waitLeader(t, rs)
			if sid, _ := now.srv.elector.Session(); sid == old {
				t.Fatal("still leading with the invalidated session")
			}
			if got := counterValue(t, lead.srv.m.changes.WithLabelValues("lost")); got != 1 {
				t.Fatalf("the old leader counted %v losses, want 1", got)
			}
			for i, r := range rs {
				expect(t, 201, "POST", r.url+"/v1/tenants", signupBody(fmt.Sprintf("after%d", i), dublin), "")
			}
			// Both replicas take part again: each has a live session.
			for _, r := range rs {
				consultest.WaitFor(t, 5*time.Second, "a session for every replica", func() bool {
					entries, _, err := agent.Client.Session().List(nil)
					if err != nil {
						return false
					}
					for _, e := range entries {
						if e.Name == "podedge leader "+r.addr && e.ID != old {
							return true
						}
					}
					return false
				})
			}
			checkSeats(t, agent)
		})
	}
}
