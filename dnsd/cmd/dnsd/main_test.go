package main

import (
	"bytes"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"
	"github.com/podedge/podedge/internal/child"
	"github.com/podedge/podedge/internal/consultest"
)

// build compiles the dnsd binary into a temporary folder.
func build(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "dnsd")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestBadInput checks that a bad flag or configuration value exits with
// status 2 and one line naming the problem.
func TestBadInput(t *testing.T) {
	bin := build(t)
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"-nope"}, "flag provided but not defined: -nope"},
		{[]string{"-zone", "bad_zone"}, "zone:"},
		{[]string{"-listen", "nowhere"}, "listen:"},
		{[]string{"-admin", ":x:y"}, "admin:"},
		{[]string{"-consul", ""}, "consul.address:"},
		{[]string{"-config", filepath.Join(dir, "missing.yaml")}, "missing.yaml"},
		{[]string{"-config", write("typo.yaml", "zone: example.test.\nanswer_capp: 3\n")}, `line 2: unknown key "answer_capp"`},
		{[]string{"-config", write("cap.yaml", "answer_cap: 20\n")}, "answer_cap: 20 is outside 1 to 13"},
		{[]string{"-config", write("glue.yaml", "ns: [{name: ns1}]\n")}, "ns[0].addresses:"},
		{[]string{"extra"}, `unexpected argument "extra"`},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			cmd := exec.Command(bin, c.args...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 2 {
				t.Fatalf("exit %v, want status 2; stderr %q", err, stderr.String())
			}
			msg := stderr.String()
			if strings.Count(msg, "\n") != 1 || !strings.HasPrefix(msg, "dnsd: ") || !strings.Contains(msg, c.want) {
				t.Errorf("stderr %q, want one line naming %q", msg, c.want)
			}
		})
	}
	t.Run("-version", func(t *testing.T) {
		out, err := exec.Command(bin, "-version").Output()
		if err != nil || !strings.HasPrefix(string(out), "dnsd ") {
			t.Errorf("-version: %q %v", out, err)
		}
	})
}

// TestRun runs the binary with the example configuration against a real
// Consul, flags overriding the file: it answers for a tenant over UDP and
// TCP, serves /healthz and /metrics, and exits 0 on SIGTERM.
func TestRun(t *testing.T) {
	agent := consultest.Start(t)
	agent.Put(t, "podedge/pods/pod-1", `{"name":"pod-1","region":"eu","lat":50,"lon":4,"capacity":10}`)
	agent.Put(t, "podedge/tenants/acme", `{"name":"acme","pod":"pod-1","domains":[]}`)
	agent.Edge(t, "e1", "pod-1", "127.0.0.1", 8080, "192.0.2.1", api.HealthPassing)
	bin := build(t)
	ports := consultest.FreePorts(t, 2)
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	admin := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))
	logs := &consultest.SyncBuffer{}
	dnsd, err := child.Start(child.Spec{Name: "dnsd", LogDir: t.TempDir(), Bin: bin, Stdout: logs, Stderr: logs,
		Args: []string{"-config", "../../../configs/dnsd.yaml", "-consul", agent.HTTPAddr,
			"-zone", "platform.test", "-listen", listen, "-admin", admin}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		dnsd.Kill()
		if t.Failed() {
			t.Logf("dnsd output:\n%s", logs.String())
		}
	}()

	consultest.WaitFor(t, 20*time.Second, "/healthz to answer 200", func() bool {
		resp, err := http.Get("http://" + admin + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	for _, network := range []string{"udp", "tcp"} {
		m := new(dns.Msg)
		m.SetQuestion("acme.platform.test.", dns.TypeA)
		r, _, err := (&dns.Client{Net: network, Timeout: 5 * time.Second}).Exchange(m, listen)
		if err != nil {
			t.Fatalf("%s: %v", network, err)
		}
		if len(r.Answer) != 2 || r.Answer[1].(*dns.A).A.String() != "192.0.2.1" {
			t.Errorf("%s: answer %v, want the CNAME and 192.0.2.1", network, r.Answer)
		}
	}
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	var body bytes.Buffer
	body.ReadFrom(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`dnsd_queries_total{qtype="A",rcode="NOERROR"} 2`, `dnsd_passing_edges{pod="pod-1"} 1`, "dnsd_answer_seconds_bucket", "dnsd_snapshot_age_seconds", "go_goroutines"} {
		if !strings.Contains(body.String(), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	if err := dnsd.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-dnsd.Done():
		if err := dnsd.CleanExit(); err != nil {
			t.Errorf("exit after SIGTERM: %v, want status 0", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("dnsd did not exit 10s after SIGTERM")
	}
}
