package localpod

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/podedge/podedge/internal/consultest"
)

// testLayout is the default layout moved to free ports and other loopback
// addresses, so that the test can run beside a `make run`.
func testLayout(t *testing.T) Layout {
	l := Default()
	ports := consultest.FreePorts(t, 12)
	at := func(i int) string { return "127.0.0.1:" + strconv.Itoa(ports[i]) }
	l.ConsulHTTP = at(0)
	l.ConsulServer, l.ConsulSerfLAN, l.ConsulSerfWAN = ports[1], ports[2], ports[3]
	l.Leaders = []string{at(4), at(5)}
	l.DNS, l.DNSAdmin = at(6), at(7)
	// Every edge on the same port of its own address, as in production;
	// 127.0.77.x is unlikely to be in use.
	edgePort, adminPort := strconv.Itoa(ports[8]), strconv.Itoa(ports[9])
	appPort := 10
	for pi := range l.Pods {
		pod := &l.Pods[pi]
		for ei := range pod.Edges {
			ip := fmt.Sprintf("127.0.77.%d", 10*(pi+1)+ei+1)
			pod.Edges[ei].HTTP = ip + ":" + edgePort
			pod.Edges[ei].Admin = ip + ":" + adminPort
			pod.Edges[ei].PublicIP = ip
		}
		for ai := range pod.Apps {
			if appPort >= len(ports) {
				ports = append(ports, consultest.FreePorts(t, 1)...)
			}
			pod.Apps[ai] = at(appPort)
			appPort++
		}
	}
	return l
}

// buildBinaries builds the platform's programs into a temporary folder.
func buildBinaries(t *testing.T) string {
	t.Helper()
	out := t.TempDir()
	root, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-o", out+"/", "./edge/cmd/edge", "./dnsd/cmd/dnsd", "./leader/cmd/leader", "./bench/cmd/backend")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(root)))
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, msg)
	}
	return out
}

func TestLocalPlatform(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole platform; it runs under make test")
	}
	consul, err := consultest.Binary()
	if err != nil {
		t.Fatal(err)
	}
	bin := buildBinaries(t)
	l := testLayout(t)
	ctx := context.Background()
	p, err := Start(ctx, l, Options{Bin: bin, Consul: consul, Configs: "../../configs/local", Logs: t.TempDir(), Timeout: 3 * time.Minute})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			p.Stop()
		}
	})

	// Sign up a tenant through the standby leader.
	standby := ""
	for _, addr := range l.Leaders {
		var v struct {
			IsLeader bool `json:"is_leader"`
		}
		if err := getJSON(ctx, "http://"+addr+"/v1/leader", &v); err != nil {
			t.Fatal(err)
		}
		if !v.IsLeader {
			standby = addr
		}
	}
	if standby == "" {
		t.Fatal("no standby leader")
	}
	var placed struct{ Pod, Hostname string }
	if err := sendJSON(ctx, http.MethodPost, "http://"+standby+"/v1/tenants", `{"name":"e2e","lat":51.5,"lon":-0.12}`, &placed); err != nil {
		t.Fatalf("sign-up through the standby: %v", err)
	}
	if placed.Pod != "pod-1" || placed.Hostname != "e2e.example.test" {
		t.Fatalf("placed %+v, want pod-1 (London is near Dublin)", placed)
	}

	// Resolve it through dnsd: the pod's two edges.
	pod1 := []string{l.Pods[0].Edges[0].PublicIP, l.Pods[0].Edges[1].PublicIP}
	var ips []string
	consultest.WaitFor(t, 10*time.Second, "dnsd to answer for e2e with both pod-1 edges", func() bool {
		ips, err = p.Resolve("e2e.example.test", dns.TypeA)
		slices.Sort(ips)
		return err == nil && slices.Equal(ips, pod1)
	})

	// Fetch its page through an edge IP that DNS returned. The edge and
	// dnsd follow Consul independently, so the edge may learn of the tenant
	// a moment after dnsd does.
	_, port, _ := net.SplitHostPort(l.Pods[0].Edges[0].HTTP)
	var code int
	var body string
	consultest.WaitFor(t, 5*time.Second, "the page through the edge DNS returned", func() bool {
		code, body, err = Get(ctx, net.JoinHostPort(ips[0], port), "e2e.example.test", "/")
		return err == nil && code == http.StatusOK
	})
	if !strings.Contains(body, "in pod pod-1") {
		t.Fatalf("page through %s: %d %q", ips[0], code, body)
	}

	// Kill one pod-1 edge: it leaves the DNS answer, and the death is
	// reported.
	died := make(chan string, 8)
	p.Watch(func(name string, err error) { died <- name })
	if err := p.Kill(l.Pods[0].Edges[1].Name); err != nil {
		t.Fatal(err)
	}
	select {
	case name := <-died:
		if name != l.Pods[0].Edges[1].Name {
			t.Fatalf("reported the death of %s, want %s", name, l.Pods[0].Edges[1].Name)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the killed edge's death was not reported")
	}
	consultest.WaitFor(t, 15*time.Second, "the killed edge to leave the DNS answer", func() bool {
		ips, err := p.Resolve("e2e.example.test", dns.TypeA)
		return err == nil && slices.Equal(ips, pod1[:1])
	})

	// Kill one app server under steady traffic: no request fails.
	edge := l.Pods[0].Edges[0].HTTP
	var sent, failed atomic.Int64
	var firstFailure atomic.Value
	trafficCtx, stopTraffic := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for trafficCtx.Err() == nil {
				code, body, err := Get(ctx, edge, "e2e.example.test", "/")
				sent.Add(1)
				if err != nil || code != http.StatusOK {
					failed.Add(1)
					firstFailure.CompareAndSwap(nil, fmt.Sprintf("%d %q %v", code, body, err))
				}
			}
		})
	}
	consultest.WaitFor(t, 10*time.Second, "traffic to flow", func() bool { return sent.Load() > 50 })
	if err := p.Kill("pod-1-app-1"); err != nil {
		t.Fatal(err)
	}
	killedAt := sent.Load()
	// Keep the traffic on until Consul has marked the app server critical,
	// so that both passive health and the health checks are exercised.
	consultest.WaitFor(t, 15*time.Second, "consul to mark the killed app server critical", func() bool {
		return p.passing("app") == 4
	})
	consultest.WaitFor(t, 10*time.Second, "more traffic after the kill", func() bool { return sent.Load() > killedAt+200 })
	stopTraffic()
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed after an app server was killed; first: %v", failed.Load(), sent.Load(), firstFailure.Load())
	}
	t.Logf("%d requests, none failed, across the kill of an app server", sent.Load())

	// Stop the platform: every process exits cleanly, nothing listens.
	stopped = true
	if err := p.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
}
