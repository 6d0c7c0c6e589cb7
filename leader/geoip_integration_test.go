package leader

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/podedge/podedge/internal/consultest"
)

var singapore = [2]float64{1.3521, 103.8198}

// TestPlacementFromIP signs tenants up by their IP address through a
// standby, against a database built here: Europe lands in Frankfurt, Sydney
// in Sydney until it is full and then in Singapore, the next nearest; IPv6
// too; unknown and private addresses are refused saying which; the answer
// and the dry run explain the choice; a database replaced while the
// replicas run is used by both, without a restart.
func TestPlacementFromIP(t *testing.T) {
	path := filepath.Join(t.TempDir(), "city.mmdb")
	writeGeoDB(t, path, threeContinents())
	agent := consultest.Start(t)
	rs := startCluster(t, agent, 2, func(c *Config) {
		c.GeoIP.Database, c.GeoIP.CheckInterval = path, 100*time.Millisecond
	})
	lead, sb := waitLeader(t, rs), standby(t, rs)
	pods := map[string][2]float64{"frankfurt": frankfurt, "sydney": sydney, "singapore": singapore, "new-york": newYork}
	for name, at := range pods {
		capacity := 100
		if name == "sydney" {
			capacity = 2
		}
		expect(t, 201, "PUT", lead.url+"/v1/pods/"+name, podBody(at, capacity), "")
	}
	edges(t, agent, "frankfurt", "sydney", "singapore", "new-york")
	for name := range pods {
		waitEdges(t, rs, name, 1)
	}

	signup := func(name, ip string) map[string]any {
		t.Helper()
		return expect(t, 201, "POST", sb.url+"/v1/tenants", map[string]any{"name": name, "ip": ip}, "")
	}
	placement := func(out map[string]any) (map[string]any, map[string]any, []any) {
		t.Helper()
		pl, ok := out["placement"].(map[string]any)
		if !ok {
			t.Fatalf("no placement in %v", out)
		}
		return pl, pl["location"].(map[string]any), pl["candidates"].([]any)
	}

	t.Run("three continents and IPv6", func(t *testing.T) {
		for _, c := range []struct {
			name, ip, want string
			at             [2]float64
		}{
			{"eu", "81.2.69.160", "frankfurt", londonAt},
			{"us", "216.160.83.56", "new-york", seattleAt},
			{"v6", "2a02:cf40:add::1", "frankfurt", berlinAt},
			{"au1", "1.128.0.1", "sydney", sydneyAt},
			{"au2", "1.128.3.3", "sydney", sydneyAt},
			{"au3", "1.128.9.9", "singapore", sydneyAt},
		} {
			out := signup(c.name, c.ip)
			pl, loc, cands := placement(out)
			if out["pod"] != c.want || loc["source"] != "ip" || loc["lat"] != c.at[0] || loc["lon"] != c.at[1] {
				t.Fatalf("%s from %s: %v", c.name, c.ip, out)
			}
			first := cands[0].(map[string]any)
			if first["pod"] != c.want || pl["distance_km"] != first["distance_km"] || pl["pod_usage"] != first["usage"] {
				t.Fatalf("%s: the chosen pod is not the first candidate: %v", c.name, pl)
			}
			want := DistanceKm(c.at[0], c.at[1], pods[c.want][0], pods[c.want][1])
			if d := pl["distance_km"].(float64); d < want-0.1 || d > want+0.1 {
				t.Fatalf("%s: distance_km %v, want %.1f", c.name, d, want)
			}
		}
		// Sydney's second sign-up saw it at 1 of 2.
		out := expect(t, 200, "GET", sb.url+"/v1/tenants/au2", nil, "")
		if out["pod"] != "sydney" || out["placement"] != nil {
			t.Fatalf("GET tenant: %v", out)
		}
	})

	t.Run("refused, saying why", func(t *testing.T) {
		for _, c := range []struct{ body, want string }{
			{`{"name":"x1","ip":"8.8.8.8"}`, "ip: the GeoIP database has no location for 8.8.8.8"},
			{`{"name":"x2","ip":"10.20.30.40"}`, "ip: 10.20.30.40 is a private address"},
			{`{"name":"x3","ip":"::1"}`, "ip: ::1 is a loopback address"},
			{`{"name":"x4","ip":"300.1.1.1"}`, `ip: "300.1.1.1" is not an IPv4 or IPv6 address`},
			{`{"name":"x5","ip":"81.2.69.160","lat":1,"lon":1}`, "give either ip or lat and lon, not both"},
			{`{"name":"x6","ip":"81.2.69.160","lon":1}`, "not both"},
			{`{"name":"x7"}`, "a location is required: ip, or lat and lon"},
			{`{"name":"x8","ip":81}`, `field "ip"`},
		} {
			for _, r := range rs {
				expect(t, 400, "POST", r.url+"/v1/tenants", c.body, c.want)
				expect(t, 400, "POST", r.url+"/v1/placements", c.body, c.want)
			}
		}
	})

	t.Run("dry run", func(t *testing.T) {
		before := kv(t, agent)
		for _, r := range rs {
			out := expect(t, 200, "POST", r.url+"/v1/placements", `{"ip":"1.128.77.1"}`, "")
			_, loc, cands := placement(out)
			if out["pod"] != "singapore" || out["cname"] != "singapore.pods.example.test" || loc["source"] != "ip" || len(cands) == 0 {
				t.Fatalf("dry run on %s: %v", r.addr, out)
			}
			// From coordinates, with a name to check: the same rule.
			out = expect(t, 200, "POST", r.url+"/v1/placements", map[string]any{"name": "maybe", "lat": london[0], "lon": london[1]}, "")
			if _, loc, _ := placement(out); out["pod"] != "frankfurt" || loc["source"] != "request" {
				t.Fatalf("dry run from London on %s: %v", r.addr, out)
			}
			expect(t, 400, "POST", r.url+"/v1/placements", `{"name":"www","lat":1,"lon":1}`, "reserved")
		}
		if after := kv(t, agent); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Fatal("a dry run changed KV")
		}
	})

	t.Run("database replaced while running", func(t *testing.T) {
		moved := threeContinents()
		moved[europeNet] = singapore // the network was sold
		writeGeoDB(t, path, moved)
		for _, r := range rs {
			consultest.WaitFor(t, 10*time.Second, "the new database on "+r.addr, func() bool {
				_, out, _ := call(t, "POST", r.url+"/v1/placements", `{"ip":"81.2.69.160"}`)
				return out["pod"] == "singapore"
			})
		}
		out := signup("moved", "81.2.69.160")
		if _, loc, _ := placement(out); out["pod"] != "singapore" || loc["lat"] != singapore[0] {
			t.Fatalf("after the new database: %v", out)
		}
		if got := counterValue(t, lead.srv.m.geoReloads.WithLabelValues("ok")); got < 1 {
			t.Fatalf("reloads counted: %v", got)
		}
	})
	checkSeats(t, agent)
}
