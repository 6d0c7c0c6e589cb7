package router

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/changelog"
)

// entryStreamer streams entries made beforehand, as internal/consulkv
// streams Consul's answer.
type entryStreamer struct{ entries []KVEntry }

func (s *entryStreamer) ListKV(string, *api.QueryOptions) (*KVList, *api.QueryMeta, error) {
	return &KVList{Entries: s.entries}, &api.QueryMeta{LastIndex: 1}, nil
}

func (s *entryStreamer) ReadKV([]string, []string, *api.QueryOptions) (*KVList, *api.QueryMeta, error) {
	return &KVList{Entries: s.entries}, &api.QueryMeta{LastIndex: 1}, nil
}

func (s *entryStreamer) StreamList(_ string, q *api.QueryOptions, fn func(*KVEntry) error) (*api.QueryMeta, error) {
	return s.StreamKV(nil, nil, q, fn)
}

func (s *entryStreamer) StreamKV(_, _ []string, _ *api.QueryOptions, fn func(*KVEntry) error) (*api.QueryMeta, error) {
	for i := range s.entries {
		if err := fn(&s.entries[i]); err != nil {
			return nil, err
		}
	}
	return &api.QueryMeta{LastIndex: 1}, nil
}

// tenantEntries are n tenants as the tenants/ folder holds them (base64
// values, as Consul sends them), in 50 pods, a custom domain for every
// tenth.
func tenantEntries(n int) []KVEntry {
	out := make([]KVEntry, 0, n+1)
	out = append(out, KVEntry{Key: []byte("podedge/pods/pod-1"), ModifyIndex: 1, Base64: true,
		Value: []byte(base64.StdEncoding.EncodeToString([]byte(`{"name":"pod-1","capacity":10000000}`)))})
	for i := range n {
		domains := ""
		if i%10 == 0 {
			domains = fmt.Sprintf(`"www.customer-%07d.com"`, i)
		}
		v := fmt.Sprintf(`{"name":"tenant-%07d","pod":"pod-%d","domains":[%s],"created":"2026-11-26T16:05:00.123456789Z"}`, i, i%50, domains)
		out = append(out, KVEntry{Key: fmt.Appendf(nil, "podedge/tenants/tenant-%07d", i), ModifyIndex: uint64(i + 2), Base64: true,
			Value: []byte(base64.StdEncoding.EncodeToString([]byte(v)))})
	}
	return out
}

// benchReader is a router reading n tenants from memory, and its watcher.
func benchReader(b *testing.B, n int) (*entryStreamer, *Router, *watcher) {
	s := &entryStreamer{entries: tenantEntries(n)}
	r, err := New(Config{Logger: slog.New(slog.DiscardHandler), KV: s})
	if err != nil {
		b.Fatal(err)
	}
	return s, r, &watcher{r: r, changed: make(chan struct{}, 1)}
}

// BenchmarkResync is a reader's full read of the platform, from the
// streamed entries to the published index: its time, what it allocates,
// and the heap it holds after, per tenant ("held-B/tenant": the tenants
// and their index).
func BenchmarkResync(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			s, r, w := benchReader(b, n)
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			b.ReportAllocs()
			for b.Loop() {
				f := newFollower(r, w, nil, s, s)
				if _, err := f.resync(context.Background(), &api.QueryOptions{}); err != nil {
					b.Fatal(err)
				}
				if f.idx.byName.Len() != n {
					b.Fatalf("%d tenants", f.idx.byName.Len())
				}
				w.kv = kvState{}
			}
			f := newFollower(r, w, nil, s, s)
			if _, err := f.resync(context.Background(), &api.QueryOptions{}); err != nil {
				b.Fatal(err)
			}
			w.kv = kvState{}
			runtime.GC()
			runtime.ReadMemStats(&after)
			b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(n), "held-B/tenant")
			runtime.KeepAlive(f)
		})
	}
}

// BenchmarkApplyChange is what one change of the log costs a reader past
// the read of the head: decoding its entry, applying it to the index and
// publishing the snapshot (100 pods of 13 edges and 2 app servers).
func BenchmarkApplyChange(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			s, r, w := benchReader(b, n)
			f := newFollower(r, w, nil, s, s)
			if _, err := f.resync(context.Background(), &api.QueryOptions{}); err != nil {
				b.Fatal(err)
			}
			var edges []EdgeEndpoint
			var apps []Endpoint
			for p := range 100 {
				pod := fmt.Sprintf("pod-%d", p)
				for i := range 13 {
					ep := Endpoint{ID: fmt.Sprintf("edge-%d-%d", p, i), Node: "n", Pod: pod, Addr: fmt.Sprintf("10.%d.%d.1:80", p, i), Weight: 1, Passing: true}
					edges = append(edges, EdgeEndpoint{Endpoint: ep, PublicIP: netip.AddrFrom4([4]byte{192, 0, byte(p), byte(i)})})
				}
				for i := range 2 {
					apps = append(apps, Endpoint{ID: fmt.Sprintf("app-%d-%d", p, i), Node: "n", Pod: pod, Addr: fmt.Sprintf("10.%d.%d.2:80", p, i), Weight: 1, Passing: true})
				}
			}
			publish := func() {
				k := w.kv
				r.Publish(State{Pods: k.pods, Edges: edges, Apps: apps, Index: k.index, LogIndex: k.index,
					index: k.tenants, delta: k.delta, deltaFull: k.deltaFull})
				w.kv.delta, w.kv.deltaFull = nil, false
			}
			publish()
			runtime.GC() // not the setup's garbage in the timing
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				name := fmt.Sprintf("new-%07d", i)
				e := changelog.Entry{Seq: uint64(i + 1), Kind: changelog.KindTenant, Name: name,
					Value: fmt.Appendf(nil, `{"name":%q,"pod":"pod-%d","domains":[],"created":"2026-12-04T10:00:00Z"}`, name, i%50)}
				f.apply([]changelog.Entry{e}, uint64(n+i))
				publish()
				i++
			}
		})
	}
}

// A publication that changes only tenants keeps the pods, with their new
// counts, and drops a pod its tenants alone made known once they left.
func TestTenantChangeKeepsThePods(t *testing.T) {
	r, err := New(Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	pods := []Pod{{Name: "pod-1", Capacity: 10}}
	edges := []EdgeEndpoint{{Endpoint: Endpoint{ID: "e1", Node: "n", Pod: "pod-2", Addr: "10.0.0.1:80", Weight: 1, Passing: true},
		PublicIP: netip.MustParseAddr("192.0.2.1")}}
	s1 := r.Publish(State{Pods: pods, Edges: edges, Tenants: []Tenant{{Name: "acme", Pod: "pod-9"}, {Name: "beta", Pod: "pod-1"}}})
	s2 := r.Publish(State{Pods: pods, Edges: edges, Tenants: []Tenant{{Name: "acme", Pod: "pod-1"}, {Name: "beta", Pod: "pod-1"}}})
	if s1.Pod("pod-9") == nil || s1.Pod("pod-9").Tenants != 1 {
		t.Fatalf("first snapshot's pod-9: %+v", s1.Pod("pod-9"))
	}
	if s2.Pod("pod-9") != nil {
		t.Fatalf("pod-9, known by its tenant alone, is still there: %+v", s2.Pod("pod-9"))
	}
	if p := s2.Pod("pod-1"); p == nil || p.Tenants != 2 || !p.Registered {
		t.Fatalf("pod-1: %+v", p)
	}
	if p := s2.Pod("pod-2"); p == nil || len(p.PassingEdges) != 1 || p.EdgePool != s1.Pod("pod-2").EdgePool {
		t.Fatalf("pod-2 did not keep its edges and pool: %+v", p)
	}
	if rt, ok := s2.LookupString("acme.example.test"); !ok || rt.Pod.Name != "pod-1" {
		t.Fatalf("acme routes to %+v", rt)
	}
	if len(s2.Pods()) != 2 || s1.Pod("pod-1").Tenants != 1 {
		t.Fatalf("pods %d; the first snapshot's pod-1 changed: %+v", len(s2.Pods()), s1.Pod("pod-1"))
	}
}
