package dnsd

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"
	"github.com/podedge/podedge/internal/consultest"
)

// TestRotation registers 15 passing and 2 critical edges: every answer
// holds 13 distinct passing edges, and over 40 queries (of the pod and of a
// tenant in it, over UDP and TCP) all 15 appear, and each leads at least
// once.
func TestRotation(t *testing.T) {
	agent := consultest.Start(t)
	putPod(t, agent, "pod-1")
	passing := ips(1, 15)
	for i, ip := range passing {
		edge(t, agent, fmt.Sprintf("e%d", i), "pod-1", ip, api.HealthPassing)
	}
	critical := ips(200, 2)
	for i, ip := range critical {
		edge(t, agent, fmt.Sprintf("bad%d", i), "pod-1", ip, api.HealthCritical)
	}
	putTenant(t, agent, "acme", "pod-1")
	ts := startServer(t, agent, nil)
	consultest.WaitFor(t, 10*time.Second, "pod-1 to have 15 passing edges", func() bool {
		return ts.metric(t, `dnsd_passing_edges{pod="pod-1"}`) == 15
	})

	seen, led := map[string]int{}, map[string]int{}
	for i := 0; i < 40; i++ {
		network := []string{"udp", "tcp"}[i%2]
		name := []string{"pod-1.pods.example.test.", "acme.example.test."}[i/2%2]
		got := addrs(ts.query(t, network, name, dns.TypeA))
		if len(got) != 13 {
			t.Fatalf("query %d (%s %s): %d addresses %v, want 13", i, network, name, len(got), got)
		}
		if len(slices.Compact(sorted(got))) != 13 {
			t.Fatalf("query %d: duplicate addresses in %v", i, got)
		}
		for _, ip := range got {
			if !slices.Contains(passing, ip) {
				t.Fatalf("query %d: %s is not a passing edge", i, ip)
			}
			seen[ip]++
		}
		led[got[0]]++
	}
	for _, ip := range passing {
		if seen[ip] == 0 {
			t.Errorf("edge %s never appeared in 40 answers", ip)
		}
		if led[ip] == 0 {
			t.Errorf("edge %s never led an answer in 40: %v", ip, led)
		}
	}
}

// TestLiveHealth checks that the answers follow Consul within 2 s: a check
// failing, passing again, an edge added and removed; and that the SOA
// serial changes with them.
func TestLiveHealth(t *testing.T) {
	agent := consultest.Start(t)
	putPod(t, agent, "pod-1")
	for i, ip := range ips(1, 3) {
		edge(t, agent, fmt.Sprintf("e%d", i+1), "pod-1", ip, api.HealthPassing)
	}
	ts := startServer(t, agent, nil)
	answer := func() []string {
		return sorted(addrs(ts.query(t, "udp", "pod-1.pods.example.test.", dns.TypeA)))
	}
	serial := func() uint32 {
		return ts.query(t, "tcp", "example.test.", dns.TypeSOA).Answer[0].(*dns.SOA).Serial
	}
	consultest.WaitFor(t, 10*time.Second, "three edges", func() bool { return len(answer()) == 3 })

	steps := []struct {
		what   string
		change func()
		want   []string
	}{
		{"e2's check fails", func() { agent.SetStatus(t, "e2", api.HealthCritical) }, []string{"192.0.2.1", "192.0.2.3"}},
		{"e2's check passes again", func() { agent.SetStatus(t, "e2", api.HealthPassing) }, ips(1, 3)},
		{"e4 is added", func() { edge(t, agent, "e4", "pod-1", "192.0.2.4", api.HealthPassing) }, ips(1, 4)},
		{"e1 deregisters", func() {
			if err := agent.Client.Agent().ServiceDeregister("e1"); err != nil {
				t.Fatal(err)
			}
		}, ips(2, 3)},
		{"e3 goes to warning, which is not passing", func() { agent.SetStatus(t, "e3", api.HealthWarning) }, []string{"192.0.2.2", "192.0.2.4"}},
	}
	for _, s := range steps {
		before := serial()
		s.change()
		consultest.WaitFor(t, 2*time.Second, fmt.Sprintf("answers %v after %s", s.want, s.what), func() bool {
			return slices.Equal(answer(), s.want)
		})
		if after := serial(); int32(after-before) <= 0 {
			t.Errorf("after %s the serial went from %d to %d; it must grow", s.what, before, after)
		}
	}

	// An app server is not in DNS: registering one changes nothing that
	// dnsd serves, so the serial stays.
	before, builds := serial(), ts.metric(t, "dnsd_zone_builds_total")
	agent.App(t, "app-1", "pod-1", "127.0.0.1", 9000, api.HealthPassing)
	consultest.WaitFor(t, 5*time.Second, "a zone build after the app server registers", func() bool {
		return ts.metric(t, "dnsd_zone_builds_total") > builds
	})
	if after := serial(); after != before {
		t.Errorf("registering an app server moved the serial from %d to %d", before, after)
	}
}

// TestConsulDown stops Consul: dnsd keeps answering from the last snapshot,
// says so in /healthz and its metrics, and follows a new Consul once one
// answers again, its serial still growing although the new agent's indexes
// start from zero.
func TestConsulDown(t *testing.T) {
	agent := consultest.Start(t)
	putPod(t, agent, "pod-1")
	for i, ip := range ips(1, 3) {
		edge(t, agent, fmt.Sprintf("e%d", i+1), "pod-1", ip, api.HealthPassing)
	}
	putTenant(t, agent, "acme", "pod-1")
	ts := startServer(t, agent, nil)
	consultest.WaitFor(t, 10*time.Second, "three edges", func() bool {
		return len(addrs(ts.query(t, "udp", "acme.example.test.", dns.TypeA))) == 3
	})
	soa := ts.query(t, "udp", "example.test.", dns.TypeSOA).Answer[0].(*dns.SOA)

	agent.Stop()
	consultest.WaitFor(t, 10*time.Second, "dnsd to notice Consul is down", func() bool {
		return ts.metric(t, "dnsd_consul_up") == 0
	})
	for _, network := range []string{"udp", "tcp"} {
		for _, name := range []string{"acme.example.test.", "pod-1.pods.example.test."} {
			r := ts.query(t, network, name, dns.TypeA)
			if got := sorted(addrs(r)); r.Rcode != dns.RcodeSuccess || !slices.Equal(got, ips(1, 3)) {
				t.Errorf("%s %s with Consul down: %s %v, want the last known %v", network, name, dns.RcodeToString[r.Rcode], got, ips(1, 3))
			}
		}
	}
	if got := ts.query(t, "udp", "example.test.", dns.TypeSOA).Answer[0].(*dns.SOA).Serial; got != soa.Serial {
		t.Errorf("serial moved from %d to %d with Consul down", soa.Serial, got)
	}
	h := ts.healthz(t)
	if h.code != 200 || h.Status != "ok" || h.Consul != "unreachable" || h.StaleSeconds <= 0 {
		t.Errorf("healthz with Consul down: %+v; want 200, ok, consul unreachable, stale for some time", h)
	}
	if ts.metric(t, "dnsd_snapshot_stale_seconds") <= 0 {
		t.Error("dnsd_snapshot_stale_seconds is not positive with Consul down")
	}

	// A new, empty Consul on the same address: its indexes start low,
	// the data changed (no pod), and the serial must still grow.
	agent.Restart()
	consultest.WaitFor(t, 30*time.Second, "the pod to disappear with the new Consul", func() bool {
		return ts.query(t, "udp", "pod-1.pods.example.test.", dns.TypeA).Rcode == dns.RcodeNameError
	})
	if got := ts.query(t, "udp", "example.test.", dns.TypeSOA).Answer[0].(*dns.SOA).Serial; int32(got-soa.Serial) <= 0 {
		t.Errorf("serial went from %d to %d after Consul came back with lower indexes; it must grow", soa.Serial, got)
	}
	// Each of the router's four queries recovers on its own backoff.
	consultest.WaitFor(t, 15*time.Second, "healthz to report Consul ok again", func() bool {
		h := ts.healthz(t)
		return h.Consul == "ok" && h.StaleSeconds == 0
	})
	if up := ts.metric(t, "dnsd_consul_up"); up != 1 {
		t.Errorf("dnsd_consul_up = %v after Consul came back", up)
	}
}
