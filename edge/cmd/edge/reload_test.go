package main

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podedge/podedge/internal/consultest"
	"github.com/podedge/podedge/internal/reload/reloadtest"
)

// A real edge process reloads on SIGHUP: a shorter response_header
// timeout turns a slow answer into a 504 for the requests that follow; a
// change of a listener and a file that no longer parses are refused and
// leave the running configuration serving; the keep-alive connection
// opened before the first reload serves after the last.
func TestSIGHUPReloadsTheConfiguration(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary against Consul")
	}
	agent := podOne(t, func(r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(400 * time.Millisecond)
		}
	})

	ports := consultest.FreePorts(t, 3)
	httpAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	admin := fmt.Sprintf("127.0.0.1:%d", ports[1])
	metrics := "http://" + admin + "/metrics"
	file := filepath.Join(t.TempDir(), "edge.yaml")
	conf := func(httpListen, responseHeader string) string {
		return fmt.Sprintf("pod: pod-1\npublic_ip: 127.0.0.1\nhttp: %s\nadmin: %s\nconsul:\n  address: %s\n"+
			"drain_delay: 0s\naccess_log:\n  enabled: false\nretries:\n  max: 0\ntimeouts:\n  response_header: %s\n",
			httpListen, admin, agent.HTTPAddr, responseHeader)
	}
	reloadtest.WriteFile(t, file, conf(httpAddr, "10s"))
	edge := reloadtest.Start(t, reloadtest.Build(t, ".", "edge"), "-config", file)
	edge.Notified(t, "READY=1")

	get := func(path string) int {
		req, _ := http.NewRequest(http.MethodGet, "http://"+httpAddr+path, nil)
		req.Host = "t1.example.test"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	consultest.WaitFor(t, 20*time.Second, "the edge routes t1", func() bool { return get("/") == 200 })
	if got := get("/slow"); got != 200 {
		t.Fatalf("slow answer within response_header 10s: %d, want 200", got)
	}

	// A keep-alive connection opened now must outlive every reload.
	keepAlive := reloadtest.KeepAlive(t, httpAddr, "GET / HTTP/1.1\r\nHost: t1.example.test\r\n\r\n")
	keepAlive("before reloading")

	reloadtest.WriteFile(t, file, conf(httpAddr, "100ms"))
	edge.Reload(t, metrics, "edge", "ok", 1)
	if got := get("/slow"); got != 504 {
		t.Fatalf("slow answer after reloading response_header 100ms: %d, want 504", got)
	}
	if ts := reloadtest.Metric(metrics, "edge_config_last_reload_success_timestamp_seconds"); ts < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last reload success timestamp %v", ts)
	}
	keepAlive("after a reload")

	// A listener cannot move: refused, naming the key; the 100ms stays.
	reloadtest.WriteFile(t, file, conf(fmt.Sprintf("127.0.0.1:%d", ports[2]), "10s"))
	edge.Reload(t, metrics, "edge", "refused", 1)
	if !strings.Contains(edge.Log.String(), "http: cannot change without a restart") {
		t.Errorf("the refusal does not name the key:\n%s", edge.Log.String())
	}
	if got := get("/slow"); got != 504 {
		t.Fatalf("after a refused reload: %d, want 504 (the running response_header 100ms)", got)
	}

	// A file that no longer parses: refused the same way.
	reloadtest.WriteFile(t, file, "timeouts: [\n")
	edge.Reload(t, metrics, "edge", "refused", 2)
	if got := get("/slow"); got != 504 {
		t.Fatalf("after a broken file: %d, want 504", got)
	}
	keepAlive("after two refused reloads")

	reloadtest.WriteFile(t, file, conf(httpAddr, "10s"))
	edge.Reload(t, metrics, "edge", "ok", 2)
	if got := get("/slow"); got != 200 {
		t.Fatalf("after reloading response_header 10s: %d, want 200", got)
	}
	keepAlive("after the last reload")
}
