package dnsd

import (
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"
	"github.com/podedge/podedge/internal/consultest"
)

// answerCase is one question and what its answer must hold.
type answerCase struct {
	name   string
	qtype  uint16
	rcode  int
	aa     bool
	check  func(t *testing.T, r *dns.Msg)
	answer int // records in the answer section
}

// TestAnswers checks the records of every kind of name over UDP and TCP,
// with the data in a real Consul: pods (passing edges only, AAAA from
// public_ipv6, MX), tenants (CNAME chased), the apex (SOA, NS, glue), the
// name servers, negative answers with the SOA and its negative TTL, and
// refusals.
func TestAnswers(t *testing.T) {
	agent := consultest.Start(t)
	putPod(t, agent, "pod-1")
	putPod(t, agent, "pod-2")
	agent.Register(t, &api.AgentServiceRegistration{
		ID: "e1", Name: "edge", Address: "127.0.0.1", Port: 8080,
		Meta: map[string]string{"pod": "pod-1", "public_ip": "192.0.2.1", "public_ipv6": "2001:db8::1"},
	}, api.HealthPassing)
	edge(t, agent, "e2", "pod-1", "192.0.2.2", api.HealthPassing)
	edge(t, agent, "e3", "pod-1", "192.0.2.3", api.HealthCritical)
	putTenant(t, agent, "acme", "pod-1")
	putTenant(t, agent, "globex", "pod-2")
	ts := startServer(t, agent, nil)
	consultest.WaitFor(t, 10*time.Second, "acme to resolve", func() bool {
		return len(addrs(ts.query(t, "udp", "acme.example.test.", dns.TypeA))) == 2
	})

	passing := []string{"192.0.2.1", "192.0.2.2"}
	soaAuthority := func(t *testing.T, r *dns.Msg) {
		t.Helper()
		if len(r.Ns) != 1 {
			t.Fatalf("authority = %v, want the SOA", r.Ns)
		}
		soa, ok := r.Ns[0].(*dns.SOA)
		if !ok || soa.Hdr.Name != "example.test." {
			t.Fatalf("authority = %v, want the zone's SOA", r.Ns[0])
		}
		// RFC 2308: the negative TTL is min(SOA TTL, SOA minimum).
		if soa.Hdr.Ttl != 30 || soa.Minttl != 30 {
			t.Errorf("SOA TTL %d minimum %d, want 30 and 30", soa.Hdr.Ttl, soa.Minttl)
		}
	}
	cname := func(t *testing.T, r *dns.Msg) {
		t.Helper()
		c, ok := r.Answer[0].(*dns.CNAME)
		if !ok || c.Target != "pod-1.pods.example.test." || c.Hdr.Ttl != 300 {
			t.Fatalf("first answer %v, want CNAME pod-1.pods.example.test. with TTL 300", r.Answer[0])
		}
		for _, rr := range r.Answer[1:] {
			if rr.Header().Name != "pod-1.pods.example.test." {
				t.Errorf("chased record %v is not owned by the CNAME's target", rr)
			}
		}
	}
	wantAddrs := func(want ...string) func(t *testing.T, r *dns.Msg) {
		return func(t *testing.T, r *dns.Msg) {
			t.Helper()
			if got := sorted(addrs(r)); !slices.Equal(got, sorted(want)) {
				t.Errorf("addresses %v, want %v", got, want)
			}
		}
	}
	mx := func(t *testing.T, r *dns.Msg) {
		t.Helper()
		var got []string
		for _, rr := range r.Answer {
			if m, ok := rr.(*dns.MX); ok {
				got = append(got, m.Mx)
				if m.Hdr.Ttl != 3600 {
					t.Errorf("MX TTL %d, want 3600", m.Hdr.Ttl)
				}
			}
		}
		if !slices.Equal(got, []string{"mx1.mail.example.net.", "mx2.mail.example.net."}) {
			t.Errorf("MX %v", got)
		}
	}

	cases := []answerCase{
		{name: "pod-1.pods.example.test.", qtype: dns.TypeA, aa: true, answer: 2, check: func(t *testing.T, r *dns.Msg) {
			wantAddrs(passing...)(t, r)
			if ttl := r.Answer[0].Header().Ttl; ttl != 30 {
				t.Errorf("pod TTL %d, want 30", ttl)
			}
		}},
		{name: "pod-1.pods.example.test.", qtype: dns.TypeAAAA, aa: true, answer: 1, check: wantAddrs("2001:db8::1")},
		{name: "pod-1.pods.example.test.", qtype: dns.TypeMX, aa: true, answer: 2, check: mx},
		{name: "pod-1.pods.example.test.", qtype: dns.TypeTXT, aa: true, check: soaAuthority},
		{name: "pod-1.pods.example.test.", qtype: dns.TypeANY, aa: true, answer: 2, check: wantAddrs(passing...)},
		{name: "acme.example.test.", qtype: dns.TypeA, aa: true, answer: 3, check: func(t *testing.T, r *dns.Msg) {
			cname(t, r)
			wantAddrs(passing...)(t, r)
		}},
		{name: "acme.example.test.", qtype: dns.TypeAAAA, aa: true, answer: 2, check: func(t *testing.T, r *dns.Msg) {
			cname(t, r)
			wantAddrs("2001:db8::1")(t, r)
		}},
		{name: "acme.example.test.", qtype: dns.TypeMX, aa: true, answer: 3, check: func(t *testing.T, r *dns.Msg) {
			cname(t, r)
			mx(t, r)
		}},
		{name: "acme.example.test.", qtype: dns.TypeCNAME, aa: true, answer: 1, check: cname},
		{name: "acme.example.test.", qtype: dns.TypeANY, aa: true, answer: 1, check: cname},
		{name: "acme.example.test.", qtype: dns.TypeTXT, aa: true, answer: 1, check: func(t *testing.T, r *dns.Msg) {
			cname(t, r)
			soaAuthority(t, r)
		}},
		// pod-2 has no edge at all: the CNAME, then no data.
		{name: "globex.example.test.", qtype: dns.TypeA, aa: true, answer: 1, check: soaAuthority},
		{name: "example.test.", qtype: dns.TypeSOA, aa: true, answer: 1, check: func(t *testing.T, r *dns.Msg) {
			soa := r.Answer[0].(*dns.SOA)
			if soa.Ns != "ns1.example.test." || soa.Mbox != "hostmaster.example.test." || soa.Serial == 0 ||
				soa.Refresh != 3600 || soa.Retry != 600 || soa.Expire != 1209600 || soa.Minttl != 30 || soa.Hdr.Ttl != 3600 {
				t.Errorf("SOA %v", soa)
			}
		}},
		{name: "example.test.", qtype: dns.TypeNS, aa: true, answer: 3, check: func(t *testing.T, r *dns.Msg) {
			var ns, glue []string
			for _, rr := range r.Answer {
				ns = append(ns, rr.(*dns.NS).Ns)
			}
			for _, rr := range r.Extra {
				switch v := rr.(type) {
				case *dns.A:
					glue = append(glue, v.Hdr.Name+" "+v.A.String())
				case *dns.AAAA:
					glue = append(glue, v.Hdr.Name+" "+v.AAAA.String())
				}
			}
			if !slices.Equal(ns, []string{"ns1.example.test.", "ns2.example.test.", "ns.provider.example.net."}) {
				t.Errorf("NS %v", ns)
			}
			if want := []string{"ns1.example.test. 192.0.2.53", "ns1.example.test. 2001:db8::53", "ns2.example.test. 198.51.100.53"}; !slices.Equal(glue, want) {
				t.Errorf("glue %v, want %v", glue, want)
			}
		}},
		{name: "example.test.", qtype: dns.TypeANY, aa: true, answer: 1, check: func(t *testing.T, r *dns.Msg) {
			if _, ok := r.Answer[0].(*dns.SOA); !ok {
				t.Errorf("ANY at the apex answered %v, want the SOA alone", r.Answer)
			}
		}},
		{name: "example.test.", qtype: dns.TypeA, aa: true, check: soaAuthority},
		{name: "ns1.example.test.", qtype: dns.TypeA, aa: true, answer: 1, check: wantAddrs("192.0.2.53")},
		{name: "ns1.example.test.", qtype: dns.TypeAAAA, aa: true, answer: 1, check: wantAddrs("2001:db8::53")},
		{name: "ns2.example.test.", qtype: dns.TypeAAAA, aa: true, check: soaAuthority},
		// pods.<zone> exists above the pods: no data, not NXDOMAIN.
		{name: "pods.example.test.", qtype: dns.TypeA, aa: true, check: soaAuthority},
		{name: "nobody.example.test.", qtype: dns.TypeA, rcode: dns.RcodeNameError, aa: true, check: soaAuthority},
		{name: "www.acme.example.test.", qtype: dns.TypeA, rcode: dns.RcodeNameError, aa: true, check: soaAuthority},
		{name: "x.pod-1.pods.example.test.", qtype: dns.TypeA, rcode: dns.RcodeNameError, aa: true, check: soaAuthority},
		{name: "pod-9.pods.example.test.", qtype: dns.TypeA, rcode: dns.RcodeNameError, aa: true, check: soaAuthority},
		{name: "example.com.", qtype: dns.TypeA, rcode: dns.RcodeRefused},
		{name: "xexample.test.", qtype: dns.TypeA, rcode: dns.RcodeRefused},
		{name: "test.", qtype: dns.TypeSOA, rcode: dns.RcodeRefused},
		{name: "example.test.", qtype: dns.TypeAXFR, rcode: dns.RcodeRefused},
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, c := range cases {
			t.Run(network+"/"+c.name+"/"+dns.TypeToString[c.qtype], func(t *testing.T) {
				m := new(dns.Msg)
				m.SetQuestion(c.name, c.qtype)
				m.RecursionDesired = true
				m.SetEdns0(1232, false)
				r := ts.ask(t, network, m)
				if r.Rcode != c.rcode {
					t.Fatalf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[c.rcode])
				}
				if r.Authoritative != c.aa {
					t.Errorf("AA %v, want %v", r.Authoritative, c.aa)
				}
				if r.RecursionAvailable || !r.RecursionDesired || r.Truncated {
					t.Errorf("RA %v RD %v TC %v, want RA clear, RD copied, TC clear", r.RecursionAvailable, r.RecursionDesired, r.Truncated)
				}
				if len(r.Answer) != c.answer {
					t.Fatalf("answer %v: %d records, want %d", r.Answer, len(r.Answer), c.answer)
				}
				if c.check != nil {
					c.check(t, r)
				}
			})
		}
	}

	t.Run("class CH is refused", func(t *testing.T) {
		m := new(dns.Msg)
		m.SetQuestion("acme.example.test.", dns.TypeA)
		m.Question[0].Qclass = dns.ClassCHAOS
		if r := ts.ask(t, "udp", m); r.Rcode != dns.RcodeRefused {
			t.Errorf("rcode %s, want REFUSED", dns.RcodeToString[r.Rcode])
		}
	})
}

// TestFailOpen checks that a pod whose edges all fail answers with all of
// them rather than nothing, counts it, and returns to the passing edges
// alone once one passes again.
func TestFailOpen(t *testing.T) {
	agent := consultest.Start(t)
	putPod(t, agent, "pod-3")
	edge(t, agent, "e31", "pod-3", "192.0.2.31", api.HealthCritical)
	edge(t, agent, "e32", "pod-3", "192.0.2.32", api.HealthCritical)
	ts := startServer(t, agent, nil)
	both := []string{"192.0.2.31", "192.0.2.32"}
	consultest.WaitFor(t, 10*time.Second, "pod-3 to answer with its two failing edges", func() bool {
		return slices.Equal(sorted(addrs(ts.query(t, "udp", "pod-3.pods.example.test.", dns.TypeA))), both)
	})
	for _, network := range []string{"udp", "tcp"} {
		r := ts.query(t, network, "pod-3.pods.example.test.", dns.TypeA)
		if r.Rcode != dns.RcodeSuccess || !slices.Equal(sorted(addrs(r)), both) {
			t.Errorf("%s: %s %v, want NOERROR with %v", network, dns.RcodeToString[r.Rcode], addrs(r), both)
		}
	}
	if n := ts.metric(t, `dnsd_fail_open_answers_total{pod="pod-3"}`); n < 2 {
		t.Errorf("dnsd_fail_open_answers_total{pod=\"pod-3\"} = %v, want at least 2", n)
	}
	if n := ts.metric(t, `dnsd_passing_edges{pod="pod-3"}`); n != 0 {
		t.Errorf("dnsd_passing_edges{pod=\"pod-3\"} = %v, want 0", n)
	}

	agent.SetStatus(t, "e32", api.HealthPassing)
	consultest.WaitFor(t, 2*time.Second, "pod-3 to answer with its passing edge only", func() bool {
		return slices.Equal(addrs(ts.query(t, "udp", "pod-3.pods.example.test.", dns.TypeA)), []string{"192.0.2.32"})
	})
	before := ts.metric(t, `dnsd_fail_open_answers_total{pod="pod-3"}`)
	ts.query(t, "udp", "pod-3.pods.example.test.", dns.TypeA)
	if after := ts.metric(t, `dnsd_fail_open_answers_total{pod="pod-3"}`); after != before {
		t.Errorf("a healthy answer counted as fail-open: %v -> %v", before, after)
	}
}
