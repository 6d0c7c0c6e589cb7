package leader

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/consultest"
)

// TestConsulFaults runs the platform of one pod on a real Consul cluster —
// three servers and two hosts, each host a client agent with a leader
// replica, an edge and dnsd beside it — keeps sign-ups, HTTP requests
// through both edges and DNS queries to both dnsd flowing, and breaks
// Consul under them one fault at a time, waiting for a healthy cluster
// between faults so that each starts from the same state.
//
// Throughout, no request through an edge and no DNS answer may fail; every
// sign-up answered 201 is stored, once, in the pod it names, and nothing
// unacknowledged is; no pod goes past its capacity. After each fault,
// sign-ups succeed again within writesBack of Consul's recovery. The log
// gives, for each fault, the time from the fault to the first successful
// sign-up, Consul's own part of it and the difference:
//
//	go test -count=1 -v -run TestConsulFaults ./leader/ | grep fault:
func TestConsulFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a Consul cluster through its faults")
	}
	multiplier := 0 // Consul's default, 5: Raft elections take several seconds
	if v := os.Getenv("PODEDGE_RAFT_MULTIPLIER"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10 {
			t.Fatalf("PODEDGE_RAFT_MULTIPLIER=%q: want 1 to 10", v)
		}
		multiplier = n
	}
	apps := []*net.TCPAddr{appServer(t).Listener.Addr().(*net.TCPAddr), appServer(t).Listener.Addr().(*net.TCPAddr)}
	c := consultest.StartCluster(t, consultest.ClusterOptions{
		Clients:        2,
		RaftMultiplier: multiplier,
		// Each host's app server, and an edge of the far pod, as the
		// hosts' configuration files would define them: they come back
		// when an agent is rebuilt empty.
		ClientConfig: func(i int) string {
			return fmt.Sprintf(`services = [
  { id = "app-%[1]d", name = "app", address = "%[2]s", port = %[3]d, meta = { pod = "dublin" } },
  { id = "edge-frankfurt-%[1]d", name = "edge", address = "192.0.2.10%[1]d", port = 80, meta = { pod = "frankfurt", public_ip = "192.0.2.10%[1]d" } }
]`, i, apps[i].IP, apps[i].Port)
		},
	})
	hosts := []*host{
		startHost(t, c.Clients[0], "dublin", "192.0.2.1"),
		startHost(t, c.Clients[1], "dublin", "192.0.2.2"),
	}
	rs := []*replica{hosts[0].replica, hosts[1].replica}
	lead := waitLeader(t, rs)
	waitEdges(t, rs, "dublin", 2)
	// A small pod that fills up, and a big far one for the rest.
	expect(t, 201, "PUT", lead.url+"/v1/pods/dublin", podBody(dublin, 3), "")
	expect(t, 201, "PUT", lead.url+"/v1/pods/frankfurt", podBody(frankfurt, 100000), "")
	expect(t, 201, "POST", lead.url+"/v1/tenants", signupBody("acme", dublin), "")
	for _, h := range hosts {
		consultest.WaitFor(t, 10*time.Second, "acme routed by every edge", func() bool {
			code, _, err := tryGetEdge(h, "acme.example.test")
			return err == nil && code == 200
		})
	}

	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var web, names failures
	for _, h := range hosts {
		wg.Go(func() { getLoop(ctx, h.edge, "acme.example.test", 20*time.Millisecond, &web) })
		wg.Go(func() {
			dnsLoop(ctx, h.dns, []string{"dublin.pods.example.test.", "acme.example.test."},
				[]string{"192.0.2.1", "192.0.2.2"}, 20*time.Millisecond, &names)
		})
	}
	su := newSignups(t, []string{rs[0].url, rs[1].url}, dublin)
	su.placed["acme"] = "dublin"
	for i := range 3 {
		wg.Go(func() { su.run(ctx, fmt.Sprintf("w%d", i)) })
	}

	steady := func(t *testing.T) {
		t.Helper()
		c.WaitHealthy(t, 60*time.Second)
		waitLeader(t, rs)
		for _, h := range hosts {
			// Every router follows Consul again on its own, and sees the
			// edges registered again.
			consultest.WaitFor(t, 30*time.Second, "every view of "+h.agent.Node()+" healthy", func() bool {
				return h.edge.Router().Status().Healthy && h.dns.Router().Status().Healthy && h.replica.srv.router.Status().Healthy
			})
			consultest.WaitFor(t, 30*time.Second, "both edges in every DNS answer", func() bool {
				return answerHolds(h.dns, "dublin.pods.example.test.", "192.0.2.1", "192.0.2.2")
			})
		}
		n := su.done()
		consultest.WaitFor(t, 10*time.Second, "sign-ups flowing", func() bool { return su.done() >= n+5 })
	}

	// holder is the host whose replica holds the lock.
	holder := func(t *testing.T) (h, other *host) {
		t.Helper()
		consultest.WaitFor(t, 10*time.Second, "a leading replica", func() bool {
			for i, x := range hosts {
				if x.replica.srv.elector.State().IsLeader {
					h, other = x, hosts[1-i]
					return true
				}
			}
			return false
		})
		return h, other
	}
	// reached waits until a read that needs the Raft leader succeeds
	// through agent: Consul has recovered for that host.
	reached := func(t *testing.T, agent *consultest.Agent) time.Time {
		t.Helper()
		consultest.WaitFor(t, 60*time.Second, "a read through "+agent.Node()+" to reach the Raft leader", func() bool {
			return readsThrough(agent)
		})
		return time.Now()
	}

	for _, f := range []struct {
		name string
		// run breaks Consul and returns when it did (fault), when Consul
		// had recovered by its own reckoning (a Raft leader elected, a dead
		// node's session released: consul), and when the replica holding
		// the lock before the fault reached that leader again through its
		// agent (back); it leaves the cluster to heal on its own.
		run func(t *testing.T) (fault, consul, back time.Time, what string)
	}{
		{
			name: "raft leader killed and restarted",
			run: func(t *testing.T) (time.Time, time.Time, time.Time, string) {
				h, _ := holder(t)
				l := c.WaitLeader(t, 10*time.Second)
				fault := time.Now()
				l.Kill()
				c.WaitLeader(t, 60*time.Second)
				elected := time.Now()
				back := reached(t, h.agent)
				l.Restart()
				return fault, elected, back, "new raft leader"
			},
		},
		{
			name: "quorum lost for 15s",
			run: func(t *testing.T) (time.Time, time.Time, time.Time, string) {
				h, _ := holder(t)
				l := c.WaitLeader(t, 10*time.Second)
				down := []*consultest.Agent{l}
				for _, s := range c.Servers {
					if s != l && len(down) < 2 {
						down = append(down, s)
					}
				}
				fault := time.Now()
				for _, s := range down {
					s.Kill()
				}
				// The outage itself lasts 15s: that is the fault, not a
				// wait for anything.
				time.Sleep(15 * time.Second)
				restarted := time.Now()
				for _, s := range down {
					s.Restart()
				}
				c.WaitLeader(t, 60*time.Second)
				elected := time.Now()
				back := reached(t, h.agent)
				t.Logf("servers restarted %s after the fault; a leader elected %s after that",
					restarted.Sub(fault).Round(time.Millisecond), elected.Sub(restarted).Round(time.Millisecond))
				return fault, elected, back, "raft leader again"
			},
		},
		{
			name: "lock holder's client agent killed, then rebuilt empty",
			run: func(t *testing.T) (time.Time, time.Time, time.Time, string) {
				h, other := holder(t)
				sid, _ := h.replica.srv.elector.Session()
				fault := time.Now()
				h.agent.Kill()
				// Consul frees the lock once it has declared the node
				// failed; the other host sees that through its agent.
				consultest.WaitFor(t, 60*time.Second, "the dead node's session invalidated", func() bool {
					ctx, cancel := context.WithTimeout(context.Background(), time.Second)
					defer cancel()
					e, _, err := other.agent.Client.Session().Info(sid, (&api.QueryOptions{}).WithContext(ctx))
					return err == nil && e == nil
				})
				released := time.Now()
				waitFirstWrite(t, su, fault)
				h.agent.RestartEmpty()
				// Nothing registered through its API survived: the edge
				// and the replica register again on their own.
				for svc, id := range map[string]string{"edge": h.edge.ServiceID(), "leader": h.replica.srv.elector.serviceID} {
					consultest.WaitFor(t, 30*time.Second, id+" registered again, passing", func() bool {
						checks, _, err := other.agent.Client.Health().Checks(svc, nil)
						if err != nil {
							return false
						}
						for _, ch := range checks {
							if ch.ServiceID == id && ch.Node == h.agent.Node() && ch.Status == api.HealthPassing {
								return true
							}
						}
						return false
					})
				}
				return fault, released, released, "dead node's session released"
			},
		},
		{
			name: "raft leader partitioned (SIGSTOP), then back",
			run: func(t *testing.T) (time.Time, time.Time, time.Time, string) {
				h, _ := holder(t)
				l := c.WaitLeader(t, 10*time.Second)
				fault := time.Now()
				l.Pause()
				c.WaitLeader(t, 60*time.Second)
				elected := time.Now()
				// The holder's agent may have been talking to the paused
				// server: its calls hang until the agent gives that
				// server up (serf declares it failed).
				back := reached(t, h.agent)
				waitFirstWrite(t, su, fault)
				l.Resume()
				return fault, elected, back, "new raft leader"
			},
		},
	} {
		ok := t.Run(f.name, func(t *testing.T) {
			steady(t)
			fault, consul, back, what := f.run(t)
			first := waitFirstWrite(t, su, fault)
			t.Logf("fault: %s: first sign-up %s after the fault; consul: %s after %s, reached from the lock holder's host after %s; difference %s",
				f.name, ms(first.Sub(fault)), what, ms(consul.Sub(fault)), ms(back.Sub(fault)), ms(first.Sub(back)))
			if d := first.Sub(back); d > writesBack {
				t.Errorf("sign-ups came back %s after consul recovered, more than %s", ms(d), writesBack)
			}
			steady(t)
		})
		if !ok {
			break // the cluster may be left broken; the next fault would not be independent
		}
	}
	stop()
	wg.Wait()

	if n, first := web.count(); n != 0 {
		t.Errorf("%d of %d requests through the edges failed; first: %v", n, int64(n)+web.ok.Load(), first)
	}
	if n, first := names.count(); n != 0 {
		t.Errorf("%d of %d DNS queries failed; first: %v", n, int64(n)+names.ok.Load(), first)
	}
	t.Logf("%d requests through the edges, %d DNS answers, %d sign-ups (%d answered 409 on a retry after an unanswered commit)",
		web.ok.Load(), names.ok.Load(), su.done(), len(su.late))
	su.check(t, c.Clients[1])
	if n := tenantsByPod(t, c.Clients[1])["dublin"]; n != 3 {
		t.Errorf("dublin holds %d tenants, want exactly its 3 seats", n)
	}
	checkSeats(t, c.Clients[1])
}

// waitFirstWrite waits for a sign-up sent after fault to succeed and
// returns when it was answered.
func waitFirstWrite(t *testing.T, su *signups, fault time.Time) time.Time {
	t.Helper()
	var first time.Time
	consultest.WaitFor(t, 90*time.Second, "a sign-up to succeed after the fault", func() bool {
		first = su.firstAfter(fault)
		return !first.IsZero()
	})
	return first
}

// readsThrough reports whether a read that needs the Raft leader (a KV read
// in Consul's default consistency) succeeds through agent within a second.
func readsThrough(agent *consultest.Agent) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, _, err := agent.Client.KV().Get("podedge/leader/lock", (&api.QueryOptions{}).WithContext(ctx))
	return err == nil
}

func ms(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
