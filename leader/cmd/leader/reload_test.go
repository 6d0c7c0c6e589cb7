package main

import (
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podedge/podedge/internal/consultest"
	"github.com/podedge/podedge/internal/reload/reloadtest"
)

// A real leader reloads on SIGHUP: a smaller max_body_bytes refuses, with
// 413, a body the running configuration took; a change of the listener
// and a broken file are refused and the running limit stays; the
// keep-alive connection opened first serves throughout.
func TestSIGHUPReloadsTheConfiguration(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary against Consul")
	}
	agent := consultest.Start(t)
	ports := consultest.FreePorts(t, 2)
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	base := "http://" + listen
	file := filepath.Join(t.TempDir(), "leader.yaml")
	conf := func(listen string, maxBody int) string {
		return fmt.Sprintf("listen: %s\nconsul:\n  address: %s\nmax_body_bytes: %d\n", listen, agent.HTTPAddr, maxBody)
	}
	reloadtest.WriteFile(t, file, conf(listen, 65536))
	leader := reloadtest.Start(t, reloadtest.Build(t, ".", "leader"), "-config", file)
	leader.Notified(t, "READY=1")
	consultest.WaitFor(t, 20*time.Second, "the leader's API", func() bool {
		return reloadtest.Metric(base+"/metrics", `leader_config_reloads_total{result="ok"}`) == 0
	})

	keepAlive := reloadtest.KeepAlive(t, listen, "GET /v1/leader HTTP/1.1\r\nHost: leader\r\n\r\n")
	// post sends a 1,000-byte sign-up and returns the status: 400 (the
	// body is no tenant) or 413. (A 413 closes its connection.)
	post := func(when string) int {
		t.Helper()
		body := `{"name":"` + strings.Repeat("a", 980) + `"}`
		resp, err := http.Post(base+"/v1/tenants", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	keepAlive("before reloading")
	if got := post("before reloading"); got != 400 {
		t.Fatalf("a 1,000-byte body under max_body_bytes 65536: %d, want 400", got)
	}
	reloadtest.WriteFile(t, file, conf(listen, 256))
	leader.Reload(t, base+"/metrics", "leader", "ok", 1)
	if got := post("after a reload"); got != 413 {
		t.Fatalf("a 1,000-byte body after reloading max_body_bytes 256: %d, want 413", got)
	}
	keepAlive("after a reload")

	reloadtest.WriteFile(t, file, conf(net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1])), 65536))
	leader.Reload(t, base+"/metrics", "leader", "refused", 1)
	if !strings.Contains(leader.Log.String(), "listen: cannot change without a restart") {
		t.Errorf("the refusal does not name the key:\n%s", leader.Log.String())
	}
	reloadtest.WriteFile(t, file, "max_body_bytes: lots\n")
	leader.Reload(t, base+"/metrics", "leader", "refused", 2)
	if got := post("after refused reloads"); got != 413 {
		t.Fatalf("after refused reloads: %d, want 413 (the running max_body_bytes 256)", got)
	}
	keepAlive("after refused reloads")
}
