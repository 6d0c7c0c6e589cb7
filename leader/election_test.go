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

// writesBack is how soon after Consul has recovered (a Raft leader again,
// or a dead node's session released) sign-ups must succeed again.
const writesBack = 2 * time.Second

// TestElectionRidesThroughLeaderlessConsul: Consul has no leader for 12s,
// longer than a session's TTL, so every renewal fails for more than a TTL.
// The leader keeps its session, which Consul keeps too, and with it the
// lock: once Consul answers again it leads with the same session and
// sign-ups succeed within writesBack, and no session is left behind.
// Giving the session up after a TTL of failed renewals, as the election
// once did, left it holding the lock unrenewed while a new one was made,
// and writes failed until Consul expired the old one, seconds later.
func TestElectionRidesThroughLeaderlessConsul(t *testing.T) {
	agent := consultest.Start(t)
	var proxies []*consultest.Proxy
	var rs []*replica
	for range 2 {
		p := consultest.NewProxy(t, agent)
		proxies = append(proxies, p)
		rs = append(rs, startReplica(t, agent, func(c *Config) { c.Consul.Address = p.HTTPAddr }))
	}
	lead := waitLeader(t, rs)
	edges(t, agent, "dublin")
	waitEdges(t, rs, "dublin", 1)
	expect(t, 201, "PUT", lead.url+"/v1/pods/dublin", podBody(dublin, 100), "")
	expect(t, 201, "POST", lead.url+"/v1/tenants", signupBody("before", dublin), "")
	sid, _ := lead.srv.elector.Session()

	for _, p := range proxies {
		p.LoseLeader()
	}
	lost := time.Now()
	expect(t, 503, "POST", lead.url+"/v1/tenants", signupBody("during", dublin), "")
	consultest.WaitFor(t, 5*time.Second, "the leader to stop claiming the lock without Consul", func() bool {
		return !lead.srv.elector.State().IsLeader
	})
	// The outage itself: 12s without a Consul leader is the fault.
	time.Sleep(12*time.Second - time.Since(lost))
	for _, p := range proxies {
		p.Heal()
	}
	back := time.Now()
	var first time.Time
	consultest.WaitFor(t, 30*time.Second, "a sign-up to succeed once Consul answers", func() bool {
		code, _, err := tryCall("POST", rs[1].url+"/v1/tenants", `{"name":"after","lat":53.3,"lon":-6.2}`)
		if err == nil && code == 201 {
			first = time.Now()
			return true
		}
		return false
	})
	t.Logf("sign-ups back %s after Consul answered again", first.Sub(back).Round(time.Millisecond))
	if d := first.Sub(back); d > writesBack {
		t.Errorf("sign-ups came back %s after Consul did, more than %s", d.Round(time.Millisecond), writesBack)
	}
	if now, leading := lead.srv.elector.Session(); !leading || now != sid {
		t.Errorf("the leader holds session %q (leading %v), want the one it held before the outage, %q", now, leading, sid)
	}
	sessions, _, err := agent.Client.Session().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(sessions) != 2 {
		t.Errorf("%d sessions after the outage, want one per replica: %+v", len(sessions), sessions)
	}
	checkSeats(t, agent)
}
