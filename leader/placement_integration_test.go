package leader

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/consultest"
)

// TestPlacementOnCities signs tenants up from real cities through a
// standby and checks the rule end to end: edge health from Consul, seat
// counts from KV.
func TestPlacementOnCities(t *testing.T) {
	agent := consultest.Start(t)
	rs := startCluster(t, agent, 2)
	sb := standby(t, rs)
	pods := map[string][2]float64{"dublin": dublin, "london": london, "frankfurt": frankfurt, "new-york": newYork, "sydney": sydney}
	capacity := map[string]int{"dublin": 2, "london": 2, "frankfurt": 10, "new-york": 10, "sydney": 10}
	for name, at := range pods {
		expect(t, 201, "PUT", sb.url+"/v1/pods/"+name, podBody(at, capacity[name]), "")
	}
	edges(t, agent, "dublin", "london", "frankfurt", "new-york", "sydney")
	// A registered pod with no edge at all.
	expect(t, 201, "PUT", sb.url+"/v1/pods/no-edge", podBody(dublin, 100), "")
	for name := range pods {
		waitEdges(t, rs, name, 1)
	}

	n := 0
	signup := func(at [2]float64) string {
		t.Helper()
		n++
		out := expect(t, 201, "POST", sb.url+"/v1/tenants", signupBody(fmt.Sprintf("t%d", n), at), "")
		return out["pod"].(string)
	}
	steps := []struct {
		why  string
		at   [2]float64
		want string
	}{
		{"nearest, as London (464 km) is near but no less used", dublin, "dublin"},
		{"near but less used", dublin, "london"},
		{"usage ties again, nearest wins", dublin, "dublin"},
		{"Dublin full: London", dublin, "london"},
		{"Dublin and London full: the next nearest", dublin, "frankfurt"},
		{"from New York", newYork, "new-york"},
		{"from Sydney", sydney, "sydney"},
		{"from London with both near pods full", london, "frankfurt"},
	}
	for _, s := range steps {
		if got := signup(s.at); got != s.want {
			t.Fatalf("%s: placed in %s, want %s", s.why, got, s.want)
		}
	}

	// New York's only edge fails: its tenants go elsewhere until it passes.
	agent.SetStatus(t, "edge-new-york", api.HealthCritical)
	waitEdges(t, rs, "new-york", 0)
	if got := signup(newYork); got == "new-york" {
		t.Fatal("placed in a pod without a passing edge")
	} else if got != "frankfurt" {
		t.Fatalf("from New York without its edge: %s, want frankfurt (the nearest eligible)", got)
	}
	agent.SetStatus(t, "edge-new-york", api.HealthWarning)
	consultest.WaitFor(t, 5*time.Second, "warning edge seen", func() bool {
		for _, r := range rs {
			if p := r.srv.router.Snapshot().Pod("new-york"); p == nil || p.Edges[0].Passing || len(p.Edges) != 1 {
				return false
			}
		}
		return true
	})
	if got := signup(newYork); got == "new-york" {
		t.Fatal("placed in a pod whose only edge is warning")
	}
	agent.SetStatus(t, "edge-new-york", api.HealthPassing)
	waitEdges(t, rs, "new-york", 1)
	if got := signup(newYork); got != "new-york" {
		t.Fatalf("edge passing again: placed in %s", got)
	}
	if c := tenantsByPod(t, agent); c["no-edge"] != 0 {
		t.Fatalf("pod without edges got %d tenants", c["no-edge"])
	}
	checkSeats(t, agent)
}

// TestConcurrentSignups: 30 sign-ups at once, spread over three replicas,
// against a pod with 5 seats: exactly 5 land there and every one is
// answered and accounted for.
func TestConcurrentSignups(t *testing.T) {
	for _, c := range []struct {
		name     string
		fallback bool // a far pod with room for the rest
	}{{"rest go elsewhere", true}, {"rest refused", false}} {
		t.Run(c.name, func(t *testing.T) {
			agent := consultest.Start(t)
			rs := startCluster(t, agent, 3)
			expect(t, 201, "PUT", rs[0].url+"/v1/pods/dublin", podBody(dublin, 5), "")
			edges(t, agent, "dublin", "frankfurt")
			if c.fallback {
				expect(t, 201, "PUT", rs[0].url+"/v1/pods/frankfurt", podBody(frankfurt, 100), "")
			}
			waitEdges(t, rs, "dublin", 1)

			const total = 30
			type answer struct {
				code int
				pod  string
				err  string
			}
			answers := make([]answer, total)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range total {
				wg.Go(func() {
					<-start
					r := rs[i%len(rs)]
					code, out, _ := call(t, "POST", r.url+"/v1/tenants", signupBody(fmt.Sprintf("t%02d", i), dublin))
					a := answer{code: code}
					a.pod, _ = out["pod"].(string)
					a.err, _ = out["error"].(string)
					answers[i] = a
				})
			}
			close(start)
			wg.Wait()

			byCode := map[int]int{}
			byPod := map[string]int{}
			for i, a := range answers {
				byCode[a.code]++
				switch a.code {
				case 201:
					byPod[a.pod]++
				case 503:
					if a.err != "no pod has a free seat and a passing edge" {
						t.Errorf("t%02d: 503 %q", i, a.err)
					}
				default:
					t.Errorf("t%02d: unexpected %d %q", i, a.code, a.err)
				}
			}
			t.Logf("answers by status %v, placed by pod %v", byCode, byPod)
			if byPod["dublin"] != 5 {
				t.Fatalf("%d sign-ups answered as placed in dublin, want exactly 5", byPod["dublin"])
			}
			if c.fallback && (byCode[201] != total || byPod["frankfurt"] != total-5) {
				t.Fatalf("with room elsewhere every sign-up must land: %v", byPod)
			}
			if !c.fallback && byCode[503] != total-5 {
				t.Fatalf("without room elsewhere %d refusals, want %d", byCode[503], total-5)
			}
			// What was answered is what is stored: none lost, none extra.
			stored := tenantsByPod(t, agent)
			if fmt.Sprint(stored) != fmt.Sprint(byPod) {
				t.Fatalf("stored per pod %v, answered %v", stored, byPod)
			}
			checkSeats(t, agent)
		})
	}
}

// TestCordon: a pod PUT with "accepting": false takes no new tenant, by
// sign-up or by move, while its tenants stay served; every replica shows it
// cordoned; PUT accepting again, it takes tenants again.
func TestCordon(t *testing.T) {
	agent := consultest.Start(t)
	rs := startCluster(t, agent, 2)
	lead, sb := waitLeader(t, rs), standby(t, rs)
	edges(t, agent, "dublin", "london")
	waitEdges(t, rs, "dublin", 1)
	waitEdges(t, rs, "london", 1)
	expect(t, 201, "PUT", sb.url+"/v1/pods/dublin", podBody(dublin, 10), "")
	expect(t, 201, "PUT", sb.url+"/v1/pods/london", podBody(london, 10), "")
	if out := expect(t, 201, "POST", sb.url+"/v1/tenants", signupBody("before", dublin), ""); out["pod"] != "dublin" {
		t.Fatalf("before the cordon: placed in %v", out["pod"])
	}
	if out := expect(t, 201, "POST", sb.url+"/v1/tenants", signupBody("mover", london), ""); out["pod"] != "london" {
		t.Fatalf("from London: placed in %v", out["pod"])
	}

	code, out, idx := callIndexed(t, "PUT", sb.url+"/v1/pods/dublin", `{"region":"test","lat":53.3498,"lon":-6.2603,"capacity":10,"accepting":false}`)
	if code != 200 || out["accepting"] != false {
		t.Fatalf("PUT accepting false: %d %v", code, out)
	}
	if got := kv(t, agent)["podedge/pods/dublin"]; !strings.Contains(got, `"accepting":false`) {
		t.Fatalf("stored pod %s", got)
	}
	for _, r := range rs {
		code, out, _ := callIndexed(t, "GET", fmt.Sprintf("%s/v1/pods/dublin?index=%d", r.url, idx), nil)
		if code != 200 || out["accepting"] != false {
			t.Fatalf("GET cordoned pod on %s: %d %v", r.addr, code, out)
		}
		_, list, _ := callIndexed(t, "GET", r.url+"/v1/pods", nil)
		if s := fmt.Sprint(list["pods"]); !strings.Contains(s, "accepting:false") || !strings.Contains(s, "accepting:true") {
			t.Fatalf("GET /v1/pods on %s: %s", r.addr, s)
		}
	}
	for i := range 3 {
		if out := expect(t, 201, "POST", rs[i%2].url+"/v1/tenants", signupBody(fmt.Sprintf("after%d", i), dublin), ""); out["pod"] != "london" {
			t.Fatalf("from Dublin with Dublin cordoned: placed in %v", out["pod"])
		}
	}
	expect(t, 409, "POST", sb.url+"/v1/tenants/mover/move", `{"pod":"dublin"}`, `pod "dublin" is cordoned (accepting is false)`)
	// Its tenants stay served: routed, and moved out on request.
	for _, r := range rs {
		if rt, ok := r.srv.router.Snapshot().LookupString("before.example.test"); !ok || rt.Pod.Name != "dublin" || len(rt.Pod.PassingEdges) != 1 {
			t.Fatalf("tenant of the cordoned pod not routed on %s", r.addr)
		}
	}
	expect(t, 200, "GET", lead.url+"/v1/tenants/before", nil, "")
	expect(t, 200, "POST", lead.url+"/v1/tenants/before/move", `{"pod":"london"}`, "")

	// Every seat elsewhere taken: a cordoned pod still takes no one.
	expect(t, 200, "PUT", lead.url+"/v1/pods/london", podBody(london, 5), "")
	expect(t, 503, "POST", sb.url+"/v1/tenants", signupBody("nowhere", dublin), "no pod has a free seat")

	// Accepting again (the field omitted means true).
	expect(t, 200, "PUT", sb.url+"/v1/pods/dublin", podBody(dublin, 10), "")
	if got := kv(t, agent)["podedge/pods/dublin"]; strings.Contains(got, "accepting") {
		t.Fatalf("stored pod %s", got)
	}
	if out := expect(t, 201, "POST", sb.url+"/v1/tenants", signupBody("reopened", dublin), ""); out["pod"] != "dublin" {
		t.Fatalf("after reopening: placed in %v", out["pod"])
	}
	expect(t, 200, "POST", sb.url+"/v1/tenants/mover/move", `{"pod":"dublin"}`, "")
	checkSeats(t, agent)
}

// TestBatchedSignups: sign-ups that arrive at once on one replica are
// written together; within a batch, and against what is stored, a name or
// a domain is still given once, every sign-up gets its own answer, and what
// is answered is what is stored.
func TestBatchedSignups(t *testing.T) {
	agent := consultest.Start(t)
	rs := startCluster(t, agent, 1)
	lead := rs[0]
	expect(t, 201, "PUT", lead.url+"/v1/pods/dublin", podBody(dublin, 1000), "")
	edges(t, agent, "dublin")
	waitEdges(t, rs, "dublin", 1)
	expect(t, 201, "POST", lead.url+"/v1/tenants", signupBody("n00", dublin), "")

	const total = 64
	codes := make([]int, total)
	indexes := make([]string, total)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range total {
		wg.Go(func() {
			<-start
			// Every name twice, n00 stored already; every fourth sign-up
			// claims the shared domain.
			body := signupBody(fmt.Sprintf("n%02d", i/2), dublin)
			if i%4 == 1 {
				body = signupBody(fmt.Sprintf("n%02d", i/2), dublin, "shared.example.com")
			}
			raw, _ := json.Marshal(body)
			req, err := newRequest("POST", lead.url+"/v1/tenants", string(raw))
			if err != nil {
				t.Error(err)
				return
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			codes[i], indexes[i] = resp.StatusCode, resp.Header.Get("X-Podedge-Index")
		})
	}
	close(start)
	wg.Wait()
	created := map[string]int{}
	for i, c := range codes {
		name := fmt.Sprintf("n%02d", i/2)
		switch c {
		case 201:
			created[name]++
			if indexes[i] == "" || indexes[i] == "0" {
				t.Errorf("sign-up %d answered 201 without its index", i)
			}
		case 409:
		default:
			t.Errorf("sign-up %d of %s: %d", i, name, c)
		}
	}
	for name, n := range created {
		if n != 1 || name == "n00" {
			t.Errorf("%s created %d times", name, n)
		}
	}
	if len(created) != total/2-1 {
		t.Errorf("%d names created, want %d", len(created), total/2-1)
	}
	stored := kv(t, agent)
	owners := 0
	for k, v := range stored {
		if name, ok := strings.CutPrefix(k, "podedge/tenants/"); ok && name != "n00" && created[name] != 1 {
			t.Errorf("%s is stored but was not answered 201", name)
		}
		if strings.Contains(v, "shared.example.com") && strings.HasPrefix(k, "podedge/tenants/") {
			owners++
		}
	}
	if owners > 1 {
		t.Errorf("%d tenants hold the shared domain", owners)
	}
	checkSeats(t, agent)
}
