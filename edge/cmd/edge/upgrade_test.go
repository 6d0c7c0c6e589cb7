package main

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/podedge/podedge/bench/loadgen"
	"github.com/podedge/podedge/internal/consultest"
	"github.com/podedge/podedge/internal/reload/reloadtest"
)

// SIGUSR2 upgrades a real edge in place five times in a row under load
// from a client that opens a connection per request and never retries:
// not one request fails. A broken new binary leaves the old process
// serving, under the same load.
func TestSIGUSR2UpgradesUnderLoadWithoutAFailedRequest(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary against Consul, under load")
	}
	agent := podOne(t, nil)

	dir := t.TempDir()
	built := reloadtest.Build(t, ".", "edge")
	bin := filepath.Join(dir, "edge")
	reloadtest.Install(t, built, bin)
	ports := consultest.FreePorts(t, 2)
	httpAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	pidFile := filepath.Join(dir, "edge.pid")
	file := filepath.Join(dir, "edge.yaml")
	reloadtest.WriteFile(t, file, fmt.Sprintf("pod: pod-1\npublic_ip: 127.0.0.1\nhttp: %s\nadmin: 127.0.0.1:%d\nconsul:\n  address: %s\n"+
		"drain_delay: 0s\naccess_log:\n  enabled: false\npid_file: %s\n", httpAddr, ports[1], agent.HTTPAddr, pidFile))
	first := reloadtest.Start(t, bin, "-config", file)
	first.Notified(t, "READY=1")
	reloadtest.StopLast(t, pidFile, first)
	get := func() int {
		req, _ := http.NewRequest(http.MethodGet, "http://"+httpAddr+"/", nil)
		req.Host = "t1.example.test"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	consultest.WaitFor(t, 20*time.Second, "the edge routes t1", func() bool { return get() == 200 })

	ctx, stopLoad := context.WithCancel(context.Background())
	defer stopLoad()
	results := make(chan loadgen.Result, 1)
	go func() {
		res, err := loadgen.Run(ctx, loadgen.Config{Addrs: []string{httpAddr}, Host: "t1.example.test",
			Conns: 16, Duration: 5 * time.Minute, NewConnPerRequest: true})
		if err != nil {
			t.Errorf("load: %v", err)
		}
		results <- res
	}()

	// A broken binary: the upgrade fails, the running edge serves on.
	reloadtest.UpgradeFails(t, pidFile, bin, built, first.Log)
	const upgrades = 5
	for i := range upgrades {
		reloadtest.Upgrade(t, pidFile, first.Log, i+1)
	}
	// The last one serves some more before the load stops.
	for range 20 {
		if got := get(); got != 200 {
			t.Fatalf("after the upgrades: %d", got)
		}
	}
	stopLoad()
	res := <-results
	t.Logf("%d requests during one failed and %d upgrades: %d failed %v; p99 %s, max %s",
		res.Requests, upgrades, res.Failed, res.Failures, res.P99, res.Max)
	if res.Requests < 1000 {
		t.Errorf("only %d requests under load", res.Requests)
	}
	if res.Failed != 0 {
		t.Errorf("%d requests failed across the upgrades: %v", res.Failed, res.Failures)
	}
}
