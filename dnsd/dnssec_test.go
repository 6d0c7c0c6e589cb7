package dnsd

import (
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/podedge/podedge/internal/consultest"
	"github.com/podedge/podedge/router"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// signedHandler is a Handler signing with a new key of algorithm alg, its
// clock set by hand (now), serving benchState; and its router.
func signedHandler(t testing.TB, alg uint8, now *atomic.Int64) (*Handler, *router.Router) {
	t.Helper()
	pemKey, err := generateKey(alg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(path, pemKey, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.MX = []MailExchanger{{Priority: 10, Host: "mx1.mail.example.net."}}
	cfg.NS = []NameServer{{Name: "ns1", Addresses: []string{"192.0.2.53"}}, {Name: "ns.sub", Addresses: []string{"192.0.2.54"}}}
	cfg.DNSSEC.Enabled, cfg.DNSSEC.KeyFile = true, path
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	h, err := NewHandler(cfg, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	h.clock.set = now.Load
	r, err := router.New(router.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	r.Subscribe(h.Update)
	r.Publish(benchState())
	return h, r
}

// doQuery asks name/qtype with DO set (and CO when co) and parses the
// answer.
func doQuery(t testing.TB, h *Handler, name string, qtype uint16, co bool) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(1232, true)
	if co {
		m.IsEdns0().SetCo(true)
	}
	r := new(dns.Msg)
	if err := r.Unpack(h.Handle(pack(t, m), make([]byte, 1232), true)); err != nil {
		t.Fatal(err)
	}
	return r
}

// verifySection checks that every RRset of rrs has one RRSIG that verifies
// with key at time now, and returns the RRsets' types (besides RRSIG).
func verifySection(t testing.TB, key *dns.DNSKEY, rrs []dns.RR, now time.Time) []string {
	t.Helper()
	sets := map[string][]dns.RR{}
	var sigs []*dns.RRSIG
	var order []string
	for _, rr := range rrs {
		if s, ok := rr.(*dns.RRSIG); ok {
			sigs = append(sigs, s)
			continue
		}
		k := strings.ToLower(rr.Header().Name) + "/" + dns.TypeToString[rr.Header().Rrtype]
		if sets[k] == nil {
			order = append(order, k)
		}
		sets[k] = append(sets[k], rr)
	}
	for _, k := range order {
		set := sets[k]
		var found *dns.RRSIG
		for _, s := range sigs {
			if s.TypeCovered == set[0].Header().Rrtype && strings.EqualFold(s.Hdr.Name, set[0].Header().Name) {
				found = s
			}
		}
		if found == nil {
			t.Errorf("%s has no RRSIG", k)
			continue
		}
		if err := found.Verify(key, set); err != nil {
			t.Errorf("RRSIG of %s does not verify: %v", k, err)
		}
		if !found.ValidityPeriod(now) {
			t.Errorf("RRSIG of %s is not valid now: %d to %d", k, found.Inception, found.Expiration)
		}
	}
	if len(sigs) != len(order) {
		t.Errorf("%d RRSIGs for %d RRsets", len(sigs), len(order))
	}
	return order
}

func nsecOf(r *dns.Msg) *dns.NSEC {
	for _, rr := range r.Ns {
		if n, ok := rr.(*dns.NSEC); ok {
			return n
		}
	}
	return nil
}

func typeNames(types []uint16) string {
	var out []string
	for _, t := range types {
		out = append(out, dns.TypeToString[t])
	}
	return strings.Join(out, " ")
}

// TestDNSSEC checks the signed answers of each kind of name, for both
// algorithms: every RRset of the answer and authority sections has an
// RRSIG that verifies with the zone's DNSKEY; each of a pod's 15
// rotations of 13 addresses is signed; NODATA and names that do not exist
// get compact denials (RFC 9824) whose NSEC says which types exist;
// answers without DO are unchanged.
func TestDNSSEC(t *testing.T) {
	for _, alg := range []uint8{dns.ECDSAP256SHA256, dns.ED25519} {
		t.Run(dns.AlgorithmToString[alg], func(t *testing.T) {
			var now atomic.Int64
			now.Store(time.Now().Unix())
			h, _ := signedHandler(t, alg, &now)
			key := h.signer().dnskey
			at := time.Unix(now.Load(), 0)
			check := func(t *testing.T, r *dns.Msg) {
				t.Helper()
				verifySection(t, key, r.Answer, at)
				verifySection(t, key, r.Ns, at)
			}

			t.Run("pod A, every rotation", func(t *testing.T) {
				leads := map[string]bool{}
				for i := 0; i < 15; i++ {
					r := doQuery(t, h, "pod-1.pods.example.test.", dns.TypeA, false)
					if len(addrs(r)) != 13 {
						t.Fatalf("%d addresses", len(addrs(r)))
					}
					check(t, r)
					leads[addrs(r)[0]] = true
				}
				if len(leads) != 15 {
					t.Errorf("%d rotations seen, want 15", len(leads))
				}
			})
			t.Run("tenant A: CNAME and the pod's set, each signed, asked in mixed case", func(t *testing.T) {
				r := doQuery(t, h, "AcMe.example.TEST.", dns.TypeA, false)
				if types := verifySection(t, key, r.Answer, at); len(types) != 2 {
					t.Errorf("answer sets %v, want the CNAME and the A set", types)
				}
			})
			for _, qtype := range []uint16{dns.TypeSOA, dns.TypeNS, dns.TypeDNSKEY, dns.TypeCDS, dns.TypeCDNSKEY, dns.TypeNSEC} {
				t.Run("apex "+dns.TypeToString[qtype], func(t *testing.T) {
					r := doQuery(t, h, "example.test.", qtype, false)
					if len(r.Answer) < 2 || r.Answer[0].Header().Rrtype != qtype {
						t.Fatalf("answer %v", r.Answer)
					}
					check(t, r)
				})
			}
			t.Run("CDS is the DS of the DNSKEY", func(t *testing.T) {
				cds := doQuery(t, h, "example.test.", dns.TypeCDS, false).Answer[0].(*dns.CDS)
				if ds := key.ToDS(dns.SHA256); cds.Digest != ds.Digest || cds.KeyTag != ds.KeyTag {
					t.Errorf("CDS %v, DS %v", cds, ds)
				}
			})
			denials := []struct {
				name, qname string
				qtype       uint16
				co          bool
				rcode       int
				owner, bits string
			}{
				{"NODATA at a pod", "pod-1.pods.example.test.", dns.TypeAAAA, false, dns.RcodeSuccess, "pod-1.pods.example.test.", "A MX RRSIG NSEC"},
				{"NODATA after a CNAME", "acme.example.test.", dns.TypeTXT, false, dns.RcodeSuccess, "pod-1.pods.example.test.", "A MX RRSIG NSEC"},
				{"NODATA at the apex", "example.test.", dns.TypeTXT, false, dns.RcodeSuccess, "example.test.", "NS SOA RRSIG NSEC DNSKEY CDS CDNSKEY"},
				{"NODATA at a name server", "ns1.example.test.", dns.TypeAAAA, false, dns.RcodeSuccess, "ns1.example.test.", "A RRSIG NSEC"},
				{"an empty non-terminal", "pods.example.test.", dns.TypeA, false, dns.RcodeSuccess, "pods.example.test.", "RRSIG NSEC"},
				{"an empty non-terminal of a name server", "sub.example.test.", dns.TypeA, false, dns.RcodeSuccess, "sub.example.test.", "RRSIG NSEC"},
				{"a name that does not exist", "NoPe.example.test.", dns.TypeA, false, dns.RcodeSuccess, "nope.example.test.", "RRSIG NSEC NXNAME"},
				{"the same with CO: NXDOMAIN", "nope.example.test.", dns.TypeA, true, dns.RcodeNameError, "nope.example.test.", "RRSIG NSEC NXNAME"},
				{"below a tenant", "x.acme.example.test.", dns.TypeA, false, dns.RcodeSuccess, "x.acme.example.test.", "RRSIG NSEC NXNAME"},
			}
			for _, c := range denials {
				t.Run(c.name, func(t *testing.T) {
					r := doQuery(t, h, c.qname, c.qtype, c.co)
					if r.Rcode != c.rcode || !r.Authoritative {
						t.Errorf("rcode %s, aa %v; want %s", dns.RcodeToString[r.Rcode], r.Authoritative, dns.RcodeToString[c.rcode])
					}
					check(t, r)
					n := nsecOf(r)
					if n == nil {
						t.Fatalf("no NSEC: %v", r.Ns)
					}
					if !strings.EqualFold(n.Hdr.Name, c.owner) || n.NextDomain != `\000.`+c.owner || typeNames(n.TypeBitMap) != c.bits {
						t.Errorf("NSEC %v, want %s with next \\000.%s and types %s", n, c.owner, c.owner, c.bits)
					}
					if n.Hdr.Ttl != 30 {
						t.Errorf("NSEC TTL %d, want the negative TTL 30", n.Hdr.Ttl)
					}
					if c.co && !r.IsEdns0().Co() {
						t.Error("CO not set in the answer")
					}
				})
			}
			t.Run("without DO: no signatures", func(t *testing.T) {
				for _, name := range []string{"acme.example.test.", "nope.example.test.", "example.test."} {
					r := answerOf(t, h, name, dns.TypeA)
					for _, rr := range append(r.Answer, r.Ns...) {
						if rt := rr.Header().Rrtype; rt == dns.TypeRRSIG || rt == dns.TypeNSEC {
							t.Errorf("%s without DO: %v", name, rr)
						}
					}
				}
				if r := answerOf(t, h, "nope.example.test.", dns.TypeA); r.Rcode != dns.RcodeNameError {
					t.Errorf("a missing name without DO: %s", dns.RcodeToString[r.Rcode])
				}
			})
			t.Run("NXNAME asked for: FORMERR", func(t *testing.T) {
				if r := doQuery(t, h, "nope.example.test.", typeNXNAME, false); r.Rcode != dns.RcodeFormatError {
					t.Errorf("rcode %s", dns.RcodeToString[r.Rcode])
				}
			})
		})
	}
}

// TestDNSSECChanges checks that a tenant added by a delta and an edge
// failing are answered signed, that a denial for a name is signed once and
// then served from the cache, and that signatures are made again once due:
// after the clock moves past the refresh time, every answer's signatures
// verify at the new time and expire later than before.
func TestDNSSECChanges(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Now().Unix())
	h, r := signedHandler(t, dns.ECDSAP256SHA256, &now)
	key := h.signer().dnskey
	st := benchState()
	st.Tenants = append(slices.Clone(st.Tenants), router.Tenant{Name: "globex", Pod: "pod-1"})
	st.Edges = slices.Clone(st.Edges)
	st.Edges[0].Passing = false
	st.Index = 2
	h.apply(r.Publish(st), []string{"globex"}, false)
	at := time.Unix(now.Load(), 0)
	for _, name := range []string{"globex.example.test.", "pod-1.pods.example.test."} {
		a := doQuery(t, h, name, dns.TypeA, false)
		verifySection(t, key, a.Answer, at)
		if slices.Contains(addrs(a), "192.0.2.1") {
			t.Errorf("%s still answers the failed edge", name)
		}
	}

	for range 3 {
		doQuery(t, h, "gone.example.test.", dns.TypeA, false)
	}
	if got := counterValue(t, h.m.denialsSigned); got != 1 {
		t.Errorf("%v denials signed for three queries of one name, want 1", got)
	}

	expBefore := doQuery(t, h, "globex.example.test.", dns.TypeA, false).Answer[1].(*dns.RRSIG).Expiration
	now.Add(8 * 24 * 3600) // past the 7-day refresh, within the 14-day lifetime
	for h.resign(100) {
	}
	at = time.Unix(now.Load(), 0)
	for _, q := range []struct {
		name  string
		qtype uint16
	}{{"globex.example.test.", dns.TypeA}, {"acme.example.test.", dns.TypeA}, {"example.test.", dns.TypeSOA}, {"example.test.", dns.TypeDNSKEY}, {"ns1.example.test.", dns.TypeA}, {"pod-1.pods.example.test.", dns.TypeMX}, {"pods.example.test.", dns.TypeA}, {"gone.example.test.", dns.TypeA}} {
		a := doQuery(t, h, q.name, q.qtype, false)
		verifySection(t, key, a.Answer, at)
		verifySection(t, key, a.Ns, at)
	}
	expAfter := doQuery(t, h, "globex.example.test.", dns.TypeA, false).Answer[1].(*dns.RRSIG).Expiration
	if int32(expAfter-expBefore) <= 0 {
		t.Errorf("the CNAME's signature expires at %d, as before (%d)", expAfter, expBefore)
	}
}

func counterValue(t testing.TB, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestDNSSECConsulKey starts two dnsd against one Consul with the key in
// KV and generate on: they make and store it with check-and-set, and both
// end up signing with the same key, the one in Consul.
func TestDNSSECConsulKey(t *testing.T) {
	agent := consultest.Start(t)
	putPod(t, agent, "pod-1")
	edge(t, agent, "e1", "pod-1", "192.0.2.1", "passing")
	putTenant(t, agent, "acme", "pod-1")
	var servers []*testServer
	for range 2 {
		servers = append(servers, startServer(t, agent, func(c *Config) { c.DNSSEC.Enabled = true }))
	}
	var keys []string
	for _, ts := range servers {
		consultest.WaitFor(t, 10*time.Second, "a signed zone", func() bool {
			return ts.metric(t, "dnsd_dnssec_signed") == 1 && len(ts.query(t, "udp", "example.test.", dns.TypeDNSKEY).Answer) == 1
		})
		keys = append(keys, ts.query(t, "udp", "example.test.", dns.TypeDNSKEY).Answer[0].String())
	}
	pair, _, err := agent.Client.KV().Get("podedge/dnssec/example.test", nil)
	if err != nil || pair == nil {
		t.Fatalf("no key in Consul: %v", err)
	}
	k, err := parseKey(pair.Value)
	if err != nil {
		t.Fatal(err)
	}
	want := dnskeyOf(k, "example.test.", 3600).String()
	if keys[0] != want || keys[1] != want {
		t.Errorf("DNSKEYs %q and %q, want the one in Consul %q", keys[0], keys[1], want)
	}
}

// BenchmarkSignedQuery answers with DO set from a signed zone: the
// signatures are copied like the records; a name that does not exist is
// signed once, then answered from the denial cache.
func BenchmarkSignedQuery(b *testing.B) {
	var now atomic.Int64
	now.Store(time.Now().Unix())
	h, _ := signedHandler(b, dns.ECDSAP256SHA256, &now)
	for _, c := range []struct{ name, qname string }{{"pod", "pod-1.pods.example.test."}, {"tenant", "acme.example.test."}, {"nxdomain", "nope.example.test."}} {
		b.Run(c.name, func(b *testing.B) {
			m := new(dns.Msg)
			m.SetQuestion(c.qname, dns.TypeA)
			m.SetEdns0(1232, true)
			q := pack(b, m)
			out := make([]byte, 1232)
			h.Handle(q, out, true)
			b.ReportAllocs()
			for b.Loop() {
				h.Handle(q, out, true)
			}
		})
	}
}

// BenchmarkSignedBuild is the cost of signing: "full/100k" a first build
// of 100,000 tenants in 100 pods of 13 edges, every CNAME signed;
// "tenant/100k" a tenant moved (its CNAME signed again), as a delta.
func BenchmarkSignedBuild(b *testing.B) {
	var now atomic.Int64
	now.Store(time.Now().Unix())
	h, r := signedHandler(b, dns.ECDSAP256SHA256, &now)
	st := bigState(100_000)
	s := r.Publish(st)
	b.Run("full/100k", func(b *testing.B) {
		var before, after runtime.MemStats
		for b.Loop() {
			h.builder.tenants = newTenantTrie() // nothing to reuse
			h.zone.Store(nil)
			runtime.GC()
			runtime.ReadMemStats(&before)
			h.apply(s, nil, true)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/100_000, "zone-B/tenant")
	})
	moved := slices.Clone(st.Tenants)
	moved[7].Pod = "pod-8"
	stMoved := st
	stMoved.Tenants, stMoved.Index = moved, 2
	pair := [2]*router.Snapshot{r.Publish(stMoved), nil}
	st.Index = 3
	pair[1] = r.Publish(st)
	b.Run("tenant/100k", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			h.apply(pair[i&1], []string{"tenant-7"}, false)
			i++
		}
	})
}
