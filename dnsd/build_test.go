package dnsd

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"
	"github.com/podedge/podedge/router"
)

// handlerWith returns a Handler fed by a router that tests publish to by
// hand, and the router; logs go to logs when it is not nil.
func handlerWith(t testing.TB, cfg Config, logs *bytes.Buffer) (*Handler, *router.Router) {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	if logs != nil {
		log = slog.New(slog.NewTextHandler(logs, nil))
	}
	h, err := NewHandler(cfg, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	r, err := router.New(router.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	r.Subscribe(h.Update)
	return h, r
}

// answerOf runs one query through h and parses the answer.
func answerOf(t testing.TB, h *Handler, name string, qtype uint16) *dns.Msg {
	t.Helper()
	out := make([]byte, 1232)
	resp := h.Handle(packQuery(t, name, qtype, true), out, true)
	if resp == nil {
		t.Fatalf("%s %s: no answer", name, dns.TypeToString[qtype])
	}
	r := new(dns.Msg)
	if err := r.Unpack(resp); err != nil {
		t.Fatal(err)
	}
	return r
}

func edgesOf(pod string, n int, passing bool) []router.EdgeEndpoint {
	var out []router.EdgeEndpoint
	for i := 1; i <= n; i++ {
		ip := fmt.Sprintf("192.0.2.%d", i)
		out = append(out, router.EdgeEndpoint{
			Endpoint: router.Endpoint{ID: "edge-" + ip, Node: "n", Pod: pod, Addr: ip + ":80", Weight: 1, Passing: passing},
			PublicIP: netip.MustParseAddr(ip),
		})
	}
	return out
}

// TestRotationAcrossSwaps checks that a new snapshot does not restart the
// rotation at the first edge: the pod's rotor carries over, so that frequent
// swaps (a flapping check elsewhere) do not favour one edge.
func TestRotationAcrossSwaps(t *testing.T) {
	h, r := handlerWith(t, DefaultConfig(), nil)
	st := router.State{Pods: []router.Pod{{Name: "pod-1"}}, Edges: edgesOf("pod-1", 4, true), Index: 1}
	r.Publish(st)
	var leads []string
	for i := 0; i < 8; i++ {
		// A change that does not touch pod-1: a new snapshot every query.
		st.Index++
		st.Apps = []router.Endpoint{{ID: fmt.Sprint(i), Pod: "pod-2", Addr: fmt.Sprintf("10.0.0.%d:80", i+1), Weight: 1, Passing: true}}
		r.Publish(st)
		leads = append(leads, addrs(answerOf(t, h, "pod-1.pods.example.test.", dns.TypeA))[0])
	}
	want := []string{"192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"}
	if strings.Join(leads, " ") != strings.Join(want, " ") {
		t.Errorf("leaders across swaps %v, want %v", leads, want)
	}
}

// TestSerial checks that the serial follows the data served, not the
// snapshots: unchanged DNS data keeps it; any change makes it grow, even
// when Consul's index goes backwards.
func TestSerial(t *testing.T) {
	h, r := handlerWith(t, DefaultConfig(), nil)
	st := router.State{Pods: []router.Pod{{Name: "pod-1"}}, Edges: edgesOf("pod-1", 3, true), Index: 100}
	r.Publish(st)
	if got := h.Serial(); got != 100 {
		t.Fatalf("first serial %d, want the index 100", got)
	}
	st.Index = 120
	st.Apps = []router.Endpoint{{ID: "a", Pod: "pod-1", Addr: "10.0.0.1:80", Weight: 1, Passing: true}}
	r.Publish(st)
	if got := h.Serial(); got != 100 {
		t.Errorf("an app server moved the serial to %d", got)
	}
	st.Index = 130
	st.Edges = edgesOf("pod-1", 2, true)
	r.Publish(st)
	if got := h.Serial(); got != 130 {
		t.Errorf("serial %d after an edge left at index 130, want 130", got)
	}
	st.Index = 7 // a new Consul cluster
	st.Tenants = []router.Tenant{{Name: "acme", Pod: "pod-1"}}
	r.Publish(st)
	if got := h.Serial(); got != 131 {
		t.Errorf("serial %d after a change at a lower index, want 131", got)
	}
	soa := answerOf(t, h, "example.test.", dns.TypeSOA).Answer[0].(*dns.SOA)
	neg := answerOf(t, h, "nobody.example.test.", dns.TypeA).Ns[0].(*dns.SOA)
	if soa.Serial != 131 || neg.Serial != 131 {
		t.Errorf("served serials %d and %d, want 131", soa.Serial, neg.Serial)
	}
}

// TestTenantMapReuse checks that a change of health leaves the tenant trie
// as it was, shared with the previous zone, and that the answers follow a
// change of tenants.
func TestTenantMapReuse(t *testing.T) {
	h, r := handlerWith(t, DefaultConfig(), nil)
	st := router.State{
		Pods:    []router.Pod{{Name: "pod-1"}, {Name: "pod-2"}},
		Tenants: []router.Tenant{{Name: "acme", Pod: "pod-1"}},
		Edges:   append(edgesOf("pod-1", 1, true), router.EdgeEndpoint{Endpoint: router.Endpoint{ID: "x", Pod: "pod-2", Addr: "198.51.100.1:80", Weight: 1, Passing: true}, PublicIP: netip.MustParseAddr("198.51.100.1")}),
		Index:   1,
	}
	r.Publish(st)
	first := h.zone.Load().tenants.root
	st.Edges = st.Edges[:1] // health changes; tenants do not
	st.Index++
	r.Publish(st)
	if h.zone.Load().tenants.root != first {
		t.Error("the tenant trie was rebuilt although no tenant changed")
	}
	st.Tenants = []router.Tenant{{Name: "acme", Pod: "pod-2"}} // moved
	st.Index++
	r.Publish(st)
	cname := answerOf(t, h, "acme.example.test.", dns.TypeA).Answer[0].(*dns.CNAME)
	if cname.Target != "pod-2.pods.example.test." {
		t.Errorf("after the move the CNAME points at %s", cname.Target)
	}
}

// TestNameConflicts checks that a tenant whose name is taken by a name
// server or by pods.<zone> gets no CNAME, the zone's own name winning, and
// that the conflict is logged once.
func TestNameConflicts(t *testing.T) {
	var logs bytes.Buffer
	cfg := DefaultConfig()
	cfg.NS = []NameServer{{Name: "ns1", Addresses: []string{"192.0.2.53"}}}
	h, r := handlerWith(t, cfg, &logs)
	st := router.State{
		Pods:    []router.Pod{{Name: "pod-1"}},
		Tenants: []router.Tenant{{Name: "ns1", Pod: "pod-1"}, {Name: "pods", Pod: "pod-1"}, {Name: "acme", Pod: "pod-1"}},
		Edges:   edgesOf("pod-1", 1, true),
		Index:   1,
	}
	r.Publish(st)
	st.Tenants = append(st.Tenants[:3:3], router.Tenant{Name: "globex", Pod: "pod-1"})
	st.Index++
	r.Publish(st)
	if got := addrs(answerOf(t, h, "ns1.example.test.", dns.TypeA)); len(got) != 1 || got[0] != "192.0.2.53" {
		t.Errorf("ns1 answers %v, want its glue address", got)
	}
	if a := answerOf(t, h, "pods.example.test.", dns.TypeA); len(a.Answer) != 0 || a.Rcode != dns.RcodeSuccess {
		t.Errorf("pods.example.test. answers %v", a.Answer)
	}
	if a := answerOf(t, h, "globex.example.test.", dns.TypeA); len(a.Answer) != 2 {
		t.Errorf("globex answers %v", a.Answer)
	}
	for _, tenant := range []string{"ns1", "pods"} {
		if n := strings.Count(logs.String(), "tenant="+tenant+" "); n != 1 {
			t.Errorf("conflict of tenant %s logged %d times, want once:\n%s", tenant, n, logs.String())
		}
	}
}

// TestFailOpenTransitions checks that entering and leaving fail-open is
// logged once each.
func TestFailOpenTransitions(t *testing.T) {
	var logs bytes.Buffer
	_, r := handlerWith(t, DefaultConfig(), &logs)
	st := router.State{Pods: []router.Pod{{Name: "pod-1"}}, Edges: edgesOf("pod-1", 2, false), Index: 1}
	r.Publish(st)
	st.Index++
	r.Publish(st)
	st.Edges = edgesOf("pod-1", 2, true)
	st.Index++
	r.Publish(st)
	if n := strings.Count(logs.String(), "no passing edge"); n != 1 {
		t.Errorf("fail-open logged %d times, want once:\n%s", n, logs.String())
	}
	if n := strings.Count(logs.String(), "passing edges again"); n != 1 {
		t.Errorf("recovery logged %d times, want once:\n%s", n, logs.String())
	}
}
