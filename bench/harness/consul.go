package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/child"
	"github.com/podedge/podedge/internal/freeport"
	"github.com/podedge/podedge/router"
)

// startConsul runs a Consul agent on free loopback ports, as
// Options.ConsulMode says, and waits until it has a leader and its node is
// in the catalog.
func (h *harness) startConsul(ctx context.Context) error {
	ports, err := freeport.Ports(4)
	if err != nil {
		return err
	}
	h.consulAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	node := fmt.Sprintf("bench-%d", ports[0])
	mode, err := h.consulModeArgs()
	if err != nil {
		return err
	}
	// Consul leaves cleanly on SIGINT; SIGTERM makes a server exit 1.
	p, err := h.startSpec(child.Spec{Name: "consul", CPUs: h.cpus.Client, Bin: h.opts.Consul, StopSignal: syscall.SIGINT, Args: append(append([]string{"agent"}, mode...),
		"-bind=127.0.0.1", "-client=127.0.0.1", "-log-level=warn",
		"-node="+node,
		"-http-port="+strconv.Itoa(ports[0]),
		"-serf-lan-port="+strconv.Itoa(ports[1]),
		"-serf-wan-port="+strconv.Itoa(ports[2]),
		"-server-port="+strconv.Itoa(ports[3]),
		"-dns-port=-1", "-grpc-port=-1",
		"-hcl=ports { grpc_tls = -1 }",
		"-hcl=disable_update_check = true",
		// Every reader of the bench comes from 127.0.0.1; on a platform
		// each edge and dnsd has its own address and Consul's 200
		// connections per client address would not bind them together.
		"-hcl=limits { http_max_conns_per_client = 2000 }",
	)})
	if err != nil {
		return err
	}
	h.consulProc = p
	cfg := api.DefaultConfig()
	cfg.Address = h.consulAddr
	if h.consul, err = api.NewClient(cfg); err != nil {
		return fmt.Errorf("consul client: %w", err)
	}
	return h.waitFor(ctx, time.Minute, "consul to elect itself leader", func() bool {
		leader, err := h.consul.Status().Leader()
		if err != nil || leader == "" {
			return false
		}
		n, _, err := h.consul.Catalog().Node(node, nil)
		return err == nil && n != nil
	}, p)
}

// consulModeArgs are the agent's arguments for Options.ConsulMode. A dev
// agent pretty-prints every answer (json.MarshalIndent, in Consul's
// agent/http.go): a whole folder of a million tenants is 380 MB instead
// of 230 MB, and takes it longer to build. A server answers compact JSON,
// as production Consul does; its Raft log and snapshots go to a tmpfs, as
// a dev agent keeps them in memory, and its Raft timing is the dev
// agent's (raft_multiplier 1), so that it elects itself in a second.
func (h *harness) consulModeArgs() ([]string, error) {
	if h.opts.ConsulMode != ConsulServer {
		return []string{"-dev"}, nil
	}
	parent := ""
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		parent = "/dev/shm"
	}
	dir, err := os.MkdirTemp(parent, "podedge-bench-consul-")
	if err != nil {
		return nil, fmt.Errorf("consul data folder: %w", err)
	}
	h.consulData = dir
	return []string{"-server", "-bootstrap-expect=1", "-data-dir=" + dir, "-hcl=performance { raft_multiplier = 1 }"}, nil
}

// txnOps is the number of operations in one Consul transaction: Consul
// refuses more than 64 (128 from 1.20 on, but 64 works with every version
// the project supports).
const txnOps = 64

// txnWorkers is how many transactions are in flight at once. With a dev
// agent on loopback, 8 writes 100,000 keys about as fast as 16 or 32 and
// much faster than 1 (bench/README.md has the figures).
const txnWorkers = 8

// putTenants writes tenants under prefix in transactions of txnOps sets,
// txnWorkers at a time.
func putTenants(ctx context.Context, c *api.Client, prefix string, tenants []router.Tenant) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := make(chan []router.Tenant)
	errc := make(chan error, txnWorkers)
	var wg sync.WaitGroup
	for range txnWorkers {
		wg.Go(func() {
			for batch := range batches {
				ops := make(api.KVTxnOps, 0, len(batch))
				for _, t := range batch {
					v, err := json.Marshal(t)
					if err != nil {
						errc <- err
						cancel()
						return
					}
					ops = append(ops, &api.KVTxnOp{Verb: api.KVSet, Key: prefix + "tenants/" + t.Name, Value: v})
				}
				ok, resp, _, err := c.KV().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
				if err == nil && !ok {
					err = fmt.Errorf("transaction rolled back: %v", resp.Errors)
				}
				if err != nil {
					errc <- fmt.Errorf("write tenants: %w", err)
					cancel()
					return
				}
			}
		})
	}
send:
	for i := 0; i < len(tenants); i += txnOps {
		select {
		case batches <- tenants[i:min(i+txnOps, len(tenants))]:
		case <-ctx.Done():
			break send
		}
	}
	close(batches)
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return ctx.Err()
	}
}

// putJSON writes v as JSON at key.
func putJSON(c *api.Client, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := c.KV().Put(&api.KVPair{Key: key, Value: raw}, nil); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}

// registerEdge registers an edge instance that only DNS sees: passing, in
// pod, handing out publicIP.
func registerEdge(c *api.Client, id, pod, publicIP string, port int) error {
	err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: id, Name: "edge", Address: "127.0.0.1", Port: port,
		Meta:  map[string]string{"pod": pod, "public_ip": publicIP},
		Check: &api.AgentServiceCheck{CheckID: "ttl-" + id, TTL: "24h", Status: api.HealthPassing},
	})
	if err != nil {
		return fmt.Errorf("register edge %s: %w", id, err)
	}
	return nil
}

// passing returns the number of passing instances of service.
func passing(c *api.Client, service string) int {
	entries, _, err := c.Health().Service(service, "", true, nil)
	if err != nil {
		return -1
	}
	return len(entries)
}

// freeAddr returns one free "127.0.0.1:port".
func freeAddr() (string, error) {
	p, err := freeport.Ports(1)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p[0])), nil
}
