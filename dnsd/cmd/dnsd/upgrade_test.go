package main

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"
	"github.com/podedge/podedge/bench/dnsload"
	"github.com/podedge/podedge/internal/consultest"
	"github.com/podedge/podedge/internal/reload/reloadtest"
)

// SIGUSR2 upgrades a real dnsd in place five times in a row under paced
// UDP queries, each waited for and never sent again, and TCP queries on a
// connection each: not one answer is lost. A broken new binary leaves the
// old process serving, under the same load.
func TestSIGUSR2UpgradesUnderLoadWithoutALostAnswer(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary against Consul, under load")
	}
	agent := consultest.Start(t)
	agent.Put(t, "podedge/pods/pod-1", `{"name":"pod-1","region":"eu","lat":50,"lon":4,"capacity":10}`)
	agent.Edge(t, "e1", "pod-1", "127.0.0.1", 8080, "192.0.2.1", api.HealthPassing)

	dir := t.TempDir()
	built := build(t)
	bin := filepath.Join(dir, "dnsd")
	reloadtest.Install(t, built, bin)
	ports := consultest.FreePorts(t, 2)
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	pidFile := filepath.Join(dir, "dnsd.pid")
	file := filepath.Join(dir, "dnsd.yaml")
	reloadtest.WriteFile(t, file, fmt.Sprintf("zone: platform.test.\nlisten: %s\nadmin: 127.0.0.1:%d\nudp_sockets: 2\n"+
		"pid_file: %s\nconsul:\n  address: %s\n", listen, ports[1], pidFile, agent.HTTPAddr))
	first := reloadtest.Start(t, bin, "-config", file)
	first.Notified(t, "READY=1")
	reloadtest.StopLast(t, pidFile, first)
	const name = "pod-1.pods.platform.test."
	answers := func(network string) bool {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		r, _, err := (&dns.Client{Net: network, Timeout: 2 * time.Second}).Exchange(m, listen)
		return err == nil && r.Rcode == dns.RcodeSuccess && len(r.Answer) == 1
	}
	consultest.WaitFor(t, 20*time.Second, "dnsd answers for pod-1", func() bool { return answers("udp") })

	ctx, stopLoad := context.WithCancel(context.Background())
	defer stopLoad()
	results := make(chan dnsload.Result, 1)
	go func() {
		res, err := dnsload.Run(ctx, dnsload.Config{Addr: listen, Name: name, UDPWorkers: 8, UDPRate: 2000,
			TCPWorkers: 2, TCPRate: 100, Timeout: 2 * time.Second})
		if err != nil {
			t.Errorf("load: %v", err)
		}
		results <- res
	}()

	// Each process answers a share of the load before the next upgrade:
	// its own count, which starts at 0.
	metrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", ports[1])
	underLoad := func(when string) {
		t.Helper()
		consultest.WaitFor(t, 30*time.Second, when+": 1,000 queries answered by the serving dnsd", func() bool {
			return reloadtest.Metric(metrics, `dnsd_queries_total{qtype="A",rcode="NOERROR"}`) >= 1000
		})
	}
	underLoad("before the upgrades")
	reloadtest.UpgradeFails(t, pidFile, bin, built, first.Log)
	const upgrades = 5
	for i := range upgrades {
		reloadtest.Upgrade(t, pidFile, first.Log, i+1)
		underLoad(fmt.Sprintf("after upgrade %d", i+1))
	}
	for _, network := range []string{"udp", "tcp"} {
		if !answers(network) {
			t.Fatalf("after the upgrades: no answer over %s", network)
		}
	}
	stopLoad()
	res := <-results
	t.Logf("during one failed and %d upgrades: %d UDP queries, %d lost, %d bad; %d TCP queries, %d failed %v",
		upgrades, res.UDPSent, res.UDPLost, res.UDPBad, res.TCPQueries, res.TCPFailed, res.Failures)
	if res.UDPSent < 5000 || res.TCPQueries < 200 {
		t.Errorf("too few queries under load: %+v", res)
	}
	if res.UDPLost+res.UDPBad+res.TCPFailed != 0 {
		t.Errorf("answers lost across the upgrades: %+v", res)
	}
}
