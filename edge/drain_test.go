package edge

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/child"
	"github.com/podedge/podedge/internal/consultest"
)

// lockedBuffer collects a process's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestGracefulDrain runs the real binary and stops it with SIGTERM while
// clients keep sending requests and one slow request (5s) is in flight: the edge
// leaves Consul and fails /healthz at once, keeps serving for its drain
// delay, finishes the slow request, and exits 0.
func TestGracefulDrain(t *testing.T) {
	agent := consultest.Start(t)
	seedPods(t, agent, map[string]string{"acme": "pod-1"})
	slow := newBackend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		if ms, _ := strconv.Atoi(r.URL.Query().Get("ms")); ms > 0 {
			time.Sleep(time.Duration(ms) * time.Millisecond)
		}
		_, _ = w.Write([]byte("done"))
	})
	registerApp(t, agent, "app-slow", "pod-1", slow)

	dir := t.TempDir()
	bin := filepath.Join(dir, "edge")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/edge").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ports := consultest.FreePorts(t, 2)
	httpAddr, adminAddr := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
	cfgFile := filepath.Join(dir, "edge.yaml")
	cfg := fmt.Sprintf(`consul: {address: %q}
pod: pod-1
http: %q
admin: %q
public_ip: 192.0.2.1
drain_delay: 4s
shutdown_timeout: 10s
register: {check_interval: 1s}
log: {level: info}
`, agent.HTTPAddr, httpAddr, adminAddr)
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr lockedBuffer
	edge, err := child.Start(child.Spec{Name: "edge", LogDir: t.TempDir(), Bin: bin, Args: []string{"-config", cfgFile}, Stdout: &stdout, Stderr: &stderr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		edge.Kill()
		if t.Failed() {
			t.Logf("edge stderr:\n%s", stderr.String())
		}
	})

	consultest.WaitFor(t, 20*time.Second, "the edge to register and pass its check", func() bool {
		entries, _, err := agent.Client.Health().Service("edge", "", true, nil)
		return err == nil && len(entries) == 1
	})
	c := client(t)
	if code, _, _ := do(t, c, "GET", httpAddr, "acme.example.test", "/", nil, nil); code != 200 {
		t.Fatalf("status %d before the drain", code)
	}

	// One slow request in flight, spanning the drain delay.
	type result struct {
		code int
		body string
		err  error
	}
	slowDone := make(chan result, 1)
	before := slow.hits.Load()
	go func() {
		code, body, err := tryGet(client(t), httpAddr, "acme.example.test", "/?ms=5000")
		slowDone <- result{code, body, err}
	}()
	consultest.WaitFor(t, 5*time.Second, "the slow request to reach the app", func() bool { return slow.hits.Load() > before })

	// Clients keep coming during the drain.
	var ok, failed, closing atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wc := client(t)
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				req, _ := http.NewRequest("GET", "http://"+httpAddr+"/", nil)
				req.Host = "acme.example.test"
				resp, err := wc.Do(req)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, resp.Status)
					continue
				}
				if resp.Close {
					closing.Add(1)
				}
				ok.Add(1)
			}
		})
	}

	sigterm := time.Now()
	if err := edge.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	consultest.WaitFor(t, 2*time.Second, "the edge to leave consul", func() bool {
		svcs, err := agent.Client.Agent().Services()
		return err == nil && len(filterEdge(svcs)) == 0
	})
	resp, err := http.Get("http://" + adminAddr + "/healthz")
	if err != nil || resp.StatusCode != 503 {
		t.Fatalf("/healthz during the drain: %v %v, want 503", resp, err)
	}
	resp.Body.Close()
	okAtSignal := ok.Load()
	// Stop the clients before the drain delay ends, when the listener
	// closes: connections refused after that are what a stopped edge means.
	consultest.WaitFor(t, 3*time.Second, "requests served during the drain", func() bool { return ok.Load() > okAtSignal+20 })
	if time.Since(sigterm) > 3*time.Second {
		t.Fatalf("serving 20 requests during the drain took %s; the test cannot tell drain from shutdown", time.Since(sigterm))
	}
	close(stop)
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d requests failed during the drain (first: %v)", n, firstErr.Load())
	}
	if closing.Load() == 0 {
		t.Error("no response during the drain asked the client to close its connection")
	}

	r := <-slowDone
	if r.err != nil || r.code != 200 || r.body != "done" {
		t.Fatalf("the in-flight request: %d %q %v; it must finish", r.code, r.body, r.err)
	}
	select {
	case <-edge.Done():
		if err := edge.CleanExit(); err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the edge did not exit")
	}
	if took := time.Since(sigterm); took < 4*time.Second {
		t.Errorf("exited %s after SIGTERM, before its drain delay", took)
	}
	// The slow request's access log line was flushed before exit.
	found := false
	sc := bufio.NewScanner(bytes.NewReader([]byte(stdout.String())))
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) == nil && line["path"] == "/?ms=5000" && line["status"] == 200.0 {
			found = true
		}
	}
	if !found {
		t.Errorf("the slow request is missing from the access log")
	}
}

func filterEdge(svcs map[string]*api.AgentService) []string {
	var out []string
	for id, s := range svcs {
		if s.Service == "edge" {
			out = append(out, id)
		}
	}
	return out
}
