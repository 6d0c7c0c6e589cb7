package edge

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/podedge/podedge/router"
)

// TestHTTP2Figures measures the TLS listener with h2load, over HTTP/2 and
// over HTTP/1.1, against the app server at $PODEDGE_H2LOAD_APP (for
// instance bin/backend -size 64); skipped without it. Metrics on, no access
// log. $PODEDGE_H2LOAD_ARGS replaces the load ("-c 64 -D 10
// --warm-up-time 2").
func TestHTTP2Figures(t *testing.T) {
	app := os.Getenv("PODEDGE_H2LOAD_APP")
	if app == "" {
		t.Skip("set PODEDGE_H2LOAD_APP to an app server's host:port")
	}
	h2load, err := exec.LookPath("h2load")
	if err != nil {
		t.Skip("no h2load")
	}
	st := router.State{
		Pods:    []router.Pod{{Name: "pod-1", Capacity: 10}},
		Tenants: []router.Tenant{{Name: "acme", Pod: "pod-1"}},
		Apps:    []router.Endpoint{{ID: "app", Node: "n", Pod: "pod-1", Addr: app, Weight: 1, Passing: true}},
	}
	h := newTLSHarness(t, &Proxy{}, st, defaultHTTP2())
	load := strings.Fields(os.Getenv("PODEDGE_H2LOAD_ARGS"))
	if len(load) == 0 {
		load = []string{"-c", "64", "-D", "10", "--warm-up-time", "2"}
	}
	for _, run := range []struct {
		name string
		args []string
	}{{"HTTP/1.1 over TLS", []string{"--h1"}}, {"HTTP/2, 1 stream per connection", []string{"-m", "1"}}, {"HTTP/2, 10 streams per connection", []string{"-m", "10"}}} {
		args := append(append(append([]string{}, load...), run.args...), "-H", ":authority: acme.example.test", "https://"+h.addr+"/")
		out, err := exec.Command(h2load, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("h2load %v: %v: %s", args, err, out)
		}
		var keep []string
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "finished in") || strings.HasPrefix(l, "requests:") || strings.HasPrefix(l, "status codes:") ||
				strings.HasPrefix(l, "time for request:") || strings.HasPrefix(l, "Application protocol") {
				keep = append(keep, l)
			}
		}
		t.Logf("%s: h2load %s\n%s", run.name, strings.Join(args, " "), strings.Join(keep, "\n"))
	}
}
