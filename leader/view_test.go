package leader

import (
	"fmt"
	"sync"
	"testing"

	"github.com/podedge/podedge/internal/consultest"
	"github.com/podedge/podedge/router"
)

// TestViewNeverLosesAPod: a pod registered just before a burst of sign-ups
// fills it. No replica may ever publish a view in which tenants live in a
// pod it does not show as registered: the replica that placed them
// answered GET /v1/pods/<pod> with 404 while its view held the tenants but
// not yet the pod. The first pod is registered into an empty pods/ folder,
// whose blocking query wakes at every write anywhere in KV and then sleeps
// view_min_wait; the next ones right after another pod's change, while the
// pods query sleeps.
func TestViewNeverLosesAPod(t *testing.T) {
	agent := consultest.Start(t)
	rs := startCluster(t, agent, 2)
	lead := waitLeader(t, rs)
	edges(t, agent, "tiny-0", "tiny-1", "tiny-2", "sydney")
	waitEdges(t, rs, "sydney", 1)

	var mu sync.Mutex
	var torn []string
	for i, r := range rs {
		r.srv.router.Subscribe(func(s *router.Snapshot) {
			for _, ps := range s.Pods() {
				if ps.Tenants > 0 && !ps.Registered {
					mu.Lock()
					torn = append(torn, fmt.Sprintf("replica %d: a view at index %d holds %d tenants in pod %s but not the pod", i, s.Index, ps.Tenants, ps.Name))
					mu.Unlock()
				}
			}
		})
	}

	for round := range 3 {
		tiny := fmt.Sprintf("tiny-%d", round)
		if round > 0 {
			// A change of pods: its query now sleeps view_min_wait.
			expect(t, 200, "PUT", rs[round%2].url+"/v1/pods/sydney", podBody(sydney, 1000+round), "")
		} else {
			expect(t, 201, "PUT", rs[0].url+"/v1/pods/sydney", podBody(sydney, 1000), "")
		}
		expect(t, 201, "PUT", rs[1].url+"/v1/pods/"+tiny, podBody(dublin, 5), "")
		var wg sync.WaitGroup
		placed := make([]string, 30)
		for i := range placed {
			wg.Go(func() {
				_, out, _ := call(t, "POST", rs[i%2].url+"/v1/tenants", signupBody(fmt.Sprintf("r%d-t%02d", round, i), dublin))
				placed[i], _ = out["pod"].(string)
			})
		}
		wg.Wait()
		n := 0
		for _, p := range placed {
			if p == tiny {
				n++
			}
		}
		if n != 5 {
			t.Fatalf("round %d: %d sign-ups placed in %s, want 5: %v", round, n, tiny, placed)
		}
		consultest.WaitFor(t, 5e9, tiny+" full in the leader's view", func() bool {
			p := lead.srv.router.Snapshot().Pod(tiny)
			return p != nil && p.Tenants == 5
		})
		out := expect(t, 200, "GET", lead.url+"/v1/pods/"+tiny, nil, "")
		if out["tenants"] != 5.0 {
			t.Fatalf("GET %s on the leader: %v", tiny, out)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, s := range torn {
		t.Error(s)
	}
}
