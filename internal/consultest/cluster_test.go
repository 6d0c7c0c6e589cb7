package consultest

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// TestCluster drives every operation of the helper on a real cluster: the
// leader killed and restarted, a client agent rebuilt empty, a server
// paused and resumed. Each must leave the cluster healthy again.
func TestCluster(t *testing.T) {
	c := StartCluster(t, ClusterOptions{Clients: 1, RaftMultiplier: 1})
	client := c.Clients[0]
	client.Put(t, "k", "v")

	old := c.WaitLeader(t, 10*time.Second)
	killed := time.Now()
	old.Kill()
	now := c.WaitLeader(t, 30*time.Second)
	t.Logf("leader %s killed; %s leads after %s", old.Node(), now.Node(), time.Since(killed).Round(time.Millisecond))
	if now == old {
		t.Fatal("the killed server still leads")
	}
	old.Restart()
	c.WaitHealthy(t, 60*time.Second)
	if pair, _, err := old.Client.KV().Get("k", &api.QueryOptions{AllowStale: true}); err != nil || pair == nil || string(pair.Value) != "v" {
		t.Fatalf("the restarted server lost its data: %v %v", pair, err)
	}

	client.Register(t, &api.AgentServiceRegistration{ID: "svc", Name: "svc"}, api.HealthPassing)
	client.Kill()
	client.RestartEmpty()
	c.WaitHealthy(t, 60*time.Second)
	if svc, _, err := client.Client.Agent().Service("svc", nil); err == nil && svc != nil {
		t.Fatal("a client agent restarted empty still has the service registered through its API")
	}

	paused := c.WaitLeader(t, 10*time.Second)
	stopped := time.Now()
	paused.Pause()
	now = c.WaitLeader(t, 30*time.Second)
	t.Logf("leader %s paused; %s leads after %s", paused.Node(), now.Node(), time.Since(stopped).Round(time.Millisecond))
	paused.Resume()
	c.WaitHealthy(t, 60*time.Second)
}

// TestSampleClusterConfig: the agent configurations for a real cluster in
// configs/consul, which leader/README.md starts operators from, are ones
// this Consul accepts.
func TestSampleClusterConfig(t *testing.T) {
	bin, err := Binary()
	if err != nil {
		if testing.Short() {
			t.Skip(err.Error())
		}
		t.Fatal(err)
	}
	for _, name := range []string{"server.hcl", "client.hcl"} {
		t.Run(name, func(t *testing.T) {
			out, err := exec.Command(bin, "validate", filepath.Join("..", "..", "configs", "consul", name)).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "Configuration is valid") {
				t.Fatalf("consul validate: %v\n%s", err, out)
			}
		})
	}
}
