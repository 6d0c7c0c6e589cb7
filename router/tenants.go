package router

import (
	"bytes"
	"cmp"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
)

// tenantIndex is the part of a snapshot that depends on the tenants alone:
// the tenants by name and in name order, and the custom domains that route
// to them. It is persistent: applying a change makes a new index that
// shares all but O(1) of its parts with the old one (cowMap, nameList), so
// that with 100,000 tenants a sign-up costs every reader microseconds, not
// a rebuild. A published index is immutable.
type tenantIndex struct {
	zoneSuffix string // "." + the zone without its trailing dot
	byName     cowMap[tenantEntry]
	// domains holds each custom domain's claimants, the one it routes to
	// first (compareClaims). A tenant's own hostname is never here: it is
	// found by name, and wins over any custom domain of the same name.
	domains cowMap[[]tenantEntry]
	names   nameList
	// pods names the slots tenants' pods have; counts how many tenants
	// each holds. A slot, once given, keeps its pod, so that a snapshot can
	// hold its pods per slot and a change of health reuse the index.
	pods   []string
	slotOf map[string]int32
	counts []int
	// from is the State.Tenants a full build was made from, for Publish.
	from []Tenant
}

// tenantEntry is a tenant with its pod's slot.
type tenantEntry struct {
	t    *Tenant
	slot int32
}

// tenantChange is the new value of the tenant name; nil deletes it.
type tenantChange struct {
	name string
	t    *Tenant
}

func newTenantIndex(seed maphash.Seed, zoneSuffix string) *tenantIndex {
	return &tenantIndex{
		zoneSuffix: zoneSuffix,
		byName:     newCowMap[tenantEntry](seed),
		domains:    newCowMap[[]tenantEntry](seed),
		slotOf:     map[string]int32{},
	}
}

// lookup finds the tenant a lower-case host names: by its hostname
// (<name><zoneSuffix>), else as a custom domain.
func (idx *tenantIndex) lookup(h []byte) (tenantEntry, bool) {
	if name, ok := bytes.CutSuffix(h, []byte(idx.zoneSuffix)); ok && len(name) > 0 && bytes.IndexByte(name, '.') < 0 {
		if e, ok := idx.byName.getBytes(name); ok {
			return e, true
		}
	}
	if c, ok := idx.domains.getBytes(h); ok {
		return c[0], true
	}
	return tenantEntry{}, false
}

// buildTenantIndex indexes tenants whole. Of two tenants of one name the
// first is kept. A tenant prev holds keeps its live state.
func buildTenantIndex(seed maphash.Seed, zoneSuffix string, tenants []Tenant, prev *tenantIndex) (*tenantIndex, []error) {
	ptrs := make([]*Tenant, len(tenants))
	for i := range tenants {
		ptrs[i] = &tenants[i]
		ptrs[i].state = nil
	}
	idx, problems := indexTenants(seed, zoneSuffix, ptrs, prev)
	idx.from = tenants
	return idx, problems
}

// indexTenants is buildTenantIndex for tenants the caller allocated; it
// reorders the slice. A tenant that has a live state keeps it (one
// indexed before, and shared with that index, is not written); the
// others take prev's of their name, or a new one.
func indexTenants(seed maphash.Seed, zoneSuffix string, tenants []*Tenant, prev *tenantIndex) (*tenantIndex, []error) {
	idx := newTenantIndex(seed, zoneSuffix)
	// Consul lists keys in order: the tenants of a read come sorted, and
	// the check costs less than a sort. Stable, so that the first of two
	// of a name stays first, and is the one kept.
	byName := func(a, b *Tenant) int { return cmp.Compare(a.Name, b.Name) }
	if !slices.IsSortedFunc(tenants, byName) {
		slices.SortStableFunc(tenants, byName)
	}
	sorted := slices.CompactFunc(tenants, func(a, b *Tenant) bool { return a.Name == b.Name })
	idx.names = buildNameList(sorted)

	names := idx.byName.edit()
	domains := map[string][]tenantEntry{}
	for _, t := range sorted {
		if t.state == nil && prev != nil {
			if old, ok := prev.byName.get(t.Name); ok {
				t.state = old.t.state
			}
		}
		if t.state == nil {
			t.state = new(TenantState)
		}
		e := tenantEntry{t: t, slot: idx.slot(t.Pod)}
		idx.counts[e.slot]++
		names.set(t.Name, e)
		for _, d := range t.Domains {
			domains[d] = append(domains[d], e)
		}
	}
	idx.byName = names.done()
	ed := idx.domains.edit()
	var problems []error
	for d, c := range domains {
		c = dedupClaims(c)
		slices.SortFunc(c, func(a, b tenantEntry) int { return compareClaims(a.t, b.t) })
		ed.set(d, c)
		problems = append(problems, idx.claimProblems(d, c, nil)...)
	}
	idx.domains = ed.done()
	slices.SortFunc(problems, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
	return idx, problems
}

// dedupClaims drops a tenant's second claim of the same domain.
func dedupClaims(c []tenantEntry) []tenantEntry {
	out := c[:0]
	for _, e := range c {
		if !slices.ContainsFunc(out, func(o tenantEntry) bool { return o.t.Name == e.t.Name }) {
			out = append(out, e)
		}
	}
	return out
}

// claimProblems reports the claims of domain d that lose, of the tenants
// in only (all when only is nil).
func (idx *tenantIndex) claimProblems(d string, c []tenantEntry, only map[string]bool) []error {
	var problems []error
	for _, e := range c[1:] {
		if only == nil || only[e.t.Name] {
			problems = append(problems, fmt.Errorf("domain %q of tenant %q is already routed to tenant %q; ignored", d, e.t.Name, c[0].t.Name))
		}
	}
	return problems
}

// slot returns the slot of pod, giving it one if it has none. It writes
// idx's slots: only on an index being built or applied to.
func (idx *tenantIndex) slot(pod string) int32 {
	if s, ok := idx.slotOf[pod]; ok {
		return s
	}
	s := int32(len(idx.pods))
	idx.slotOf[pod] = s
	idx.pods = append(idx.pods, pod)
	idx.counts = append(idx.counts, 0)
	return s
}

// apply returns the index after changes, in order; idx is left as it was.
func (idx *tenantIndex) apply(changes []tenantChange) (*tenantIndex, []error) {
	next := *idx
	next.from = nil
	next.pods = slices.Clip(idx.pods)
	next.counts = slices.Clone(idx.counts)
	newPods := false
	byName := idx.byName.edit()
	domains := idx.domains.edit()
	names := idx.names.edit()
	touched := map[string]bool{}
	changed := map[string]bool{}
	for _, ch := range changes {
		changed[ch.name] = true
		var state *TenantState
		if old, had := byName.get(ch.name); had {
			state = old.t.state
			next.counts[old.slot]--
			for _, d := range old.t.Domains {
				c, _ := domains.get(d)
				c = slices.DeleteFunc(slices.Clone(c), func(e tenantEntry) bool { return e.t.Name == ch.name })
				if len(c) == 0 {
					domains.del(d)
				} else {
					domains.set(d, c)
				}
				touched[d] = true
			}
			if ch.t == nil {
				byName.del(ch.name)
				names.del(ch.name)
			}
		}
		t := ch.t
		if t == nil {
			continue
		}
		if t.state = state; state == nil {
			t.state = new(TenantState)
		}
		if _, ok := next.slotOf[t.Pod]; !ok && !newPods {
			newPods = true
			next.slotOf = make(map[string]int32, len(idx.slotOf)+1)
			for k, v := range idx.slotOf {
				next.slotOf[k] = v
			}
		}
		e := tenantEntry{t: t, slot: next.slot(t.Pod)}
		next.counts[e.slot]++
		byName.set(t.Name, e)
		names.put(t)
		for _, d := range t.Domains {
			c, _ := domains.get(d)
			if slices.ContainsFunc(c, func(o tenantEntry) bool { return o.t.Name == t.Name }) {
				continue
			}
			i, _ := slices.BinarySearchFunc(c, e, func(a, b tenantEntry) int { return compareClaims(a.t, b.t) })
			domains.set(d, slices.Insert(slices.Clone(c), i, e))
			touched[d] = true
		}
	}
	next.byName, next.domains, next.names = byName.done(), domains.done(), names.done()
	var problems []error
	for d := range touched {
		if c, ok := next.domains.get(d); ok {
			problems = append(problems, next.claimProblems(d, c, changed)...)
		}
	}
	slices.SortFunc(problems, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
	return &next, problems
}
