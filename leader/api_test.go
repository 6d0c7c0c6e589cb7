package leader

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/consultest"
)

// TestAPI drives every call of the API through three replicas, writes
// mostly through standbys, and checks every answer and what reached KV.
func TestAPI(t *testing.T) {
	agent := consultest.Start(t)
	rs := startCluster(t, agent, 3, func(c *Config) { c.MaxDomains = 3; c.MaxBodyBytes = 1024 })
	lead := waitLeader(t, rs)
	sb := standby(t, rs)
	edges(t, agent, "dublin", "london")
	waitEdges(t, rs, "dublin", 1)

	t.Run("leader", func(t *testing.T) {
		leaders := 0
		for _, r := range rs {
			out := expect(t, 200, "GET", r.url+"/v1/leader", nil, "")
			if out["leader"] != lead.addr {
				t.Fatalf("%s names leader %v, want %s", r.addr, out["leader"], lead.addr)
			}
			if out["is_leader"] == true {
				leaders++
			}
			if (out["is_leader"] == true) != (r == lead) {
				t.Fatalf("%s: is_leader %v", r.addr, out["is_leader"])
			}
		}
		if leaders != 1 {
			t.Fatalf("%d replicas say they lead", leaders)
		}
	})

	t.Run("pods", func(t *testing.T) {
		out := expect(t, 201, "PUT", sb.url+"/v1/pods/dublin", podBody(dublin, 2), "")
		if out["name"] != "dublin" || out["capacity"] != 2.0 || out["lat"] != dublin[0] {
			t.Fatalf("created pod answered %v", out)
		}
		expect(t, 201, "PUT", lead.url+"/v1/pods/london", podBody(london, 1), "")
		expect(t, 200, "PUT", sb.url+"/v1/pods/dublin", podBody(dublin, 3), "")
		expect(t, 201, "PUT", sb.url+"/v1/pods/empty", podBody(frankfurt, 0), "")
		if got := kv(t, agent)["podedge/pods/dublin"]; got != `{"name":"dublin","region":"test","lat":53.3498,"lon":-6.2603,"capacity":3}` {
			t.Fatalf("stored pod %s", got)
		}
		for _, r := range rs {
			consultest.WaitFor(t, 5*time.Second, "pods in the view of "+r.addr, func() bool {
				_, out, _ := call(t, "GET", r.url+"/v1/pods", nil)
				pods, _ := out["pods"].([]any)
				return len(pods) == 3
			})
			out := expect(t, 200, "GET", r.url+"/v1/pods/dublin", nil, "")
			if out["capacity"] != 3.0 || out["tenants"] != 0.0 || out["healthy_edges"] != 1.0 || out["region"] != "test" {
				t.Fatalf("GET pod on %s: %v", r.addr, out)
			}
		}
		expect(t, 404, "GET", sb.url+"/v1/pods/nowhere", nil, `pod "nowhere" not found`)
		expect(t, 400, "PUT", sb.url+"/v1/pods/Bad_Pod", podBody(dublin, 1), "may hold only a-z")
		expect(t, 400, "PUT", sb.url+"/v1/pods/x", `{"lon":1,"capacity":1}`, "lat is required")
		expect(t, 400, "PUT", sb.url+"/v1/pods/x", `{"lat":91,"lon":1,"capacity":1}`, "lat 91 is outside")
		expect(t, 400, "PUT", sb.url+"/v1/pods/x", `{"lat":1,"lon":1,"capacity":-1}`, "capacity -1")
		expect(t, 400, "PUT", sb.url+"/v1/pods/x", `{"lat":1,"lon":1,"capacity":1,"edges":2}`, `unknown field "edges"`)
		expect(t, 400, "PUT", sb.url+"/v1/pods/x", `{"lat":1,`, "malformed JSON")
		expect(t, 413, "PUT", sb.url+"/v1/pods/x", `{"region":"`+strings.Repeat("x", 2000)+`"}`, "larger than 1024 bytes")
		if _, ok := kv(t, agent)["podedge/pods/x"]; ok {
			t.Fatal("a refused pod reached KV")
		}
	})

	t.Run("sign-up", func(t *testing.T) {
		out := expect(t, 201, "POST", sb.url+"/v1/tenants", signupBody("acme", dublin, "Acme.COM.", "www.acme.com"), "")
		want := map[string]any{"name": "acme", "pod": "dublin", "hostname": "acme.example.test", "cname": "dublin.pods.example.test"}
		for k, v := range want {
			if out[k] != v {
				t.Fatalf("sign-up answered %s=%v, want %v (%v)", k, out[k], v, out)
			}
		}
		if fmt.Sprint(out["domains"]) != "[acme.com www.acme.com]" {
			t.Fatalf("domains %v", out["domains"])
		}
		expect(t, 409, "POST", lead.url+"/v1/tenants", signupBody("acme", dublin), `tenant "acme" already exists`)
		expect(t, 409, "POST", sb.url+"/v1/tenants", signupBody("other", dublin, "ACME.com"), `domain "acme.com" belongs to another tenant`)
		expect(t, 400, "POST", sb.url+"/v1/tenants", signupBody("www", dublin), `"www" is reserved`)
		expect(t, 400, "POST", sb.url+"/v1/tenants", signupBody("Not_A_Label", dublin), "may hold only a-z")
		expect(t, 400, "POST", sb.url+"/v1/tenants", `{"name":"b","lon":1}`, "lat is required")
		expect(t, 400, "POST", sb.url+"/v1/tenants", `{"name":"b","lat":1,"lon":190}`, "lon 190 is outside")
		expect(t, 400, "POST", sb.url+"/v1/tenants", `{"name":"b","lat":1,"lon":1,"pod":"x"}`, `unknown field "pod"`)
		expect(t, 400, "POST", sb.url+"/v1/tenants", `{"name":"b",`, "malformed JSON")
		expect(t, 400, "POST", sb.url+"/v1/tenants", signupBody("b", dublin, "b.example.test"), "inside the platform's zone")
		expect(t, 400, "POST", sb.url+"/v1/tenants", signupBody("b", dublin, "a.com", "b.com", "c.com", "d.com"), "exceed the limit of 3")
		expect(t, 413, "POST", sb.url+"/v1/tenants", `{"name":"`+strings.Repeat("b", 2000)+`"}`, "larger than 1024 bytes")
		// A zero latitude and longitude are a place, not an omission.
		expect(t, 201, "POST", sb.url+"/v1/tenants", signupBody("gulf", [2]float64{0, 0}), "")
		// dublin has 3 seats, london 1: fill both.
		expect(t, 201, "POST", sb.url+"/v1/tenants", signupBody("beta", dublin), "")
		expect(t, 201, "POST", sb.url+"/v1/tenants", signupBody("gamma", dublin), "")
		expect(t, 503, "POST", sb.url+"/v1/tenants", signupBody("delta", dublin), "no pod has a free seat and a passing edge")
		counts := tenantsByPod(t, agent)
		if counts["dublin"] != 3 || counts["london"] != 1 || len(counts) != 2 {
			t.Fatalf("tenants per pod %v, want dublin 3 and london 1", counts)
		}
		if _, ok := kv(t, agent)["podedge/tenants/delta"]; ok {
			t.Fatal("a refused sign-up reached KV")
		}
		checkSeats(t, agent)
	})

	t.Run("get tenant", func(t *testing.T) {
		for _, r := range rs {
			consultest.WaitFor(t, 5*time.Second, "acme in the view of "+r.addr, func() bool {
				code, _, _ := call(t, "GET", r.url+"/v1/tenants/acme", nil)
				return code == 200
			})
			out := expect(t, 200, "GET", r.url+"/v1/tenants/acme", nil, "")
			if out["pod"] != "dublin" || out["cname"] != "dublin.pods.example.test" || out["created"] == nil {
				t.Fatalf("GET tenant on %s: %v", r.addr, out)
			}
		}
		expect(t, 404, "GET", sb.url+"/v1/tenants/nobody", nil, `tenant "nobody" not found`)
	})

	t.Run("domains", func(t *testing.T) {
		out := expect(t, 200, "PUT", sb.url+"/v1/tenants/beta/domains/Beta.ORG.", nil, "")
		if fmt.Sprint(out["domains"]) != "[beta.org]" {
			t.Fatalf("domains after add: %v", out["domains"])
		}
		out = expect(t, 200, "PUT", sb.url+"/v1/tenants/beta/domains/beta.org", nil, "")
		if fmt.Sprint(out["domains"]) != "[beta.org]" {
			t.Fatalf("adding a domain twice changed it: %v", out["domains"])
		}
		expect(t, 409, "PUT", sb.url+"/v1/tenants/gamma/domains/beta.org", nil, `domain "beta.org" belongs to another tenant`)
		expect(t, 409, "PUT", sb.url+"/v1/tenants/gamma/domains/www.acme.com", nil, "belongs to another tenant")
		expect(t, 400, "PUT", sb.url+"/v1/tenants/gamma/domains/gamma.example.test", nil, "inside the platform's zone")
		expect(t, 400, "PUT", sb.url+"/v1/tenants/gamma/domains/nodot", nil, "at least two labels")
		expect(t, 404, "PUT", sb.url+"/v1/tenants/nobody/domains/nobody.org", nil, `tenant "nobody" not found`)
		expect(t, 200, "PUT", sb.url+"/v1/tenants/acme/domains/third.acme.com", nil, "")
		expect(t, 409, "PUT", sb.url+"/v1/tenants/acme/domains/fourth.acme.com", nil, "maximum of 3 domains")
		if o := kv(t, agent)["podedge/leader/domains/beta.org"]; o != "beta" {
			t.Fatalf("domain index holds %q for beta.org", o)
		}

		expect(t, 204, "DELETE", sb.url+"/v1/tenants/beta/domains/BETA.org", nil, "")
		expect(t, 404, "DELETE", sb.url+"/v1/tenants/beta/domains/beta.org", nil, `tenant "beta" has no domain "beta.org"`)
		expect(t, 404, "DELETE", sb.url+"/v1/tenants/nobody/domains/beta.org", nil, `tenant "nobody" not found`)
		if _, ok := kv(t, agent)["podedge/leader/domains/beta.org"]; ok {
			t.Fatal("a removed domain stayed in the index")
		}
		// Once every view has caught up, the freed domain is free to take.
		consultest.WaitFor(t, 5*time.Second, "beta.org freed in the leader's view", func() bool {
			_, ok := lead.srv.router.Snapshot().LookupString("beta.org")
			return !ok
		})
		expect(t, 200, "PUT", lead.url+"/v1/tenants/gamma/domains/beta.org", nil, "")
	})

	t.Run("move", func(t *testing.T) {
		expect(t, 409, "POST", sb.url+"/v1/tenants/acme/move", `{"pod":"london"}`, `pod "london" is full: 1 of 1 seats taken`)
		expect(t, 409, "POST", sb.url+"/v1/tenants/acme/move", `{"pod":"empty"}`, `pod "empty" is full: 0 of 0`)
		expect(t, 400, "POST", sb.url+"/v1/tenants/acme/move", `{"pod":"nowhere"}`, `pod "nowhere" is not registered`)
		expect(t, 400, "POST", sb.url+"/v1/tenants/acme/move", `{"pod":"Bad"}`, "may hold only a-z")
		expect(t, 400, "POST", sb.url+"/v1/tenants/acme/move", `{}`, "pod is required")
		expect(t, 400, "POST", sb.url+"/v1/tenants/acme/move", `{"pod":"london","now":true}`, `unknown field "now"`)
		expect(t, 404, "POST", sb.url+"/v1/tenants/nobody/move", `{"pod":"london"}`, `tenant "nobody" not found`)
		out := expect(t, 200, "POST", sb.url+"/v1/tenants/acme/move", `{"pod":"dublin"}`, "")
		if out["pod"] != "dublin" {
			t.Fatalf("move to its own pod answered %v", out)
		}
		expect(t, 200, "PUT", sb.url+"/v1/pods/london", podBody(london, 2), "")
		out = expect(t, 200, "POST", sb.url+"/v1/tenants/acme/move", `{"pod":"london"}`, "")
		if out["pod"] != "london" || out["cname"] != "london.pods.example.test" || fmt.Sprint(out["domains"]) != "[acme.com www.acme.com third.acme.com]" {
			t.Fatalf("move answered %v", out)
		}
		counts := tenantsByPod(t, agent)
		if counts["dublin"] != 2 || counts["london"] != 2 {
			t.Fatalf("tenants per pod after move %v", counts)
		}
		checkSeats(t, agent)
	})

	t.Run("delete", func(t *testing.T) {
		expect(t, 409, "DELETE", sb.url+"/v1/pods/london", nil, `pod "london" still has 2 tenants`)
		expect(t, 204, "DELETE", sb.url+"/v1/tenants/acme", nil, "")
		expect(t, 404, "DELETE", sb.url+"/v1/tenants/acme", nil, `tenant "acme" not found`)
		expect(t, 400, "DELETE", sb.url+"/v1/tenants/-x", nil, "starts or ends with '-'")
		all := kv(t, agent)
		for _, k := range []string{"podedge/tenants/acme", "podedge/leader/domains/acme.com", "podedge/leader/domains/www.acme.com", "podedge/leader/domains/third.acme.com"} {
			if _, ok := all[k]; ok {
				t.Fatalf("%s outlived the tenant", k)
			}
		}
		checkSeats(t, agent)
		expect(t, 204, "DELETE", sb.url+"/v1/pods/empty", nil, "")
		expect(t, 404, "DELETE", sb.url+"/v1/pods/empty", nil, `pod "empty" not found`)
		// The freed domain can be given to a new tenant.
		consultest.WaitFor(t, 5*time.Second, "acme gone from the leader's view", func() bool {
			return lead.srv.router.Snapshot().Tenant("acme") == nil
		})
		expect(t, 201, "POST", sb.url+"/v1/tenants", signupBody("acme2", london, "acme.com"), "")
		checkSeats(t, agent)
	})

	t.Run("unknown routes", func(t *testing.T) {
		expect(t, 404, "GET", sb.url+"/v1/nothing", nil, "no such endpoint: GET /v1/nothing")
		expect(t, 405, "PATCH", sb.url+"/v1/tenants/acme2", nil, "method PATCH is not allowed on /v1/tenants/acme2; use GET, DELETE")
		expect(t, 405, "PUT", sb.url+"/v1/tenants", nil, "use GET, POST")
	})

	t.Run("forwarding loop refused", func(t *testing.T) {
		req, _ := http.NewRequest("POST", sb.url+"/v1/tenants", strings.NewReader(`{"name":"loop","lat":1,"lon":1}`))
		req.Header.Set(ForwardedHeader, "127.0.0.1:1")
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 503 || !strings.Contains(string(body), "not the leader") || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("a forwarded write reaching a standby got %d %s", resp.StatusCode, body)
		}
	})

	t.Run("healthz and metrics", func(t *testing.T) {
		for _, r := range rs {
			out := expect(t, 200, "GET", r.url+"/healthz", nil, "")
			if out["status"] != "ok" || out["view_synced"] != true || out["leader"] != lead.addr {
				t.Fatalf("healthz on %s: %v", r.addr, out)
			}
		}
		metrics := func(r *replica) string {
			resp, err := httpClient.Get(r.url + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return string(b)
		}
		lm, sm := metrics(lead), metrics(sb)
		for _, want := range []string{
			"leader_is_leader 1",
			`leader_requests_total{code="201",route="POST /v1/tenants"}`,
			`leader_txn_total{op="signup",result="committed"}`,
			`leader_placement_failures_total{reason="no_capacity"} 1`,
			`leader_placement_failures_total{reason="name_taken"} 1`,
			`leader_leadership_changes_total{change="acquired"} 1`,
			"leader_view_synced 1",
			"leader_view_healthy 1",
			"go_goroutines",
		} {
			if !strings.Contains(lm, want) {
				t.Errorf("leader metrics lack %s", want)
			}
		}
		for _, want := range []string{"leader_is_leader 0", `leader_forwarded_total{result="ok"}`, `leader_requests_total{code="400",route="POST /v1/tenants"}`} {
			if !strings.Contains(sm, want) {
				t.Errorf("standby metrics lack %s", want)
			}
		}
	})
}

// TestConsulDown: with Consul gone, writes get 503 and reads are served
// from the last view; when it comes back, replicas elect a leader again on
// their own.
func TestConsulDown(t *testing.T) {
	agent := consultest.Start(t)
	rs := startCluster(t, agent, 2)
	sb := standby(t, rs)
	edges(t, agent, "dublin")
	waitEdges(t, rs, "dublin", 1)
	expect(t, 201, "PUT", sb.url+"/v1/pods/dublin", podBody(dublin, 10), "")
	expect(t, 201, "POST", sb.url+"/v1/tenants", signupBody("acme", dublin), "")
	for _, r := range rs {
		consultest.WaitFor(t, 5*time.Second, "acme in every view", func() bool {
			return r.srv.router.Snapshot().Tenant("acme") != nil
		})
	}

	agent.Stop()
	for _, r := range rs {
		expect(t, 503, "POST", r.url+"/v1/tenants", signupBody("beta", dublin), "")
		expect(t, 503, "PUT", r.url+"/v1/pods/london", podBody(london, 1), "")
		out := expect(t, 200, "GET", r.url+"/v1/tenants/acme", nil, "")
		if out["pod"] != "dublin" {
			t.Fatalf("last view on %s: %v", r.addr, out)
		}
		expect(t, 200, "GET", r.url+"/v1/pods/dublin", nil, "")
		consultest.WaitFor(t, 10*time.Second, "no replica claiming leadership without Consul", func() bool {
			_, out, _ := call(t, "GET", r.url+"/v1/leader", nil)
			return out["is_leader"] == false
		})
	}

	agent.Restart() // a dev agent comes back empty
	consultest.WaitFor(t, 30*time.Second, "writes accepted again", func() bool {
		code, _, _ := call(t, "PUT", rs[0].url+"/v1/pods/dublin", podBody(dublin, 10))
		return code == 201 || code == 200
	})
	waitLeader(t, rs)
	agent.Edge(t, "edge-dublin", "dublin", "127.0.0.1", 8080, "192.0.2.1", api.HealthPassing)
	waitEdges(t, rs, "dublin", 1)
	expect(t, 201, "POST", rs[1].url+"/v1/tenants", signupBody("beta", dublin), "")
	checkSeats(t, agent)
}
