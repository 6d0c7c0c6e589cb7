package leader

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podedge/podedge/internal/child"
	"github.com/podedge/podedge/internal/consultest"
)

// buildLeader builds the leader binary into a temporary folder.
func buildLeader(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "leader")
	out, err := exec.Command("go", "build", "-o", bin, "./cmd/leader").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// proc is a leader replica running as its own process.
type proc struct {
	*child.Process
	addr string
	url  string
	out  *logBuffer
}

// startProc runs the binary with args and waits until it serves with a
// synced view, unless args make it exit.
func startProc(t testing.TB, bin string, args ...string) *proc {
	t.Helper()
	p := launch(t, bin, args...)
	consultest.WaitFor(t, 15*time.Second, "replica "+p.addr+" serving its view", func() bool {
		if p.Exited() {
			t.Fatalf("replica exited with %d:\n%s", p.State().ExitCode(), p.output())
		}
		code, out, _ := tryCall("GET", p.url+"/healthz")
		return code == 200 && out["view_synced"] == true
	})
	return p
}

// launch starts the binary on a free port given as -listen unless args
// give one.
func launch(t testing.TB, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{out: &logBuffer{}}
	for i, a := range args {
		if a == "-listen" && i+1 < len(args) {
			p.addr = args[i+1]
		}
	}
	if p.addr == "" {
		p.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(consultest.FreePorts(t, 1)[0]))
		args = append([]string{"-listen", p.addr}, args...)
	}
	p.url = "http://" + p.addr
	var err error
	p.Process, err = child.Start(child.Spec{Name: "leader", LogDir: t.TempDir(), Bin: bin, Args: args, Stdout: p.out, Stderr: p.out})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop(10 * time.Second)
		if t.Failed() {
			t.Logf("output of %s:\n%s", p.addr, p.output())
		}
	})
	return p
}

func (p *proc) output() string {
	p.out.mu.Lock()
	defer p.out.mu.Unlock()
	return p.out.b.String()
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.Done():
		return p.State().ExitCode()
	case <-time.After(timeout):
		t.Fatalf("%s did not exit within %s", p.addr, timeout)
		return 0
	}
}

// tryCall is call without failing the test on a transport error.
func tryCall(method, url string, body ...string) (int, map[string]any, error) {
	var b string
	if len(body) > 0 {
		b = body[0]
	}
	req, err := newRequest(method, url, b)
	if err != nil {
		return 0, nil, err
	}
	return doRequest(req)
}

// leaderOf asks every live replica who leads and returns the replica that
// all agree on, or nil.
func leaderOf(ps []*proc) *proc {
	var lead *proc
	named := ""
	for _, p := range ps {
		if p.Exited() {
			continue
		}
		code, out, err := tryCall("GET", p.url+"/v1/leader")
		if err != nil || code != 200 {
			return nil
		}
		l, _ := out["leader"].(string)
		if named == "" {
			named = l
		}
		if l == "" || l != named {
			return nil
		}
		if out["is_leader"] == true {
			if lead != nil {
				return nil
			}
			lead = p
		}
	}
	if lead == nil || lead.addr != named {
		return nil
	}
	return lead
}

func TestCommandLine(t *testing.T) {
	bin := buildLeader(t)
	dir := t.TempDir()
	write := func(name, body string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	bad := []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"-bogus"}, "flag provided but not defined: -bogus"},
		{"bad listen flag", []string{"-listen", "8480"}, `listen: "8480" is not host:port`},
		{"bad zone flag", []string{"-zone", "bad_zone"}, "zone:"},
		{"empty consul flag", []string{"-consul", ""}, "consul.address: must not be empty"},
		{"missing config file", []string{"-config", filepath.Join(dir, "none.yaml")}, "no such file"},
		{"unknown config key", []string{"-config", write("unknown.yaml", "listen: 127.0.0.1:1\nnear_mk: 3\n")}, `line 2: unknown key "near_mk"`},
		{"bad config value", []string{"-config", write("ttl.yaml", "election:\n  check_ttl: 1ms\n")}, "election.check_ttl: 1ms is outside"},
		{"missing geoip database", []string{"-config", write("geo.yaml", "geoip:\n  database: "+filepath.Join(dir, "none.mmdb")+"\n")}, "geoip.database: stat "},
		{"not a geoip database", []string{"-config", write("notgeo.yaml", "geoip:\n  database: "+write("city.mmdb", "not a database")+"\n")}, "geoip.database: "},
		{"stray argument", []string{"serve"}, `unexpected argument "serve"`},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			out, err := exec.Command(bin, c.args...).CombinedOutput()
			exit, ok := err.(*exec.ExitError)
			if !ok || exit.ExitCode() != 2 {
				t.Fatalf("exit %v, want status 2; output %q", err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "leader: ") || !strings.Contains(lines[0], c.want) {
				t.Fatalf("output %q: want one line mentioning %q", out, c.want)
			}
		})
	}

	t.Run("version", func(t *testing.T) {
		out, err := exec.Command(bin, "-version").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "leader ") {
			t.Fatalf("%v: %q", err, out)
		}
	})

	t.Run("flags override the file; SIGTERM exits 0", func(t *testing.T) {
		agent := consultest.Start(t)
		ports := consultest.FreePorts(t, 2)
		fromFile := fmt.Sprintf("127.0.0.1:%d", ports[0])
		cfg := write("ok.yaml", fmt.Sprintf("listen: %s\nzone: file.test.\nconsul:\n  address: 127.0.0.1:1\n", fromFile))
		p := startProc(t, bin, "-config", cfg, "-listen", fmt.Sprintf("127.0.0.1:%d", ports[1]), "-consul", agent.HTTPAddr)
		if code, _, err := tryCall("GET", "http://"+fromFile+"/healthz"); err == nil {
			t.Fatalf("the file's listen address answered %d; the flag should override it", code)
		}
		consultest.WaitFor(t, 10*time.Second, "the replica to lead", func() bool {
			return leaderOf([]*proc{p}) == p
		})
		expect(t, 201, "PUT", p.url+"/v1/pods/dublin", podBody(dublin, 10), "")
		agent.Edge(t, "edge-dublin", "dublin", "127.0.0.1", 8080, "192.0.2.1", "passing")
		consultest.WaitFor(t, 5*time.Second, "the edge in the view", func() bool {
			_, out, _ := tryCall("GET", p.url+"/v1/pods/dublin")
			return out["healthy_edges"] == 1.0
		})
		// The zone comes from the file: no flag overrides it.
		out := expect(t, 201, "POST", p.url+"/v1/tenants", signupBody("acme", dublin), "")
		if out["hostname"] != "acme.file.test" {
			t.Fatalf("hostname %v: the file's zone was not used", out["hostname"])
		}
		_ = p.Signal(syscall.SIGTERM)
		if code := p.wait(t, 10*time.Second); code != 0 {
			t.Fatalf("exit %d after SIGTERM", code)
		}
		if pair, _, err := agent.Client.KV().Get("podedge/leader/lock", nil); err != nil || (pair != nil && pair.Session != "") {
			t.Fatalf("lock still held after a graceful stop: %+v %v", pair, err)
		}
		if svcs, err := agent.Client.Agent().Services(); err != nil || len(svcs) != 1 {
			t.Fatalf("services after a graceful stop: %v %v (want only the test's edge)", svcs, err)
		}
	})
}
