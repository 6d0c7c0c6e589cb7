package dnsd

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/podedge/podedge/internal/child"
	"github.com/podedge/podedge/internal/consultest"
)

// The validation chain of TestValidation: Knot serves the parent zone
// test., signed by Knot itself, holding the delegation of example.test.
// to dnsd and its DS; Unbound validates from a trust anchor for test.;
// delv validates on its own, through Unbound.

const knotParent = `server:
    rundir: "{{dir}}"
    listen: 127.0.0.1@{{port}}
log:
  - target: stderr
    any: info
database:
    storage: "{{dir}}/db"
template:
  - id: default
    storage: "{{dir}}"
    zonefile-sync: -1
    journal-content: none
zone:
  - domain: test.
    file: "{{dir}}/test.zone"
    dnssec-signing: on
`

const unboundConf = `server:
    interface: 127.0.0.1@{{port}}
    port: {{port}}
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{{dir}}"
    pidfile: "{{dir}}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    val-log-level: 2
    module-config: "validator iterator"
    trust-anchor-file: "{{dir}}/test.anchor"
    do-not-query-localhost: no
    qname-minimisation: no
    minimal-responses: no
    # test. is special-use (RFC 6761): Unbound answers it locally unless told.
    local-zone: "test." nodefault
stub-zone:
    name: "test."
    stub-addr: 127.0.0.1@{{parent}}
stub-zone:
    name: "example.test."
    stub-addr: 127.0.0.1@{{child}}
`

// runProgram runs bin with args until the test ends, its log kept in dir
// and shown when the test fails.
func runProgram(t *testing.T, dir, name, bin string, args ...string) {
	t.Helper()
	path, err := exec.LookPath(bin)
	if err != nil {
		t.Fatalf("%s is needed: %v", bin, err)
	}
	p, err := child.Start(child.Spec{Name: name, LogDir: dir, Bin: path, Args: args})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop(5 * time.Second)
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, name+".log"))
			t.Logf("%s's log:\n%s", name, log)
		}
	})
}

func fill(tmpl string, kv ...string) string { return strings.NewReplacer(kv...).Replace(tmpl) }

// TestValidation validates dnsd's signed answers with real validators
// against a local parent holding the DS: Unbound sets AD on a tenant's
// answer, a pod's, a name that does not exist, a NODATA and the DNSKEY;
// delv says "fully validated" for the positive and negative answers; and a
// DS that does not match makes Unbound answer SERVFAIL.
func TestValidation(t *testing.T) {
	for _, tool := range []string{"knotd", "unbound", "delv", "kdig", "dig"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed (Debian packages knot, knot-dnsutils, unbound, bind9-dnsutils): %v", tool, err)
		}
	}
	pemKey, err := generateKey(dns.ECDSAP256SHA256)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "key.pem")
	os.WriteFile(keyFile, pemKey, 0o600)
	ts := startServer(t, nil, func(c *Config) {
		c.DNSSEC.Enabled, c.DNSSEC.KeyFile = true, keyFile
		c.NS = []NameServer{{Name: "ns1", Addresses: []string{"127.0.0.1"}}}
	})
	ts.Router().Publish(benchState())
	_, childPort, _ := net.SplitHostPort(ts.addr)

	for _, c := range []struct {
		name string
		ds   string
		ok   bool
	}{{"the DS of dnsd's key", ts.Handler().DS(), true}, {"a DS of another key", otherDS(t), false}} {
		t.Run(c.name, func(t *testing.T) {
			ports := consultest.FreePorts(t, 2)
			parentPort, resolverPort := strconv.Itoa(ports[0]), strconv.Itoa(ports[1])
			dir := t.TempDir()
			zone := fmt.Sprintf(`test. 3600 IN SOA ns.test. hostmaster.test. 1 3600 600 86400 30
test. 3600 IN NS ns.test.
ns.test. 3600 IN A 127.0.0.1
example.test. 3600 IN NS ns1.example.test.
ns1.example.test. 3600 IN A 127.0.0.1
%s
`, c.ds)
			os.WriteFile(filepath.Join(dir, "test.zone"), []byte(zone), 0o600)
			os.Mkdir(filepath.Join(dir, "db"), 0o700) // Knot's KASP database
			os.WriteFile(filepath.Join(dir, "knot.conf"), []byte(fill(knotParent, "{{dir}}", dir, "{{port}}", parentPort)), 0o600)
			runProgram(t, dir, "knotd", "knotd", "-c", filepath.Join(dir, "knot.conf"))

			// The parent's keys, once Knot has signed: the trust anchor.
			var anchor []string
			consultest.WaitFor(t, 20*time.Second, "Knot to sign test.", func() bool {
				out, _ := exec.Command("kdig", "@127.0.0.1", "-p", parentPort, "+short", "+norec", "test.", "DNSKEY").Output()
				anchor = nil
				for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
					if strings.HasPrefix(line, "257 ") {
						anchor = append(anchor, line)
					}
				}
				return len(anchor) > 0
			})
			var unboundAnchor, delvAnchor strings.Builder
			delvAnchor.WriteString("trust-anchors {\n")
			for _, a := range anchor {
				f := strings.SplitN(a, " ", 4)
				fmt.Fprintf(&unboundAnchor, "test. 3600 IN DNSKEY %s\n", a)
				fmt.Fprintf(&delvAnchor, "  test. static-key %s %s %s %q;\n", f[0], f[1], f[2], strings.ReplaceAll(f[3], " ", ""))
			}
			delvAnchor.WriteString("};\n")
			os.WriteFile(filepath.Join(dir, "test.anchor"), []byte(unboundAnchor.String()), 0o600)
			os.WriteFile(filepath.Join(dir, "delv.anchor"), []byte(delvAnchor.String()), 0o600)
			os.WriteFile(filepath.Join(dir, "unbound.conf"), []byte(fill(unboundConf, "{{dir}}", dir, "{{port}}", resolverPort,
				"{{parent}}", parentPort, "{{child}}", childPort)), 0o600)
			runProgram(t, dir, "unbound", "unbound", "-d", "-c", filepath.Join(dir, "unbound.conf"))

			resolve := func(name, qtype string) string {
				out, _ := exec.Command("dig", "@127.0.0.1", "-p", resolverPort, "+dnssec", "+time=3", "+tries=1", name, qtype).CombinedOutput()
				return string(out)
			}
			consultest.WaitFor(t, 10*time.Second, "Unbound to answer", func() bool {
				return strings.Contains(resolve("test.", "SOA"), "status: NOERROR")
			})
			queries := []struct{ name, qtype, status string }{
				{"acme.example.test.", "A", "NOERROR"},
				{"pod-1.pods.example.test.", "A", "NOERROR"},
				{"example.test.", "DNSKEY", "NOERROR"},
				{"pod-1.pods.example.test.", "AAAA", "NOERROR"},
				{"nobody.example.test.", "A", "NOERROR"}, // compact denial: NOERROR, or NXDOMAIN
			}
			for _, q := range queries {
				out := resolve(q.name, q.qtype)
				ad := regexpFlags(out)
				if c.ok && (!strings.Contains(ad, " ad") || !strings.Contains(out, "status: NOERROR") && !strings.Contains(out, "status: NXDOMAIN")) {
					t.Errorf("%s %s through Unbound, not validated:\n%s", q.name, q.qtype, out)
				}
				if !c.ok && !strings.Contains(out, "status: SERVFAIL") {
					t.Errorf("%s %s with a wrong DS, not SERVFAIL:\n%s", q.name, q.qtype, out)
				}
			}
			if !c.ok {
				return
			}
			for _, q := range []struct{ name, qtype, want string }{
				{"acme.example.test.", "A", "; fully validated"},
				{"pod-1.pods.example.test.", "A", "; fully validated"},
				{"nobody.example.test.", "A", "; negative response, fully validated"},
				{"pod-1.pods.example.test.", "TXT", "; negative response, fully validated"},
			} {
				out, _ := exec.Command("delv", "@127.0.0.1", "-p", resolverPort, "-a", filepath.Join(dir, "delv.anchor"), "+root=test.", q.name, q.qtype).CombinedOutput()
				if !strings.Contains(string(out), q.want) {
					t.Errorf("delv %s %s: want %q:\n%s", q.name, q.qtype, q.want, out)
				}
			}
		})
	}
}

// regexpFlags returns dig's flags line.
func regexpFlags(out string) string {
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, ";; flags:") {
			return line
		}
	}
	return ""
}

// otherDS is the DS of a key that is not dnsd's.
func otherDS(t *testing.T) string {
	pemKey, err := generateKey(dns.ECDSAP256SHA256)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := parseKey(pemKey)
	return dnskeyOf(k, "example.test.", 3600).ToDS(dns.SHA256).String()
}
