package dnsd

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/child"
	"github.com/podedge/podedge/internal/consultest"
)

// knotSecondary is the configuration of a Knot DNS secondary of dnsd on
// loopback: transfers and NOTIFY signed with the test key.
const knotSecondary = `server:
    rundir: "{{dir}}"
    listen: 127.0.0.1@{{port}}
log:
  - target: stderr
    any: info
database:
    storage: "{{dir}}/db"
key:
  - id: {{key}}
    algorithm: hmac-sha256
    secret: {{secret}}
remote:
  - id: dnsd
    address: {{primary}}
    key: {{key}}
acl:
  - id: notify-from-dnsd
    address: 127.0.0.1
    key: {{key}}
    action: notify
template:
  - id: default
    storage: "{{dir}}"
    zonefile-sync: -1
    zonefile-load: none
zone:
  - domain: example.test.
    master: dnsd
    acl: notify-from-dnsd
`

// startKnot runs knotd as a secondary of the dnsd at primary (host:port)
// on a free port until the test ends, and returns its address.
func startKnot(t *testing.T, port int, primary string) string {
	t.Helper()
	bin, err := exec.LookPath("knotd")
	if err != nil {
		t.Fatalf("knotd is needed (Debian package knot): %v", err)
	}
	dir := t.TempDir()
	host, pport, _ := net.SplitHostPort(primary)
	conf := strings.NewReplacer("{{dir}}", dir, "{{port}}", strconv.Itoa(port), "{{key}}", testKeyName,
		"{{secret}}", testKeySecret, "{{primary}}", host+"@"+pport).Replace(knotSecondary)
	path := filepath.Join(dir, "knot.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := child.Start(child.Spec{Name: "knotd", LogDir: dir, Bin: bin, Args: []string{"-c", path}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop(5 * time.Second)
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "knotd.log"))
			t.Logf("knotd's log:\n%s", log)
		}
	})
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// digAnswer asks server with the real dig and returns the answer section's
// records as "type data" lines, sorted.
func digAnswer(t *testing.T, server, name, qtype string) []string {
	t.Helper()
	host, port, _ := net.SplitHostPort(server)
	out, err := exec.Command("dig", "@"+host, "-p", port, "+norec", "+time=1", "+tries=1", "+noall", "+answer", name, qtype).CombinedOutput()
	if err != nil {
		return nil // a timeout: no answer yet
	}
	var recs []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 && !strings.HasPrefix(line, ";") {
			recs = append(recs, f[3]+" "+strings.Join(f[4:], " "))
		}
	}
	slices.Sort(recs)
	return recs
}

// TestSecondary runs Knot DNS as a secondary of dnsd, with TSIG and
// NOTIFY, and checks with dig against Knot that a tenant put in Consul is
// answered within 2 s, five times over, and that an edge whose check fails
// leaves Knot's answers; and that Knot took the changes by IXFR.
func TestSecondary(t *testing.T) {
	agent := consultest.Start(t)
	putPod(t, agent, "pod-1")
	edge(t, agent, "e1", "pod-1", "192.0.2.1", api.HealthPassing)
	edge(t, agent, "e2", "pod-1", "192.0.2.2", api.HealthPassing)
	putTenant(t, agent, "acme", "pod-1")
	knotPort := consultest.FreePorts(t, 1)[0]
	ts := startServer(t, agent, func(c *Config) {
		c.Transfer.Allow = []string{"127.0.0.1"}
		c.Transfer.Notify = []string{fmt.Sprintf("127.0.0.1:%d", knotPort)}
		c.Transfer.TSIG = TSIGKey{Name: testKeyName, Algorithm: "hmac-sha256", Secret: testKeySecret}
	})
	knot := startKnot(t, knotPort, ts.addr)
	consultest.WaitFor(t, 20*time.Second, "Knot to serve acme", func() bool {
		return slices.Equal(digAnswer(t, knot, "acme.example.test.", "CNAME"), []string{"CNAME pod-1.pods.example.test."})
	})
	if got := digAnswer(t, knot, "pod-1.pods.example.test.", "A"); !slices.Equal(got, []string{"A 192.0.2.1", "A 192.0.2.2"}) {
		t.Fatalf("Knot answers pod-1 A with %v", got)
	}

	var took []time.Duration
	for i := 0; i < 5; i++ {
		name := fmt.Sprintf("newco-%d", i)
		start := time.Now()
		putTenant(t, agent, name, "pod-1")
		consultest.WaitFor(t, 2*time.Second, name+" answered by Knot within 2 s", func() bool {
			return len(digAnswer(t, knot, name+".example.test.", "CNAME")) == 1
		})
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	t.Logf("a tenant put in Consul to Knot answering it: median %s, max %s (%v)", took[2].Round(time.Millisecond), took[4].Round(time.Millisecond), took)

	start := time.Now()
	agent.SetStatus(t, "e2", api.HealthCritical)
	consultest.WaitFor(t, 5*time.Second, "the failed edge to leave Knot's answers", func() bool {
		return slices.Equal(digAnswer(t, knot, "pod-1.pods.example.test.", "A"), []string{"A 192.0.2.1"})
	})
	t.Logf("an edge failing to Knot dropping it: %s", time.Since(start).Round(time.Millisecond))

	if got := ts.metric(t, `dnsd_transfers_total{kind="ixfr",result="ok"}`); got < 6 {
		t.Errorf("%v incremental transfers, want one per change (6)", got)
	}
	if got := ts.metric(t, `dnsd_notify_total{result="ok"}`); got < 6 {
		t.Errorf("%v NOTIFYs answered, want 6 or more", got)
	}
}
