package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/consultest"
	"github.com/podedge/podedge/internal/reload/reloadtest"
)

// apiLoad sends API requests that are never retried by the test: reads
// (GET /v1/pods) on kept-alive connections, and sign-ups (POST
// /v1/tenants, each under a new name) on a connection each, as a
// sign-up form's backend does. Any answer but 200 (reads) or 201
// (sign-ups), or none, is a failure.
type apiLoad struct {
	base              string
	reads, signups    atomic.Int64
	failed            atomic.Int64
	mu                sync.Mutex
	failures          []string
	readClient, fresh *http.Client
}

func newAPILoad(base string) *apiLoad {
	return &apiLoad{
		base:       base,
		readClient: &http.Client{Timeout: 15 * time.Second},
		fresh:      &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
	}
}

func (l *apiLoad) fail(what string) {
	l.failed.Add(1)
	l.mu.Lock()
	if len(l.failures) < 10 {
		l.failures = append(l.failures, time.Now().Format("15:04:05.000 ")+what)
	}
	l.mu.Unlock()
}

func (l *apiLoad) read() {
	resp, err := l.readClient.Get(l.base + "/v1/pods")
	if err != nil {
		l.fail("GET /v1/pods: " + err.Error())
		return
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		l.fail(fmt.Sprintf("GET /v1/pods: %d", resp.StatusCode))
		return
	}
	l.reads.Add(1)
}

func (l *apiLoad) signup(name string) {
	body := fmt.Sprintf(`{"name":%q,"lat":53.3,"lon":-6.2}`, name)
	resp, err := l.fresh.Post(l.base+"/v1/tenants", "application/json", strings.NewReader(body))
	if err != nil {
		l.fail("POST /v1/tenants " + name + ": " + err.Error())
		return
	}
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if resp.StatusCode != 201 {
		l.fail(fmt.Sprintf("POST /v1/tenants %s: %d %v", name, resp.StatusCode, out))
		return
	}
	l.signups.Add(1)
}

// run keeps readers and signers busy until ctx ends.
func (l *apiLoad) run(ctx context.Context, readers, signers int) {
	var wg sync.WaitGroup
	for range readers {
		wg.Go(func() {
			for ctx.Err() == nil {
				l.read()
			}
		})
	}
	for w := range signers {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				l.signup(fmt.Sprintf("w%d-%d", w, i))
			}
		})
	}
	wg.Wait()
}

// SIGUSR2 upgrades a real leader in place five times in a row under reads
// and sign-ups: not one request fails. The old process leads until it
// exits; a sign-up reaching the new one meanwhile waits for the lock
// instead of being refused. A broken new binary leaves the old process
// serving, and leading.
func TestSIGUSR2UpgradesUnderLoadWithoutAFailedRequest(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary against Consul, under load")
	}
	agent := consultest.Start(t)
	agent.Edge(t, "e1", "dublin", "127.0.0.1", 8080, "192.0.2.1", api.HealthPassing)
	dir := t.TempDir()
	built := reloadtest.Build(t, ".", "leader")
	bin := filepath.Join(dir, "leader")
	reloadtest.Install(t, built, bin)
	ports := consultest.FreePorts(t, 1)
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	base := "http://" + listen
	pidFile := filepath.Join(dir, "leader.pid")
	file := filepath.Join(dir, "leader.yaml")
	reloadtest.WriteFile(t, file, fmt.Sprintf("listen: %s\npid_file: %s\nconsul:\n  address: %s\n", listen, pidFile, agent.HTTPAddr))
	first := reloadtest.Start(t, bin, "-config", file)
	first.Notified(t, "READY=1")
	reloadtest.StopLast(t, pidFile, first)

	leading := func() bool {
		resp, err := http.Get(base + "/v1/leader")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var out struct {
			IsLeader bool `json:"is_leader"`
		}
		return json.NewDecoder(resp.Body).Decode(&out) == nil && out.IsLeader
	}
	consultest.WaitFor(t, 20*time.Second, "the replica to lead", leading)
	req, _ := http.NewRequest(http.MethodPut, base+"/v1/pods/dublin", strings.NewReader(`{"region":"eu","lat":53.3,"lon":-6.2,"capacity":100000}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("PUT /v1/pods/dublin: %d", resp.StatusCode)
	}
	load := newAPILoad(base)
	consultest.WaitFor(t, 20*time.Second, "a first sign-up", func() bool {
		load.signup("first")
		return load.signups.Load() == 1
	})
	load.failed.Store(0)
	load.failures = nil

	ctx, stopLoad := context.WithCancel(context.Background())
	defer stopLoad()
	done := make(chan struct{})
	go func() {
		load.run(ctx, 4, 2)
		close(done)
	}()
	// Each process serves a share of the load before the next upgrade.
	progress := func(when string) {
		t.Helper()
		reads, signups := load.reads.Load(), load.signups.Load()
		consultest.WaitFor(t, 30*time.Second, when+": 200 reads and 20 sign-ups more", func() bool {
			return load.reads.Load() >= reads+200 && load.signups.Load() >= signups+20
		})
	}
	progress("before the upgrades")
	reloadtest.UpgradeFails(t, pidFile, bin, built, first.Log)
	if !leading() {
		t.Fatal("after a failed upgrade the replica does not lead")
	}
	const upgrades = 5
	for i := range upgrades {
		reloadtest.Upgrade(t, pidFile, first.Log, i+1)
		progress(fmt.Sprintf("after upgrade %d", i+1))
	}
	if !leading() {
		t.Fatal("after the upgrades the replica does not lead")
	}
	stopLoad()
	<-done
	t.Logf("during one failed and %d upgrades: %d reads, %d sign-ups, %d failed %v",
		upgrades, load.reads.Load(), load.signups.Load(), load.failed.Load(), load.failures)
	if load.failed.Load() != 0 {
		t.Errorf("%d requests failed across the upgrades: %v", load.failed.Load(), load.failures)
	}
}
