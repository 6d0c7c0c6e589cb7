// Package consultest starts real Consul for integration tests, on free
// loopback ports, and stops it when the test ends: a dev agent (Start), or
// a cluster of servers and client agents (StartCluster) whose members a
// test kills, restarts, empties and pauses.
//
// The binary is $PODEDGE_CONSUL, else `consul` on PATH (`make consul` builds
// one and `make test` puts it there). Without one the test fails; it is
// skipped only under `go test -short`.
package consultest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/child"
	"github.com/podedge/podedge/internal/freeport"
)

// Agent is a running Consul agent: a dev agent (Start) or a member of a
// Cluster.
type Agent struct {
	// HTTPAddr is the agent's HTTP API, "127.0.0.1:port".
	HTTPAddr string
	// Client talks to the agent.
	Client *api.Client

	t       testing.TB
	bin     string
	args    []string
	node    string
	dataDir string // "" for a dev agent, which keeps nothing
	// A cluster member's address, its ports (HTTP, serf LAN, serf WAN,
	// server RPC) and its serf LAN address, which the others join.
	ip       string
	ports    []int
	serfAddr string
	server   bool
	// ready reports whether a started agent is ready for the test.
	ready func() bool

	mu     sync.Mutex
	proc   *child.Process
	paused bool
	out    *SyncBuffer // every run's output, printed if the test fails
}

// Binary returns the Consul binary to run, or an error saying how to get one.
func Binary() (string, error) {
	if p := os.Getenv("PODEDGE_CONSUL"); p != "" {
		return p, nil
	}
	p, err := exec.LookPath("consul")
	if err != nil {
		return "", fmt.Errorf("no consul binary: run `make consul` and put it on PATH (make test does), or set PODEDGE_CONSUL")
	}
	return p, nil
}

// Start runs a dev agent on free loopback ports and waits until it has a
// leader and its node is registered. It is stopped by t.Cleanup. A port
// taken between being picked and being bound (another test's agent, say)
// makes it try again with other ports.
func Start(t testing.TB) *Agent {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		if testing.Short() {
			t.Skip(err.Error())
		}
		t.Fatal(err)
	}
	a := newAgent(t, bin)
	a.ready = a.devReady
	for attempt := 1; ; attempt++ {
		a.usePorts(FreePorts(t, 4))
		err := a.start()
		if err == nil {
			return a
		}
		if !errors.Is(err, errPortTaken) || attempt == 5 {
			t.Fatal(err)
		}
		t.Logf("consul: %v; trying other ports", err)
	}
}

// newAgent is an agent not yet started, killed when the test ends; its
// output is printed then if the test failed.
func newAgent(t testing.TB, bin string) *Agent {
	a := &Agent{t: t, bin: bin, out: &SyncBuffer{}}
	t.Cleanup(func() {
		a.Stop()
		if t.Failed() {
			t.Logf("output of consul agent %s:\n%s", a.node, a.out.String())
		}
	})
	return a
}

// devReady: a dev agent is ready once it has elected itself and its node
// is in the catalog (services registered through it need that first).
func (a *Agent) devReady() bool {
	leader, err := a.Client.Status().Leader()
	if err != nil || leader == "" {
		return false
	}
	n, _, err := a.Client.Catalog().Node(a.node, nil)
	return err == nil && n != nil
}

// usePorts points the agent's command line and client at ports (HTTP, serf
// LAN, serf WAN, server RPC).
func (a *Agent) usePorts(ports []int) {
	a.HTTPAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	a.node = fmt.Sprintf("test-%d", ports[0])
	a.args = []string{
		"agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1",
		"-log-level=warn",
		"-node=" + a.node,
		"-http-port=" + strconv.Itoa(ports[0]),
		"-serf-lan-port=" + strconv.Itoa(ports[1]),
		"-serf-wan-port=" + strconv.Itoa(ports[2]),
		"-server-port=" + strconv.Itoa(ports[3]),
		"-dns-port=-1", "-grpc-port=-1",
		"-hcl=ports { grpc_tls = -1 }",
		"-hcl=disable_update_check = true",
	}
	a.setClient()
}

// setClient points Client at HTTPAddr.
func (a *Agent) setClient() {
	cfg := api.DefaultConfig()
	cfg.Address = a.HTTPAddr
	client, err := api.NewClient(cfg)
	if err != nil {
		panic(err) // only a malformed address can fail, and this one is not
	}
	a.Client = client
}

var errPortTaken = errors.New("a port was taken")

// start runs the agent and waits until it is ready.
func (a *Agent) start() error {
	a.mu.Lock()
	fmt.Fprintf(a.out, "--- %s starting\n", time.Now().Format(time.StampMilli))
	mark := len(a.out.String()) // this run's output starts here
	// The agent dies with the test binary, even when the test panics.
	proc, err := child.Start(child.Spec{Name: "consul", LogDir: a.t.TempDir(), Bin: a.bin, Args: a.args, Stdout: a.out, Stderr: a.out})
	if err != nil {
		a.mu.Unlock()
		return fmt.Errorf("start consul: %w", err)
	}
	a.proc, a.paused = proc, false
	a.mu.Unlock()

	deadline := time.Now().Add(60 * time.Second)
	for !a.ready() {
		select {
		case <-proc.Done():
			a.mu.Lock()
			a.proc = nil
			a.mu.Unlock()
			out := a.out.String()[mark:]
			if strings.Contains(out, "address already in use") {
				return fmt.Errorf("%w: %s", errPortTaken, lastLine(out))
			}
			return fmt.Errorf("consul agent %s exited before it was ready:\n%s", a.node, out)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("consul agent %s was not ready after 60s:\n%s", a.node, a.out.String()[mark:])
		}
	}
	return nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// Stop kills the agent (SIGKILL, as a crash would) and waits for it to
// exit. It is safe to call twice.
func (a *Agent) Stop() {
	a.mu.Lock()
	proc := a.proc
	a.proc, a.paused = nil, false
	a.mu.Unlock()
	if proc == nil {
		return
	}
	proc.Kill()
}

// Restart starts a stopped agent again on the same ports and data dir. A
// dev agent keeps nothing: the new one starts empty, with its indexes from
// zero.
func (a *Agent) Restart() {
	a.t.Helper()
	a.Stop()
	if err := a.start(); err != nil {
		a.t.Fatal(err)
	}
}

// FreePorts returns n distinct ports that were free on 127.0.0.1 for both
// TCP and UDP a moment ago, or fails the test.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	ports, err := freeport.Ports(n)
	if err != nil {
		t.Fatal(err)
	}
	return ports
}

// WaitFor polls cond every 20ms until it is true or timeout passes, then
// fails the test with what. It is the tests' way to synchronise on Consul's
// eventual effects without sleeping.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		case <-tick.C:
		}
	}
}

// SyncBuffer is a bytes.Buffer safe for concurrent use: a child process's
// output written by exec's copying goroutine while a test reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p to the buffer.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what has been written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Register registers svc through the agent with one TTL check, "ttl-<ID>",
// starting in status (api.HealthPassing, ...). SetStatus changes it later.
func (a *Agent) Register(t testing.TB, svc *api.AgentServiceRegistration, status string) {
	t.Helper()
	svc.Check = &api.AgentServiceCheck{CheckID: "ttl-" + svc.ID, TTL: "1h", Status: status}
	if err := a.Client.Agent().ServiceRegister(svc); err != nil {
		t.Fatalf("register %s: %v", svc.ID, err)
	}
}

// SetStatus sets the TTL check of the service registered as id.
func (a *Agent) SetStatus(t testing.TB, id, status string) {
	t.Helper()
	if err := a.Client.Agent().UpdateTTL("ttl-"+id, "set by test", status); err != nil {
		t.Fatalf("set %s %s: %v", id, status, err)
	}
}

// App registers an instance of the "app" service in pod at addr:port.
func (a *Agent) App(t testing.TB, id, pod, addr string, port int, status string) {
	t.Helper()
	a.Register(t, &api.AgentServiceRegistration{
		ID: id, Name: "app", Address: addr, Port: port,
		Meta: map[string]string{"pod": pod},
	}, status)
}

// Edge registers an instance of the "edge" service in pod, listening on
// addr:port and handed out by DNS as publicIP.
func (a *Agent) Edge(t testing.TB, id, pod, addr string, port int, publicIP, status string) {
	t.Helper()
	a.Register(t, &api.AgentServiceRegistration{
		ID: id, Name: "edge", Address: addr, Port: port,
		Meta: map[string]string{"pod": pod, "public_ip": publicIP},
	}, status)
}

// Put writes a KV value.
func (a *Agent) Put(t testing.TB, key, value string) {
	t.Helper()
	if _, err := a.Client.KV().Put(&api.KVPair{Key: key, Value: []byte(value)}, nil); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}
