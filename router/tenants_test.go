package router

import (
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"
)

const testSuffix = ".example.test"

// randomTenant is a tenant of a few pods with a few domains out of a small
// set, so that claims collide.
func randomTenant(rng *rand.Rand, name string) *Tenant {
	t := &Tenant{Name: name, Pod: fmt.Sprintf("pod-%d", rng.IntN(4)), Created: time.Unix(int64(rng.IntN(50)), 0)}
	for range rng.IntN(3) {
		d := fmt.Sprintf("d%d.com", rng.IntN(30))
		if rng.IntN(10) == 0 {
			d = fmt.Sprintf("t%d%s", rng.IntN(40), testSuffix) // a custom domain that is another's hostname
		}
		if !slices.Contains(t.Domains, d) {
			t.Domains = append(t.Domains, d)
		}
	}
	return t
}

// sameIndex fails unless a and b route every host alike and hold the same
// tenants in the same order, with the same counts per pod.
func sameIndex(t *testing.T, step int, a, b *tenantIndex) {
	t.Helper()
	hosts := []string{"nobody.com", "example.test"}
	for i := range 40 {
		hosts = append(hosts, fmt.Sprintf("t%d%s", i, testSuffix), fmt.Sprintf("d%d.com", i))
	}
	for _, h := range hosts {
		ea, oka := a.lookup([]byte(h))
		eb, okb := b.lookup([]byte(h))
		if oka != okb || oka && (ea.t.Name != eb.t.Name || a.pods[ea.slot] != b.pods[eb.slot]) {
			t.Fatalf("step %d: host %s: incremental %v %+v, full %v %+v", step, h, oka, ea.t, okb, eb.t)
		}
	}
	var na, nb []string
	a.names.ascend("", func(t *Tenant) bool { na = append(na, t.Name); return true })
	b.names.ascend("", func(t *Tenant) bool { nb = append(nb, t.Name); return true })
	if !slices.Equal(na, nb) || a.byName.Len() != len(nb) || a.names.n != len(nb) {
		t.Fatalf("step %d: names %v (%d, %d), want %v", step, na, a.byName.Len(), a.names.n, nb)
	}
	count := func(idx *tenantIndex) map[string]int {
		m := map[string]int{}
		for i, p := range idx.pods {
			if idx.counts[i] != 0 {
				m[p] = idx.counts[i]
			}
		}
		return m
	}
	if ca, cb := count(a), count(b); fmt.Sprint(ca) != fmt.Sprint(cb) {
		t.Fatalf("step %d: tenants per pod %v, want %v", step, ca, cb)
	}
}

// A long random sequence of changes, applied one batch at a time, gives at
// every step the index a full build of the same tenants gives; and the
// indexes of earlier steps are left as they were.
func TestTenantIndexAppliesChangesAsAFullBuildWould(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	seed := maphash.MakeSeed()
	current := map[string]*Tenant{}
	idx := newTenantIndex(seed, testSuffix)
	type kept struct {
		idx   *tenantIndex
		names []string
	}
	var history []kept
	for step := range 3000 {
		var batch []tenantChange
		for range 1 + rng.IntN(3) {
			name := fmt.Sprintf("t%d", rng.IntN(40))
			if rng.IntN(4) == 0 {
				delete(current, name)
				batch = append(batch, tenantChange{name: name})
				continue
			}
			tn := randomTenant(rng, name)
			current[name] = tn
			batch = append(batch, tenantChange{name: name, t: tn})
		}
		idx, _ = idx.apply(batch)
		var all []Tenant
		for _, tn := range current {
			all = append(all, *tn)
		}
		full, _ := buildTenantIndex(seed, testSuffix, all, nil)
		sameIndex(t, step, idx, full)
		if step%500 == 0 {
			var names []string
			idx.names.ascend("", func(t *Tenant) bool { names = append(names, t.Name); return true })
			history = append(history, kept{idx, names})
		}
	}
	for i, h := range history {
		var names []string
		h.idx.names.ascend("", func(t *Tenant) bool { names = append(names, t.Name); return true })
		if !slices.Equal(names, h.names) || h.idx.byName.Len() != len(names) {
			t.Fatalf("index %d changed after later changes: %v, was %v", i, names, h.names)
		}
	}
}

// The leaves and groups of the name list split and empty as tenants come
// and go, and stay in order.
func TestNameListKeepsOrderAcrossSplits(t *testing.T) {
	l := nameList{}
	rng := rand.New(rand.NewPCG(3, 4))
	want := map[string]bool{}
	for range 200000 {
		name := fmt.Sprintf("n%05d", rng.IntN(30000))
		e := l.edit()
		if rng.IntN(3) == 0 {
			e.del(name)
			delete(want, name)
		} else {
			e.put(&Tenant{Name: name})
			want[name] = true
		}
		l = e.done()
	}
	var got []string
	l.ascend("", func(t *Tenant) bool { got = append(got, t.Name); return true })
	if !slices.IsSorted(got) || len(got) != len(want) || l.n != len(want) {
		t.Fatalf("%d names (n %d), sorted %v; want %d", len(got), l.n, slices.IsSorted(got), len(want))
	}
	for _, g := range l.groups {
		if len(g.leaves) == 0 || len(g.leaves) > groupSize {
			t.Fatalf("a group of %d leaves", len(g.leaves))
		}
		for _, lf := range g.leaves {
			if len(lf.names) == 0 || len(lf.names) > leafSize {
				t.Fatalf("a leaf of %d names", len(lf.names))
			}
		}
	}
}

func manyTenants(n int) []Tenant {
	out := make([]Tenant, n)
	for i := range out {
		out[i] = Tenant{Name: fmt.Sprintf("tenant-%07d", i), Pod: fmt.Sprintf("pod-%d", i%50), Created: time.Unix(int64(i), 0)}
		if i%10 == 0 {
			out[i].Domains = []string{fmt.Sprintf("www.customer-%07d.com", i)}
		}
	}
	return out
}

// BenchmarkTenantChange is what one sign-up costs a reader's tenant index:
// the change applied to an index of n tenants.
func BenchmarkTenantChange(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			idx, _ := buildTenantIndex(maphash.MakeSeed(), testSuffix, manyTenants(n), nil)
			runtime.GC() // not the setup's garbage in the timing
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				t := &Tenant{Name: fmt.Sprintf("new-%d", i), Pod: "pod-1", Domains: []string{fmt.Sprintf("new-%d.com", i)}}
				idx, _ = idx.apply([]tenantChange{{name: t.Name, t: t}})
				i++
			}
		})
	}
}

// BenchmarkTenantIndexMemory reports the heap an index holds per tenant
// (one custom domain for every tenth).
func BenchmarkTenantIndexMemory(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				tenants := manyTenants(n)
				runtime.GC()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				idx, _ := buildTenantIndex(maphash.MakeSeed(), testSuffix, tenants, nil)
				runtime.GC()
				runtime.ReadMemStats(&after)
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(n), "index-B/tenant")
				runtime.KeepAlive(idx)
			}
		})
	}
}
