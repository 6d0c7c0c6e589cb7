package dnsd

import (
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"
	"github.com/podedge/podedge/internal/config"
	"github.com/podedge/podedge/internal/consultest"
	"github.com/podedge/podedge/router"
)

const (
	dns01Folder = "podedge/certs/dns01/"
	// Two DNS-01 values as an ACME client computes them (base64url of a
	// SHA-256 digest): the wildcard's and the apex's authorizations of one
	// order share the name.
	token1 = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
	token2 = "9ihDbjxQ2qGmnlr1P8SmOxVGGsXCpOHBCCRZ0Ak4-gc"
	// oddValue has the two characters TXT presentation form escapes.
	oddValue = `a "quoted" \ value`
)

// txtOf returns the TXT values of r's answer section, sorted, after
// checking that every record is a TXT of one string owned by owner with
// ttl. The values are read from the records' wire form: miekg/dns gives
// them in presentation form, quotes and backslashes escaped.
func txtOf(t *testing.T, r *dns.Msg, owner string, ttl uint32) []string {
	t.Helper()
	var out []string
	for _, rr := range r.Answer {
		txt, ok := rr.(*dns.TXT)
		if !ok || len(txt.Txt) != 1 || txt.Hdr.Name != owner || txt.Hdr.Ttl != ttl {
			t.Fatalf("answer record %v, want a TXT of one string owned by %s with TTL %d", rr, owner, ttl)
		}
		buf := make([]byte, dns.Len(rr)+16)
		n, err := dns.PackRR(rr, buf, 0, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		rdata := buf[n-int(txt.Hdr.Rdlength) : n]
		if int(rdata[0]) != len(rdata)-1 {
			t.Fatalf("rdata %q is not one character-string", rdata)
		}
		out = append(out, string(rdata[1:]))
	}
	slices.Sort(out)
	return out
}

// TestACMEChallenges: DNS-01 tokens written to Consul KV by an ACME client
// are answered as TXT records, every value of a name at once, with the
// configured TTL, over UDP and TCP, within moments of being written; the
// names above a challenge name exist (NODATA); keys for names outside the
// zone or not _acme-challenge, and bad values, are not served; once the
// tokens are deleted the name does not exist again; the SOA serial never
// moves; with Consul gone the tokens known keep being answered.
func TestACMEChallenges(t *testing.T) {
	agent := consultest.Start(t)
	putPod(t, agent, "pod-1")
	edge(t, agent, "e1", "pod-1", "192.0.2.1", api.HealthPassing)
	putTenant(t, agent, "shop", "pod-1")
	ts := startServer(t, agent, nil)
	serial := ts.Handler().Serial()

	apex := "_acme-challenge.example.test."
	if r := ts.query(t, "udp", apex, dns.TypeTXT); r.Rcode != dns.RcodeNameError || !r.Authoritative || len(r.Ns) != 1 {
		t.Fatalf("before any token: %v, want NXDOMAIN with the SOA", r)
	}

	written := time.Now()
	agent.Put(t, dns01Folder+"_acme-challenge.example.test/3f2a9c0d17e4b5a6", token1)
	agent.Put(t, dns01Folder+"_acme-challenge.example.test/9b01c2d3e4f5a6b7", token2)
	agent.Put(t, dns01Folder+"_acme-challenge.shop.example.test/1", oddValue)
	agent.Put(t, dns01Folder+"_acme-challenge.www.store.example.test/1", token1)
	// Not served.
	agent.Put(t, dns01Folder+"_acme-challenge.example.net/1", token1)                              // outside the zone
	agent.Put(t, dns01Folder+"www.example.test/1", token1)                                         // not a challenge name
	agent.Put(t, dns01Folder+"_acme-challenge.example.test/bad", "tab\there")                      // not printable
	agent.Put(t, dns01Folder+"_acme-challenge.example.test", token1)                               // no id
	agent.Put(t, dns01Folder+"_acme-challenge."+strings.Repeat("a", 64)+".example.test/1", token1) // a label too long
	consultest.WaitFor(t, 5*time.Second, "both tokens in the answer", func() bool {
		return len(ts.query(t, "udp", apex, dns.TypeTXT).Answer) == 2
	})
	t.Logf("tokens answered %s after they were written", time.Since(written).Round(time.Millisecond))

	both := []string{token2, token1} // sorted
	soa := func(t *testing.T, r *dns.Msg) {
		t.Helper()
		if len(r.Answer) != 0 || len(r.Ns) != 1 || r.Ns[0].Header().Rrtype != dns.TypeSOA {
			t.Errorf("answer %v authority %v, want none and the SOA", r.Answer, r.Ns)
		}
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, tc := range []struct {
			name  string
			qtype uint16
			rcode int
			want  []string // TXT values; nil: check no answer and the SOA
		}{
			{apex, dns.TypeTXT, dns.RcodeSuccess, both},
			{"_ACME-Challenge.Example.TEST.", dns.TypeTXT, dns.RcodeSuccess, both},
			{apex, dns.TypeANY, dns.RcodeSuccess, both},
			{apex, dns.TypeA, dns.RcodeSuccess, nil},
			{apex, dns.TypeCNAME, dns.RcodeSuccess, nil},
			{"_acme-challenge.shop.example.test.", dns.TypeTXT, dns.RcodeSuccess, []string{oddValue}},
			{"_acme-challenge.www.store.example.test.", dns.TypeTXT, dns.RcodeSuccess, []string{token1}},
			{"www.store.example.test.", dns.TypeA, dns.RcodeSuccess, nil}, // empty non-terminals
			{"store.example.test.", dns.TypeTXT, dns.RcodeSuccess, nil},
			{"other.store.example.test.", dns.TypeA, dns.RcodeNameError, nil},
			{"x._acme-challenge.example.test.", dns.TypeTXT, dns.RcodeNameError, nil},
			{"_acme-challenge.nothing.example.test.", dns.TypeTXT, dns.RcodeNameError, nil},
		} {
			t.Run(network+" "+tc.name+" "+dns.TypeToString[tc.qtype], func(t *testing.T) {
				r := ts.query(t, network, tc.name, tc.qtype)
				if r.Rcode != tc.rcode || !r.Authoritative || r.Truncated {
					t.Fatalf("rcode %s aa %v tc %v, want %s aa", dns.RcodeToString[r.Rcode], r.Authoritative, r.Truncated, dns.RcodeToString[tc.rcode])
				}
				if tc.want == nil {
					soa(t, r)
					return
				}
				if got := txtOf(t, r, tc.name, 10); !slices.Equal(got, tc.want) {
					t.Errorf("TXT %q, want %q", got, tc.want)
				}
			})
		}
	}
	// Without EDNS, as an ACME server's resolver may ask: both fit in 512.
	m := new(dns.Msg)
	m.SetQuestion(apex, dns.TypeTXT)
	if r := ts.ask(t, "udp", m); r.Truncated || len(r.Answer) != 2 {
		t.Errorf("without EDNS: tc %v, %d records", r.Truncated, len(r.Answer))
	}
	// The tenant is still the tenant.
	if r := ts.query(t, "udp", "shop.example.test.", dns.TypeA); len(addrs(r)) != 1 {
		t.Errorf("tenant shop: %v", r.Answer)
	}
	if got := ts.metric(t, "dnsd_acme_challenges"); got != 4 {
		t.Errorf("dnsd_acme_challenges = %v, want 4", got)
	}
	if got := ts.metric(t, "dnsd_acme_challenges_ignored"); got != 5 {
		t.Errorf("dnsd_acme_challenges_ignored = %v, want 5", got)
	}

	// The order is done: its tokens go, one, then all.
	kv := agent.Client.KV()
	if _, err := kv.Delete(dns01Folder+"_acme-challenge.example.test/9b01c2d3e4f5a6b7", nil); err != nil {
		t.Fatal(err)
	}
	consultest.WaitFor(t, 5*time.Second, "one token left", func() bool {
		return slices.Equal(txtOf(t, ts.query(t, "udp", apex, dns.TypeTXT), apex, 10), []string{token1})
	})
	for _, p := range []string{"_acme-challenge.example.test/", "_acme-challenge.www.store.example.test/"} {
		if _, err := kv.DeleteTree(dns01Folder+p, nil); err != nil {
			t.Fatal(err)
		}
	}
	consultest.WaitFor(t, 5*time.Second, "the challenge name to be gone", func() bool {
		return ts.query(t, "udp", apex, dns.TypeTXT).Rcode == dns.RcodeNameError
	})
	consultest.WaitFor(t, 5*time.Second, "the empty non-terminal to be gone", func() bool {
		return ts.query(t, "tcp", "store.example.test.", dns.TypeA).Rcode == dns.RcodeNameError
	})
	if got := ts.Handler().Serial(); got != serial {
		t.Errorf("serial moved from %d to %d", serial, got)
	}

	// Consul gone: the token known is still answered.
	agent.Stop()
	r := ts.query(t, "udp", "_acme-challenge.shop.example.test.", dns.TypeTXT)
	if got := txtOf(t, r, "_acme-challenge.shop.example.test.", 10); !slices.Equal(got, []string{oddValue}) {
		t.Errorf("with consul down: %q", got)
	}
}

// TestACMEChallengesConfig: the TTL is configurable, in whole seconds,
// and a bad one names its key.
func TestACMEChallengesConfig(t *testing.T) {
	for _, tc := range []struct{ yaml, err string }{
		{"acme_challenges: {ttl: 1500ms}", "acme_challenges.ttl:"},
		{"acme_challenges: {ttl: -1s}", "acme_challenges.ttl:"},
		{"acme_challenges: {tll: 1s}", `unknown key "tll"`},
	} {
		cfg := DefaultConfig()
		err := config.Decode("dnsd.yaml", []byte(tc.yaml), &cfg)
		if err == nil {
			err = cfg.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: %v, want %q", tc.yaml, err, tc.err)
		}
	}
	if DefaultConfig().ACMEChallenges.TTL != 10*time.Second {
		t.Error("default TTL is not 10s")
	}

	cfg := DefaultConfig()
	cfg.ACMEChallenges.TTL = time.Minute
	h := challengeHandler(t, cfg)
	r := handle(t, h, "_acme-challenge.example.test.", dns.TypeTXT)
	if got := txtOf(t, r, "_acme-challenge.example.test.", 60); !slices.Equal(got, []string{token2, token1}) {
		t.Errorf("TXT %q", got)
	}
}

// challengeHandler is benchHandler's zone, with cfg, serving token1 and
// token2 at _acme-challenge.example.test.
func challengeHandler(tb testing.TB, cfg Config) *Handler {
	tb.Helper()
	h, err := NewHandler(cfg, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatal(err)
	}
	r, err := router.New(router.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	r.Subscribe(h.Update)
	r.Publish(benchState())
	h.challenges.apply(dns01Folder, api.KVPairs{
		{Key: dns01Folder + "_acme-challenge.example.test/a", Value: []byte(token1)},
		{Key: dns01Folder + "_acme-challenge.example.test/b", Value: []byte(token2)},
	}, map[string]uint64{})
	return h
}

// handle asks h name/qtype with EDNS and returns the parsed answer.
func handle(tb testing.TB, h *Handler, name string, qtype uint16) *dns.Msg {
	tb.Helper()
	out := h.Handle(packQuery(tb, name, qtype, true), make([]byte, 1232), true)
	r := new(dns.Msg)
	if err := r.Unpack(out); err != nil {
		tb.Fatalf("%s: answer does not parse: %v", name, err)
	}
	return r
}

// BenchmarkChallengeQuery answers the TXT query of an ACME server: two
// values.
func BenchmarkChallengeQuery(b *testing.B) {
	h := challengeHandler(b, DefaultConfig())
	q := packQuery(b, "_acme-challenge.example.test.", dns.TypeTXT, true)
	out := make([]byte, 1232)
	if resp := h.Handle(q, out, true); resp == nil {
		b.Fatal("no answer")
	}
	b.ReportAllocs()
	for b.Loop() {
		h.Handle(q, out, true)
	}
}

// TestChallengeKeys: whatever the keys under the folder hold, dnsd serves
// only _acme-challenge names inside its zone with printable values, and
// ignores the rest without failing.
func TestChallengeKeys(t *testing.T) {
	c := newChallenges("example.test.", DefaultACMEChallenges(), slog.New(slog.DiscardHandler))
	var pairs api.KVPairs
	for _, rest := range []string{
		"_acme-challenge.example.test/ok",
		"_ACME-Challenge.Example.Test/upper",
		"_acme-challenge.example.test./dot",
		"_acme-challenge/x",
		"_acme-challenge.example.test.evil.example/x",
		"_acme-challenge..example.test/x",
		"_acme-challenge.\\000.example.test/x",
		"_acme-challenge. .example.test/x",
		"_acme-challenge." + strings.Repeat("a.", 130) + "example.test/x",
		"_acme-challenge.example.test/a/b",
		"_acme-challenge.example.test/",
		"/x",
		"",
	} {
		pairs = append(pairs, &api.KVPair{Key: dns01Folder + rest, Value: []byte(token1)})
	}
	pairs = append(pairs,
		&api.KVPair{Key: dns01Folder + "_acme-challenge.example.test/long", Value: []byte(strings.Repeat("x", 256))},
		&api.KVPair{Key: dns01Folder + "_acme-challenge.example.test/empty", Value: nil},
		&api.KVPair{Key: dns01Folder + "_acme-challenge.example.test/nul", Value: []byte("a\x00b")},
	)
	c.apply(dns01Folder, pairs, map[string]uint64{})
	names := *c.names.Load()
	k, _ := wireKey("_acme-challenge.example.test.")
	if len(names) != 1 || names[k] == nil || names[k].txt.n != 1 {
		t.Errorf("%d names served; want _acme-challenge.example.test with its one value", len(names))
	}
}
