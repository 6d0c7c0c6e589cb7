package consultest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/freeport"
)

// ClusterOptions shapes a Cluster.
type ClusterOptions struct {
	// Servers is the number of Consul servers; 0 means 3.
	Servers int
	// Clients is the number of client agents, one per simulated host.
	Clients int
	// RaftMultiplier is Consul's performance.raft_multiplier, which scales
	// Raft's timeouts (a leader is deemed gone after 1s × the multiplier
	// without contact). 0 keeps Consul's default, 5; Consul recommends 1
	// for production servers.
	RaftMultiplier int
	// ClientConfig, if set, is extra HCL for client i (from 0): service
	// definitions, say, which an agent keeps over a restart with an empty
	// data dir, as a configuration file on a real host would.
	ClientConfig func(i int) string
}

// Cluster is a real Consul cluster on this machine: servers and client
// agents, each on its own loopback address (Linux routes all of 127/8 to
// lo), with its own data dir and free ports, as they would be on separate
// hosts. Every agent is killed when the test ends.
type Cluster struct {
	Servers []*Agent
	Clients []*Agent
}

// StartCluster starts the servers, then the client agents, and waits until
// the cluster is healthy (see WaitHealthy). Without a consul binary the
// test fails, or is skipped under -short.
func StartCluster(t testing.TB, opts ClusterOptions) *Cluster {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		if testing.Short() {
			t.Skip(err.Error())
		}
		t.Fatal(err)
	}
	if opts.Servers == 0 {
		opts.Servers = 3
	}
	// A block of 127/8 of its own (127.B.C.x), so that two clusters of
	// concurrent tests never share an address.
	block := fmt.Sprintf("127.%d.%d.", 100+rand.IntN(150), 1+rand.IntN(250))
	c := &Cluster{}
	var joins []string
	for i := range opts.Servers {
		a := newMember(t, bin, fmt.Sprintf("server-%d", i+1), block+strconv.Itoa(i+1))
		c.Servers = append(c.Servers, a)
		joins = append(joins, a.serfAddr)
	}
	common := func(a *Agent) []string {
		args := []string{"agent", "-node=" + a.node,
			"-bind=" + a.ip, "-client=" + a.ip, "-data-dir=" + a.dataDir,
			"-http-port=" + strconv.Itoa(a.ports[0]),
			"-serf-lan-port=" + strconv.Itoa(a.ports[1]),
			"-dns-port=-1", "-grpc-port=-1",
			"-hcl=ports { grpc_tls = -1 }",
			"-hcl=disable_update_check = true",
			"-log-level=warn",
			// A member that failed to join tries again soon, not after
			// Consul's default 30s.
			"-retry-interval=500ms",
		}
		for _, j := range joins {
			if j != a.serfAddr {
				args = append(args, "-retry-join="+j)
			}
		}
		return args
	}
	for _, a := range c.Servers {
		a.server = true
		a.args = append(common(a), "-server",
			"-bootstrap-expect="+strconv.Itoa(opts.Servers),
			"-serf-wan-port="+strconv.Itoa(a.ports[2]),
			"-server-port="+strconv.Itoa(a.ports[3]),
		)
		if opts.RaftMultiplier != 0 {
			a.args = append(a.args, fmt.Sprintf("-hcl=performance { raft_multiplier = %d }", opts.RaftMultiplier))
		}
	}
	for i := range opts.Clients {
		a := newMember(t, bin, fmt.Sprintf("client-%d", i+1), block+strconv.Itoa(101+i))
		a.args = append(common(a), "-serf-wan-port=-1")
		if opts.ClientConfig != nil {
			if hcl := opts.ClientConfig(i); hcl != "" {
				a.args = append(a.args, "-hcl="+hcl)
			}
		}
		c.Clients = append(c.Clients, a)
	}
	for _, a := range c.Agents() {
		if err := a.start(); err != nil {
			t.Fatal(err)
		}
	}
	c.WaitHealthy(t, 60*time.Second)
	return c
}

// newMember is a cluster member on ip, not yet started.
func newMember(t testing.TB, bin, node, ip string) *Agent {
	a := newAgent(t, bin)
	ports, err := freeport.PortsOn(ip, 4)
	if err != nil {
		t.Fatal(err)
	}
	a.node, a.ip, a.ports = node, ip, ports
	a.HTTPAddr = net.JoinHostPort(ip, strconv.Itoa(ports[0]))
	a.serfAddr = net.JoinHostPort(ip, strconv.Itoa(ports[1]))
	a.dataDir = filepath.Join(t.TempDir(), node)
	if err := os.MkdirAll(a.dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	a.setClient()
	a.ready = a.answers
	return a
}

// answers: a cluster member is ready once its HTTP API answers. Whether it
// has joined, and whether there is a leader, is the cluster's business
// (WaitHealthy), since a member may be restarted while quorum is lost.
func (a *Agent) answers() bool {
	resp, err := probeClient.Get("http://" + a.HTTPAddr + "/v1/agent/self")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

var probeClient = &http.Client{Timeout: time.Second}

// Agents is every member, servers first.
func (c *Cluster) Agents() []*Agent { return append(slices.Clone(c.Servers), c.Clients...) }

// Node is the agent's node name: "server-1", "client-2", ...
func (a *Agent) Node() string { return a.node }

// Running reports whether the agent's process runs and is not paused.
func (a *Agent) Running() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.proc != nil && !a.proc.Exited() && !a.paused
}

// Kill ends the agent with SIGKILL, as a crash or a power cut would; its
// data dir stays. Restart or RestartEmpty brings it back.
func (a *Agent) Kill() { a.Stop() }

// RestartEmpty starts a killed cluster member again with an empty data
// dir, as a host rebuilt from scratch: a client agent comes back with a new
// node ID and without the services and checks registered through its API.
func (a *Agent) RestartEmpty() {
	a.t.Helper()
	a.Stop()
	if a.dataDir == "" {
		a.t.Fatal("RestartEmpty: a dev agent has no data dir")
	}
	if err := os.RemoveAll(a.dataDir); err != nil {
		a.t.Fatal(err)
	}
	if err := os.MkdirAll(a.dataDir, 0o700); err != nil {
		a.t.Fatal(err)
	}
	if err := a.start(); err != nil {
		a.t.Fatal(err)
	}
}

// Pause stops the agent with SIGSTOP: its sockets stay open and its peers'
// connections hang, as behind a network partition, until Resume.
func (a *Agent) Pause() { a.signal(syscall.SIGSTOP, true) }

// Resume continues a paused agent (SIGCONT).
func (a *Agent) Resume() { a.signal(syscall.SIGCONT, false) }

func (a *Agent) signal(sig syscall.Signal, paused bool) {
	a.t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.proc == nil {
		a.t.Fatalf("%s: agent %s is not running", sig, a.node)
	}
	if err := a.proc.Signal(sig); err != nil {
		a.t.Fatal(err)
	}
	a.paused = paused
}

// raftAddr is the address Raft and Consul's status endpoints name a server
// by.
func (a *Agent) raftAddr() string {
	if !a.server {
		return ""
	}
	return net.JoinHostPort(a.ip, strconv.Itoa(a.ports[3]))
}

// Leader is the server every running server names as the Raft leader, or
// nil while they do not agree, name none, or name one that is down.
func (c *Cluster) Leader() *Agent {
	named := ""
	for _, s := range c.Servers {
		if !s.Running() {
			continue
		}
		l, err := status(s)
		if err != nil || l == "" || (named != "" && l != named) {
			return nil
		}
		named = l
	}
	for _, s := range c.Servers {
		if s.raftAddr() == named && s.Running() {
			return s
		}
	}
	return nil
}

// status asks a server whom it follows, with a bound: a server whose
// leader has been paused may take long to answer.
func status(s *Agent) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return s.Client.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
}

// WaitLeader waits until the running servers agree on a running leader and
// returns it.
func (c *Cluster) WaitLeader(t testing.TB, timeout time.Duration) *Agent {
	t.Helper()
	var l *Agent
	WaitFor(t, timeout, "a Raft leader every running server names", func() bool {
		l = c.Leader()
		return l != nil
	})
	return l
}

// WaitHealthy waits until every member runs, the servers agree on a
// leader, every server is a healthy voter (autopilot's view: the cluster
// again tolerates the loss of a minority), every member's node is in the
// catalog with serfHealth passing, and every client agent reaches the
// leader. After a fault this is the point from which the next one is
// independent of it.
func (c *Cluster) WaitHealthy(t testing.TB, timeout time.Duration) {
	t.Helper()
	var why error
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if why = c.healthy(); why == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("consul cluster not healthy after %s: %v", timeout, why)
		case <-tick.C:
		}
	}
}

func (c *Cluster) healthy() error {
	for _, a := range c.Agents() {
		if !a.Running() {
			return fmt.Errorf("%s is not running", a.node)
		}
	}
	leader := c.Leader()
	if leader == nil {
		return errors.New("no leader every server agrees on")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	q := (&api.QueryOptions{}).WithContext(ctx)
	health, err := leader.Client.Operator().AutopilotServerHealth(q)
	if err != nil {
		return fmt.Errorf("autopilot: %w", err)
	}
	voters := 0
	for _, s := range health.Servers {
		if s.Voter && s.Healthy {
			voters++
		}
	}
	if !health.Healthy || voters != len(c.Servers) || health.FailureTolerance != (len(c.Servers)-1)/2 {
		return fmt.Errorf("autopilot: healthy %v, %d of %d servers healthy voters, failure tolerance %d", health.Healthy, voters, len(c.Servers), health.FailureTolerance)
	}
	checks, _, err := leader.Client.Health().State(api.HealthAny, q)
	if err != nil {
		return fmt.Errorf("health: %w", err)
	}
	serf := map[string]string{}
	for _, ch := range checks {
		if ch.CheckID == "serfHealth" {
			serf[ch.Node] = ch.Status
		}
	}
	for _, a := range c.Agents() {
		if serf[a.node] != api.HealthPassing {
			return fmt.Errorf("node %s: serfHealth %q", a.node, serf[a.node])
		}
	}
	for _, a := range c.Clients {
		if l, err := a.Client.Status().LeaderWithQueryOptions(q); err != nil || l != leader.raftAddr() {
			return fmt.Errorf("client %s names leader %q (%v), not %s", a.node, l, err, leader.raftAddr())
		}
	}
	return nil
}
