package router

import (
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

func entry(id, addr string, port int, meta map[string]string, statuses ...string) *api.ServiceEntry {
	e := &api.ServiceEntry{
		Node:    &api.Node{Node: "node-" + id, Address: "192.0.2.100"},
		Service: &api.AgentService{ID: id, Service: "svc", Address: addr, Port: port, Meta: meta},
	}
	for i, s := range statuses {
		e.Checks = append(e.Checks, &api.HealthCheck{CheckID: id + "-" + string(rune('a'+i)), Status: s})
	}
	return e
}

func TestAppsFromHealth(t *testing.T) {
	pod1 := map[string]string{"pod": "pod-1"}
	weighted := entry("w", "10.0.0.9", 80, pod1, api.HealthPassing)
	weighted.Service.Weights = api.AgentWeights{Passing: 5, Warning: 1}
	cases := []struct {
		name    string
		entry   *api.ServiceEntry
		addr    string
		weight  int
		passing bool
		err     string
	}{
		{name: "all checks passing", entry: entry("a", "10.0.0.1", 80, pod1, api.HealthPassing, api.HealthPassing), addr: "10.0.0.1:80", weight: 1, passing: true},
		{name: "no checks counts as passing", entry: entry("b", "10.0.0.2", 80, pod1), addr: "10.0.0.2:80", weight: 1, passing: true},
		{name: "warning is not passing", entry: entry("c", "10.0.0.3", 80, pod1, api.HealthPassing, api.HealthWarning), addr: "10.0.0.3:80", weight: 1},
		{name: "node check critical", entry: entry("d", "10.0.0.4", 80, pod1, api.HealthCritical, api.HealthPassing), addr: "10.0.0.4:80", weight: 1},
		{name: "maintenance is critical", entry: entry("e", "10.0.0.5", 80, pod1, api.HealthMaint), addr: "10.0.0.5:80", weight: 1},
		{name: "node address when the service has none", entry: entry("f", "", 8080, pod1, api.HealthPassing), addr: "192.0.2.100:8080", weight: 1, passing: true},
		{name: "ipv6 address", entry: entry("g", "2001:db8::1", 80, pod1), addr: "[2001:db8::1]:80", weight: 1, passing: true},
		{name: "weights passing honoured", entry: weighted, addr: "10.0.0.9:80", weight: 5, passing: true},
		{name: "missing pod", entry: entry("h", "10.0.0.6", 80, nil), err: "Meta.pod"},
		{name: "bad pod", entry: entry("i", "10.0.0.7", 80, map[string]string{"pod": "Pod_1"}), err: "Meta.pod"},
		{name: "bad port", entry: entry("j", "10.0.0.8", 0, pod1), err: "invalid port"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, errs := appsFromHealth([]*api.ServiceEntry{c.entry})
			if c.err != "" {
				if len(got) != 0 || len(errs) != 1 || !strings.Contains(errs[0].Error(), c.err) {
					t.Fatalf("got %v, errs %v; want an error about %s", got, errs, c.err)
				}
				return
			}
			if len(errs) != 0 || len(got) != 1 {
				t.Fatalf("got %v, errs %v", got, errs)
			}
			if g := got[0]; g.Addr != c.addr || g.Weight != c.weight || g.Passing != c.passing || g.Pod != "pod-1" {
				t.Fatalf("got %+v, want addr %s weight %d passing %v", g, c.addr, c.weight, c.passing)
			}
		})
	}
}

func TestEdgesFromHealth(t *testing.T) {
	ok := entry("e1", "10.0.0.1", 8080, map[string]string{"pod": "pod-1", "public_ip": "198.51.100.1", "public_ipv6": "2001:db8::1"}, api.HealthPassing)
	noIP := entry("e2", "10.0.0.2", 8080, map[string]string{"pod": "pod-1"}, api.HealthPassing)
	v6AsV4 := entry("e3", "10.0.0.3", 8080, map[string]string{"pod": "pod-1", "public_ip": "2001:db8::3"}, api.HealthPassing)
	badV6 := entry("e4", "10.0.0.4", 8080, map[string]string{"pod": "pod-1", "public_ip": "198.51.100.4", "public_ipv6": "nope"}, api.HealthCritical)
	got, errs := edgesFromHealth([]*api.ServiceEntry{badV6, noIP, ok, v6AsV4})
	if len(got) != 2 || got[0].ID != "e1" || got[1].ID != "e4" {
		t.Fatalf("edges = %+v", got)
	}
	if got[0].PublicIP.String() != "198.51.100.1" || got[0].PublicIPv6.String() != "2001:db8::1" || !got[0].Passing {
		t.Fatalf("edge e1 = %+v", got[0])
	}
	if got[1].PublicIPv6.IsValid() || got[1].Passing {
		t.Fatalf("edge e4 = %+v", got[1])
	}
	if len(errs) != 3 {
		t.Fatalf("errs = %v, want three problems named", errs)
	}
}

func TestKVDecoderSkipsMalformed(t *testing.T) {
	d := &kvDecoder[Tenant]{folder: "podedge/tenants/", decode: decodeTenant}
	pairs := api.KVPairs{
		{Key: "podedge/tenants/", ModifyIndex: 1},
		{Key: "podedge/tenants/acme", ModifyIndex: 2, Value: []byte(`{"name":"acme","pod":"pod-1","domains":["WWW.Acme.COM."]}`)},
		{Key: "podedge/tenants/broken", ModifyIndex: 3, Value: []byte(`{"name":`)},
		{Key: "podedge/tenants/Upper", ModifyIndex: 4, Value: []byte(`{"pod":"pod-1"}`)},
		{Key: "podedge/tenants/other", ModifyIndex: 5, Value: []byte(`{"name":"acme","pod":"pod-1"}`)},
		{Key: "podedge/tenants/nopod", ModifyIndex: 6, Value: []byte(`{"name":"nopod"}`)},
		{Key: "podedge/tenants/baddomain", ModifyIndex: 7, Value: []byte(`{"pod":"pod-1","domains":["bad_domain.com"]}`)},
		{Key: "podedge/tenants/a/b", ModifyIndex: 8, Value: []byte(`{}`)},
	}
	got, errs, changed := d.decodeAll(entriesOf(pairs))
	if len(got) != 1 || got[0].Name != "acme" || got[0].Domains[0] != "www.acme.com" || !changed {
		t.Fatalf("decoded %+v changed=%v", got, changed)
	}
	if len(errs) != 6 {
		t.Fatalf("problems %v, want 6", errs)
	}
	// The same values again: nothing new to report, same result, and
	// nothing allocated (a blocking query's timeout answers the same).
	got, errs, changed = d.decodeAll(entriesOf(pairs))
	if len(got) != 1 || len(errs) != 0 || changed {
		t.Fatalf("second pass: %v %v changed=%v", got, errs, changed)
	}
	same := entriesOf(pairs)
	if n := testing.AllocsPerRun(10, func() { d.decodeAll(same) }); n != 0 {
		t.Fatalf("an unchanged folder cost %v allocations", n)
	}
	// A fixed value is picked up by its new ModifyIndex.
	pairs[2] = &api.KVPair{Key: "podedge/tenants/broken", ModifyIndex: 9, Value: []byte(`{"pod":"pod-2"}`)}
	got, _, changed = d.decodeAll(entriesOf(pairs))
	if len(got) != 2 || !changed {
		t.Fatalf("fixed value not decoded: %+v", got)
	}
	// A deleted key is a change too.
	got, _, changed = d.decodeAll(entriesOf(pairs[:2]))
	if len(got) != 1 || !changed {
		t.Fatalf("deletion not seen: %+v changed=%v", got, changed)
	}
}

func TestDecodePod(t *testing.T) {
	if p, err := decodePod("pod-1", []byte(`{"name":"pod-1","region":"eu","lat":53.3,"lon":-6.2,"capacity":100}`)); err != nil || p.Capacity != 100 {
		t.Fatalf("%+v %v", p, err)
	}
	for _, raw := range []string{`{"lat":91}`, `{"lon":-181}`, `{"capacity":-1}`, `[]`, `{"name":"pod-2"}`} {
		if _, err := decodePod("pod-1", []byte(raw)); err == nil {
			t.Errorf("accepted %s", raw)
		}
	}
}

func TestNextIndex(t *testing.T) {
	for _, c := range []struct{ prev, got, want uint64 }{
		{0, 10, 10}, {10, 12, 12}, {10, 10, 10}, {10, 5, 0}, {10, 0, 0},
	} {
		if got := nextIndex(c.prev, c.got); got != c.want {
			t.Errorf("nextIndex(%d, %d) = %d, want %d", c.prev, c.got, got, c.want)
		}
	}
}

func TestCheckLabelAndDomain(t *testing.T) {
	for _, ok := range []string{"a", "pod-1", "0abc", strings.Repeat("a", 63)} {
		if CheckLabel(ok) != nil {
			t.Errorf("rejected %q", ok)
		}
	}
	for _, bad := range []string{"", "-a", "a-", "A", "a_b", "a.b", strings.Repeat("a", 64), "é"} {
		if CheckLabel(bad) == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	if d, err := NormalizeDomain(" Shop.Example.COM. "); err != nil || d != "shop.example.com" {
		t.Fatalf("%q %v", d, err)
	}
	for _, bad := range []string{"", "localhost", "a..b", "-a.com", "a_b.com", strings.Repeat("a.", 130) + "com"} {
		if _, err := NormalizeDomain(bad); err == nil {
			t.Errorf("accepted domain %q", bad)
		}
	}
}

func TestPauseGrowsWithTheCostOfAnAnswer(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct{ minWait, elapsed, cost, want time.Duration }{
		{50 * ms, 10 * ms, 1 * ms, 40 * ms},      // a small folder: MinWait between starts
		{50 * ms, 60 * ms, 0, 0},                 // a long block: no wait
		{50 * ms, 1200 * ms, 400 * ms, 800 * ms}, // 100,000 tenants: twice the cost
		{50 * ms, 60 * ms, -ms, 0},               // clock noise
	} {
		if got := max(pause(c.minWait, c.elapsed, c.cost), 0); got != c.want {
			t.Errorf("pause(%s, %s, %s) = %s, want %s", c.minWait, c.elapsed, c.cost, got, c.want)
		}
	}
}

func TestKVDecoderBase64Values(t *testing.T) {
	d := &kvDecoder[Tenant]{folder: "podedge/tenants/", decode: decodeTenant}
	b64 := func(s string) []byte { return []byte(base64.StdEncoding.EncodeToString([]byte(s))) }
	entries := []KVEntry{
		{Key: []byte("podedge/tenants/acme"), ModifyIndex: 2, Value: b64(`{"name":"acme","pod":"pod-1"}`), Base64: true},
		{Key: []byte("podedge/tenants/bad"), ModifyIndex: 3, Value: []byte("not base64!"), Base64: true},
		{Key: []byte("podedge/tenants/beta"), ModifyIndex: 4, Value: b64(`{"pod":"pod-2"}`), Base64: true},
	}
	got, errs, changed := d.decodeAll(entries)
	if len(got) != 2 || got[0].Name != "acme" || got[1].Name != "beta" || got[1].Pod != "pod-2" || !changed {
		t.Fatalf("decoded %+v changed=%v", got, changed)
	}
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), `key "podedge/tenants/bad": value is not base64`) {
		t.Fatalf("problems %v", errs)
	}
}

// BenchmarkDecodeTenants100k is the decoding of a folder of 100,000
// tenants: answered again unchanged (a blocking query's timeout), and with
// one value changed.
func BenchmarkDecodeTenants100k(b *testing.B) {
	pairs := make(api.KVPairs, 0, 100_000)
	for i := range 100_000 {
		pairs = append(pairs, &api.KVPair{Key: fmt.Sprintf("podedge/tenants/t-%06d", i), ModifyIndex: uint64(i + 1),
			Value: fmt.Appendf(nil, `{"name":"t-%06d","pod":"pod-%d"}`, i, i%100)})
	}
	d := &kvDecoder[Tenant]{folder: "podedge/tenants/", decode: decodeTenant}
	entries := entriesOf(pairs)
	d.decodeAll(entries)
	b.Run("unchanged", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, changed := d.decodeAll(entries); changed {
				b.Fatal("changed")
			}
		}
	})
	b.Run("one-changed", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			entries[0].ModifyIndex++
			if _, _, changed := d.decodeAll(entries); !changed {
				b.Fatal("unchanged")
			}
		}
	})
}

// The decoder's values follow additions, deletions and changes anywhere in
// the folder, and a read cut short leaves nothing behind.
func TestKVDecoderFollowsChangesInPlace(t *testing.T) {
	d := &kvDecoder[Tenant]{folder: "p/tenants/", decode: decodeTenant}
	entries := func(keys ...string) []KVEntry {
		var out []KVEntry
		for _, k := range keys {
			name, index, _ := strings.Cut(k, "@")
			n, _ := strconv.Atoi(index)
			out = append(out, KVEntry{Key: []byte("p/tenants/" + name), ModifyIndex: uint64(n), Value: []byte(`{"pod":"pod-` + index + `"}`)})
		}
		return out
	}
	names := func(v []*Tenant) string {
		var s []string
		for _, t := range v {
			s = append(s, t.Name+"@"+strings.TrimPrefix(t.Pod, "pod-"))
		}
		return strings.Join(s, " ")
	}
	delta := func() string {
		var s []string
		for _, c := range d.delta {
			if c.value == nil {
				s = append(s, "-"+c.name)
			} else {
				s = append(s, c.name)
			}
		}
		return strings.Join(s, " ")
	}
	for i, c := range []struct {
		keys        []string
		want        string
		changed     bool
		delta       string
		wholeAnswer bool
	}{
		{[]string{"a@1", "b@2", "c@3"}, "a@1 b@2 c@3", true, "a b c", true},
		{[]string{"a@1", "b@2", "c@3"}, "a@1 b@2 c@3", false, "", false},
		{[]string{"a@1", "c@3"}, "a@1 c@3", true, "-b", false},
		{[]string{"a@1", "b@4", "c@3"}, "a@1 b@4 c@3", true, "b", false},
		{[]string{"a@1", "b@4", "c@5"}, "a@1 b@4 c@5", true, "c", false},
		{[]string{"a@1", "b@4"}, "a@1 b@4", true, "-c", false},
		{[]string{"0@6", "a@1", "b@4"}, "0@6 a@1 b@4", true, "0", false},
		{[]string{"0@6", "a@1", "b@4"}, "0@6 a@1 b@4", false, "", false},
	} {
		got, _, changed := d.decodeAll(entries(c.keys...))
		if names(got) != c.want || changed != c.changed || delta() != c.delta || d.whole != c.wholeAnswer {
			t.Fatalf("answer %d: %s changed=%v delta %q whole=%v, want %s changed=%v delta %q whole=%v",
				i, names(got), changed, delta(), d.whole, c.want, c.changed, c.delta, c.wholeAnswer)
		}
	}
	// A read cut short after a change: the next read decodes all again
	// and reports the change.
	d.begin()
	for _, e := range entries("0@6", "a@7") {
		d.add(&e)
	}
	d.abort()
	got, _, changed := d.decodeAll(entries("0@6", "a@7", "b@4"))
	if names(got) != "0@6 a@7 b@4" || !changed || !d.whole {
		t.Fatalf("after a read cut short: %s changed=%v", names(got), changed)
	}
}

// Without a streaming lister, a read goes through ListKV and ReadKV.
func TestReadsWithoutAStreamer(t *testing.T) {
	l := fakeLister{entries: []KVEntry{{Key: []byte("p/tenants/a"), ModifyIndex: 3}, {Key: []byte("p/tenants/b"), ModifyIndex: 4}}}
	var keys []string
	collect := func(e *KVEntry) error { keys = append(keys, string(e.Key)); return nil }
	if meta, err := ListEach(l, "p/tenants/", nil, collect); err != nil || meta.LastIndex != 9 {
		t.Fatalf("list: %v %v", meta, err)
	}
	if meta, err := ReadEach(l, nil, []string{"p/tenants/"}, nil, collect); err != nil || meta.LastIndex != 9 {
		t.Fatalf("read: %v %v", meta, err)
	}
	if strings.Join(keys, " ") != "p/tenants/a p/tenants/b p/tenants/a p/tenants/b" {
		t.Fatalf("entries %q", keys)
	}
}

type fakeLister struct{ entries []KVEntry }

func (f fakeLister) ListKV(string, *api.QueryOptions) (*KVList, *api.QueryMeta, error) {
	return &KVList{Entries: f.entries}, &api.QueryMeta{LastIndex: 9}, nil
}

func (f fakeLister) ReadKV([]string, []string, *api.QueryOptions) (*KVList, *api.QueryMeta, error) {
	return &KVList{Entries: f.entries}, &api.QueryMeta{LastIndex: 9}, nil
}
