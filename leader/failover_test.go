package leader

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/podedge/podedge/internal/consultest"
	"github.com/podedge/podedge/internal/retry"
)

// failoverBound is what a failover may take in this test: the check TTL
// (1s) plus Consul's and the replicas' reaction, with room for a loaded
// machine. It is far below the 20s a session TTL alone would take, so
// passing proves the check, not the TTL, frees a dead leader's lock.
const failoverBound = 5 * time.Second

// cluster is a set of replica processes, replaced as they are killed.
type cluster struct {
	t     *testing.T
	bin   string
	agent *consultest.Agent
	mu    sync.Mutex
	procs []*proc
}

func (c *cluster) live() []*proc {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*proc
	for _, p := range c.procs {
		if !p.Exited() {
			out = append(out, p)
		}
	}
	return out
}

// signer signs tenants up without pause through every live replica, as
// clients would while leadership changes hands. A sign-up whose answer is
// lost (the replica died, or answered 503) is retried under the same name
// until it is answered 201, or 409 because the earlier attempt committed.
type signer struct {
	c      *cluster
	placed map[string]string // name → pod answered with 201
	late   map[string]bool   // names answered 409 on a retry: an earlier attempt committed
	tried  int
	acked  atomic.Int64 // sign-ups answered 201 so far
}

func (s *signer) run(ctx context.Context) {
	for i := 0; ctx.Err() == nil; i++ {
		name := fmt.Sprintf("bg-%04d", i)
		s.tried++
		retried := false
		for ctx.Err() == nil {
			live := s.c.live()
			p := live[i%len(live)]
			code, out, err := tryCall("POST", p.url+"/v1/tenants", fmt.Sprintf(`{"name":%q,"lat":%v,"lon":%v}`, name, dublin[0], dublin[1]))
			if err == nil && code == 201 {
				s.placed[name] = out["pod"].(string)
				s.acked.Add(1)
				break
			}
			if err == nil && code == 409 && retried {
				s.late[name] = true
				break
			}
			if err == nil && code != 503 {
				s.c.t.Errorf("%s: unexpected %d %v", name, code, out)
				return
			}
			retried = true
			retry.Sleep(ctx, 5*time.Millisecond) // pacing retries, as a client would
		}
	}
}

// TestFailover kills the active replica with SIGKILL, again and again, while
// sign-ups keep coming, and measures the time from the kill to the first
// sign-up that succeeds through a surviving replica. Nothing acknowledged
// may be lost and no pod may be filled past its capacity.
// PODEDGE_FAILOVER_RUNS sets the number of kills (default 5) and
// PODEDGE_FAILOVER_CHECK_TTL the replicas' election.check_ttl (default 1s).
func TestFailover(t *testing.T) {
	runs := 5
	if v := os.Getenv("PODEDGE_FAILOVER_RUNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("PODEDGE_FAILOVER_RUNS=%q", v)
		}
		runs = n
	}
	args := []string{}
	if ttl := os.Getenv("PODEDGE_FAILOVER_CHECK_TTL"); ttl != "" {
		path := filepath.Join(t.TempDir(), "leader.yaml")
		if err := os.WriteFile(path, []byte("election:\n  check_ttl: "+ttl+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-config", path)
	}
	agent := consultest.Start(t) // first: it skips under -short
	c := &cluster{t: t, bin: buildLeader(t), agent: agent}
	start := func() *proc { return startProc(t, c.bin, append([]string{"-consul", c.agent.HTTPAddr}, args...)...) }
	for range 3 {
		c.procs = append(c.procs, start())
	}
	var lead *proc
	consultest.WaitFor(t, 15*time.Second, "a leader all replicas agree on", func() bool {
		lead = leaderOf(c.procs)
		return lead != nil
	})
	// A small pod near the sign-ups fills up while leaders die; the rest
	// go to a big one.
	expect(t, 201, "PUT", lead.url+"/v1/pods/dublin", podBody(dublin, 3), "")
	expect(t, 201, "PUT", lead.url+"/v1/pods/frankfurt", podBody(frankfurt, 100000), "")
	edges(t, c.agent, "dublin", "frankfurt")
	consultest.WaitFor(t, 10*time.Second, "edges in every view", func() bool {
		for _, p := range c.live() {
			_, out, _ := tryCall("GET", p.url+"/v1/pods/frankfurt")
			if out["healthy_edges"] != 1.0 {
				return false
			}
		}
		return true
	})

	ctx, stop := context.WithCancel(context.Background())
	bg := &signer{c: c, placed: map[string]string{}, late: map[string]bool{}}
	var wg sync.WaitGroup
	wg.Go(func() { bg.run(ctx) })

	var took []time.Duration
	probed, probedLate := map[string]string{}, map[string]bool{}
	for run := range runs {
		var lead *proc
		consultest.WaitFor(t, 15*time.Second, "a leader all replicas agree on", func() bool {
			lead = leaderOf(c.live())
			return lead != nil
		})
		killed := time.Now()
		_ = lead.Signal(syscall.SIGKILL)
		lead.wait(t, 5*time.Second)

		// The first sign-up through a survivor that succeeds ends the
		// failover. Survivors are asked in turn every 5ms.
		var first time.Time
		probe := time.NewTicker(5 * time.Millisecond)
		for i := 0; first.IsZero(); i++ {
			if time.Since(killed) > 3*failoverBound {
				t.Fatalf("run %d: no write accepted %s after the leader was killed", run, time.Since(killed))
			}
			live := c.live()
			p := live[i%len(live)]
			code, out, err := tryCall("POST", p.url+"/v1/tenants", fmt.Sprintf(`{"name":"fo-%d","lat":%v,"lon":%v}`, run, dublin[0], dublin[1]))
			switch {
			case err == nil && code == 201:
				first = time.Now()
				probed[fmt.Sprintf("fo-%d", run)] = out["pod"].(string)
			case err == nil && code == 409:
				// An earlier attempt committed, its answer lost.
				first = time.Now()
				probedLate[fmt.Sprintf("fo-%d", run)] = true
			default:
				<-probe.C
			}
		}
		probe.Stop()
		took = append(took, first.Sub(killed))
		if now := leaderOf(c.live()); now == lead {
			t.Fatalf("run %d: the killed replica still leads", run)
		}
		// Three replicas again for the next run, and sign-ups flowing
		// through the new leader before it is killed in turn.
		c.mu.Lock()
		c.procs = append(c.procs, start())
		c.mu.Unlock()
		acked := bg.acked.Load()
		consultest.WaitFor(t, 10*time.Second, "background sign-ups through the new leader", func() bool {
			return bg.acked.Load() >= acked+20
		})
	}
	stop()
	wg.Wait()
	maps.Copy(bg.placed, probed)
	maps.Copy(bg.late, probedLate)

	sorted := slices.Clone(took)
	slices.Sort(sorted)
	median := sorted[len(sorted)/2]
	if len(sorted)%2 == 0 {
		median = (sorted[len(sorted)/2-1] + sorted[len(sorted)/2]) / 2
	}
	t.Logf("failover over %d SIGKILLs (kill to first accepted sign-up): median %v, max %v, all %v",
		runs, median.Round(time.Millisecond), sorted[len(sorted)-1].Round(time.Millisecond), roundAll(took))
	t.Logf("background sign-ups: %d tried, %d answered 201, %d committed with a lost answer", bg.tried, len(bg.placed), len(bg.late))
	if max := sorted[len(sorted)-1]; max > failoverBound {
		t.Errorf("a failover took %v, more than %v", max, failoverBound)
	}

	// Nothing acknowledged was lost, nothing unacknowledged appeared, no pod
	// went past its capacity and the seat counts are exact. Only the last,
	// interrupted sign-up may have committed unseen.
	checkStored(t, c.agent, bg.placed, bg.late, map[string]bool{fmt.Sprintf("bg-%04d", bg.tried-1): true})
	if n := tenantsByPod(t, c.agent)["dublin"]; n != 3 {
		t.Errorf("dublin holds %d tenants, want exactly its 3 seats", n)
	}
	checkSeats(t, c.agent)
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}
