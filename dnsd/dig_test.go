package dnsd

import (
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/consultest"
)

// digResult is what the tests read from dig's output.
type digResult struct {
	out      string
	status   string
	flags    []string
	counts   map[string]int   // QUERY, ANSWER, AUTHORITY, ADDITIONAL
	sections map[string][]rec // "QUESTION", "ANSWER", "AUTHORITY", "ADDITIONAL"
	nsid     string
	udp      string // the buffer size of the OPT pseudo-section, "" without one
}

// rec is one record line: owner, TTL (empty in the question), type, data.
type rec struct {
	name, ttl, rtype, data string
}

var (
	digHeader = regexp.MustCompile(`status: (\w+), id: \d+`)
	digFlags  = regexp.MustCompile(`;; flags: ([a-z ]*); QUERY: (\d+), ANSWER: (\d+), AUTHORITY: (\d+), ADDITIONAL: (\d+)`)
	digNSID   = regexp.MustCompile(`; NSID: [0-9a-f ]+ \("([^"]*)"\)`)
	digUDP    = regexp.MustCompile(`; EDNS: version: \d+, flags:[a-z ]*; udp: (\d+)`)
	digSect   = regexp.MustCompile(`^;; (\w+) SECTION:`)
)

// dig runs the real dig against the server and parses its output.
func (ts *testServer) dig(t *testing.T, args ...string) digResult {
	t.Helper()
	bin, err := exec.LookPath("dig")
	if err != nil {
		t.Fatalf("dig is needed (Debian package dnsutils): %v", err)
	}
	host, port, _ := net.SplitHostPort(ts.addr)
	args = append([]string{"@" + host, "-p", port, "+norec", "+time=5", "+tries=1"}, args...)
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("dig %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	r := digResult{out: string(out), counts: map[string]int{}, sections: map[string][]rec{}}
	if m := digHeader.FindStringSubmatch(r.out); m != nil {
		r.status = m[1]
	}
	if m := digFlags.FindStringSubmatch(r.out); m != nil {
		r.flags = strings.Fields(m[1])
		for i, k := range []string{"QUERY", "ANSWER", "AUTHORITY", "ADDITIONAL"} {
			var n int
			fmt.Sscan(m[i+2], &n)
			r.counts[k] = n
		}
	}
	if m := digNSID.FindStringSubmatch(r.out); m != nil {
		r.nsid = m[1]
	}
	if m := digUDP.FindStringSubmatch(r.out); m != nil {
		r.udp = m[1]
	}
	section := ""
	for _, line := range strings.Split(r.out, "\n") {
		if m := digSect.FindStringSubmatch(line); m != nil {
			section = m[1]
			continue
		}
		if line == "" {
			section = ""
			continue
		}
		if section == "" || section == "OPT" {
			continue
		}
		f := strings.Fields(strings.TrimPrefix(line, ";"))
		switch {
		case section == "QUESTION" && len(f) == 3:
			r.sections[section] = append(r.sections[section], rec{name: f[0], rtype: f[2]})
		case len(f) >= 5:
			r.sections[section] = append(r.sections[section], rec{name: f[0], ttl: f[1], rtype: f[3], data: strings.Join(f[4:], " ")})
		}
	}
	if r.status == "" || r.flags == nil {
		t.Fatalf("cannot read dig's output:\n%s", r.out)
	}
	return r
}

// TestDig queries dnsd with dig, a client nobody here wrote, and reads its
// output: the tenant's CNAME and its pod's edges, flags, NSID, 0x20, TCP,
// NXDOMAIN with the SOA, BADVERS.
func TestDig(t *testing.T) {
	agent := consultest.Start(t)
	putPod(t, agent, "pod-1")
	for i, ip := range ips(1, 14) {
		edge(t, agent, fmt.Sprintf("e%d", i), "pod-1", ip, api.HealthPassing)
	}
	putTenant(t, agent, "acme", "pod-1")
	ts := startServer(t, agent, nil)
	consultest.WaitFor(t, 10*time.Second, "pod-1 to have 14 passing edges", func() bool {
		return ts.metric(t, `dnsd_passing_edges{pod="pod-1"}`) == 14
	})

	for _, transport := range []string{"+notcp", "+tcp"} {
		t.Run("tenant over "+transport, func(t *testing.T) {
			r := ts.dig(t, transport, "+nsid", "AcMe.Example.TEST", "A")
			if r.status != "NOERROR" {
				t.Errorf("status %s", r.status)
			}
			if !slices.Contains(r.flags, "aa") || slices.Contains(r.flags, "ra") || slices.Contains(r.flags, "tc") {
				t.Errorf("flags %v, want aa, neither ra nor tc", r.flags)
			}
			if q := r.sections["QUESTION"]; len(q) != 1 || q[0].name != "AcMe.Example.TEST." {
				t.Errorf("question %v, want AcMe.Example.TEST. as asked", q)
			}
			ans := r.sections["ANSWER"]
			if r.counts["ANSWER"] != 14 || len(ans) != 14 {
				t.Fatalf("%d answers, want the CNAME and 13 addresses:\n%s", len(ans), r.out)
			}
			if ans[0].rtype != "CNAME" || !strings.EqualFold(ans[0].data, "pod-1.pods.example.test.") || ans[0].ttl != "300" {
				t.Errorf("first answer %+v, want CNAME pod-1.pods.example.test. TTL 300", ans[0])
			}
			for _, a := range ans[1:] {
				if a.rtype != "A" || a.ttl != "30" || !slices.Contains(ips(1, 14), a.data) {
					t.Errorf("answer %+v, want an A record of a passing edge with TTL 30", a)
				}
			}
			if r.nsid != "dnsd-test" {
				t.Errorf("NSID %q, want dnsd-test", r.nsid)
			}
			if r.udp != "1232" {
				t.Errorf("EDNS udp %q, want 1232", r.udp)
			}
		})
	}
	t.Run("NXDOMAIN", func(t *testing.T) {
		r := ts.dig(t, "nobody.example.test", "A")
		auth := r.sections["AUTHORITY"]
		if r.status != "NXDOMAIN" || !slices.Contains(r.flags, "aa") || len(auth) != 1 || auth[0].rtype != "SOA" || auth[0].ttl != "30" {
			t.Errorf("status %s flags %v authority %+v, want NXDOMAIN, aa, the SOA with TTL 30:\n%s", r.status, r.flags, auth, r.out)
		}
	})
	t.Run("no EDNS", func(t *testing.T) {
		r := ts.dig(t, "+noedns", "pod-1.pods.example.test", "A")
		if r.status != "NOERROR" || r.udp != "" || r.counts["ANSWER"] != 13 || r.counts["ADDITIONAL"] != 0 {
			t.Errorf("status %s udp %q answers %d additional %d; want 13 answers, no OPT:\n%s", r.status, r.udp, r.counts["ANSWER"], r.counts["ADDITIONAL"], r.out)
		}
	})
	t.Run("EDNS version 1", func(t *testing.T) {
		r := ts.dig(t, "+edns=1", "+noednsnegotiation", "acme.example.test", "A")
		if r.status != "BADVERS" {
			t.Errorf("status %s, want BADVERS:\n%s", r.status, r.out)
		}
	})
	t.Run("apex NS with glue", func(t *testing.T) {
		r := ts.dig(t, "example.test", "NS")
		var ns, glue []string
		for _, a := range r.sections["ANSWER"] {
			ns = append(ns, a.data)
		}
		for _, a := range r.sections["ADDITIONAL"] {
			glue = append(glue, a.name+" "+a.data)
		}
		if !slices.Equal(ns, []string{"ns1.example.test.", "ns2.example.test.", "ns.provider.example.net."}) ||
			!slices.Equal(glue, []string{"ns1.example.test. 192.0.2.53", "ns1.example.test. 2001:db8::53", "ns2.example.test. 198.51.100.53"}) {
			t.Errorf("NS %v glue %v:\n%s", ns, glue, r.out)
		}
	})
}
