package router

import (
	"cmp"
	"fmt"
	"slices"
	"time"
)

// State is everything a snapshot is built from: the KV values and the
// health of both services, already decoded. The watcher fills it from
// Consul; tests fill it by hand.
type State struct {
	Pods    []Pod
	Tenants []Tenant
	// Edges and Apps hold every instance, passing or not.
	Edges []EdgeEndpoint
	Apps  []Endpoint
	// Index is the highest Consul index the data was read at.
	Index uint64
	// LogIndex is the Consul index through which the leader's writes are
	// reflected (Snapshot.LogIndex).
	LogIndex uint64
}

// builder turns a State into a Snapshot. It holds what stays the same from
// one build to the next.
type builder struct {
	zone     string
	registry *Registry
	selector Selector
	health   *PassiveHealth
	clock    func() time.Time
	// tenants is the index of the last build, reused while the tenants
	// stay the same.
	tenants *tenantIndex
}

// build makes a snapshot of st. The problems it returns (a custom domain
// claimed twice, say) were resolved deterministically and are for logging;
// they are returned when the tenants change, not at every change of health.
func (b *builder) build(st State) (*Snapshot, []error) {
	now := b.clock()
	s := emptySnapshot(b.zone)
	s.Index, s.LogIndex, s.Built, s.Synced = st.Index, st.LogIndex, now, true
	var problems []error

	pod := func(name string) *PodState {
		p, ok := s.pods[name]
		if !ok {
			p = &PodState{Name: name}
			s.pods[name] = p
		}
		return p
	}
	for _, p := range st.Pods {
		ps := pod(p.Name)
		ps.Pod, ps.Registered = p, true
	}

	// A change of health leaves the tenants as they were: the watcher
	// passes the very same slice, which nobody modifies once published.
	idx := b.tenants
	if idx == nil || !sameSlice(idx.from, st.Tenants) {
		idx = b.indexTenants(st.Tenants, s.zoneSuffix)
		b.tenants = idx
		problems = idx.problems
		s.deltaFull = true
	}
	s.tenants = idx
	s.slots = make([]*PodState, len(idx.pods))
	for i, name := range idx.pods {
		ps := pod(name)
		ps.Tenants = idx.counts[i]
		s.slots[i] = ps
	}

	edges := map[string][]EdgeEndpoint{}
	for _, e := range st.Edges {
		edges[e.Pod] = append(edges[e.Pod], e)
	}
	apps := map[string][]Endpoint{}
	for _, a := range st.Apps {
		apps[a.Pod] = append(apps[a.Pod], a)
	}
	for name := range edges {
		pod(name)
	}
	for name := range apps {
		pod(name)
	}

	b.registry.beginBuild()
	cursors := make(map[string]bool, 2*len(s.pods))
	for name, ps := range s.pods {
		ps.Edges = edges[name]
		var passingEdges []Endpoint
		for _, e := range ps.Edges {
			if e.Passing {
				ps.PassingEdges = append(ps.PassingEdges, e)
				passingEdges = append(passingEdges, e.Endpoint)
			}
		}
		var passingApps []Endpoint
		for _, a := range apps[name] {
			if a.Passing {
				passingApps = append(passingApps, a)
			}
		}
		ps.Apps = b.pool("app/"+name, passingApps, cursors)
		ps.EdgePool = b.pool("edge/"+name, passingEdges, cursors)
		s.podList = append(s.podList, ps)
	}
	b.registry.endBuild(now, cursors)
	slices.SortFunc(s.podList, func(a, b *PodState) int { return cmp.Compare(a.Name, b.Name) })
	return s, problems
}

// pool builds the pool named key over eps, one member per address. It must
// run between registry.beginBuild and endBuild.
func (b *builder) pool(key string, eps []Endpoint, cursors map[string]bool) *Pool {
	p := &Pool{selector: b.selector, health: b.health, clock: b.clock}
	if len(eps) == 0 {
		return p
	}
	seen := make(map[string]bool, len(eps))
	weights := make([]int, 0, len(eps))
	for _, e := range eps {
		if seen[e.Addr] {
			continue
		}
		seen[e.Addr] = true
		p.members = append(p.members, &Member{
			Endpoint:      e,
			EndpointState: b.registry.acquire(e.Addr),
			pool:          p,
			index:         len(p.members),
		})
		weights = append(weights, e.Weight)
	}
	p.schedule = smoothSchedule(weights)
	p.cursor = b.registry.cursor(key)
	cursors[key] = true
	return p
}

// indexTenants builds the tenant index of tenants in a zone (zoneSuffix is
// "." + the zone without its trailing dot).
func (b *builder) indexTenants(tenants []Tenant, zoneSuffix string) *tenantIndex {
	idx := &tenantIndex{
		from:   tenants,
		byName: make(map[string]*Tenant, len(tenants)),
		list:   make([]*Tenant, 0, len(tenants)),
	}
	for i := range tenants {
		t := &tenants[i]
		if _, dup := idx.byName[t.Name]; dup {
			continue
		}
		idx.byName[t.Name] = t
		idx.list = append(idx.list, t)
	}
	slices.SortFunc(idx.list, func(a, b *Tenant) int { return cmp.Compare(a.Name, b.Name) })

	slot := map[string]int{}
	slotOf := func(pod string) int {
		i, ok := slot[pod]
		if !ok {
			i = len(idx.pods)
			slot[pod] = i
			idx.pods = append(idx.pods, pod)
			idx.counts = append(idx.counts, 0)
		}
		return i
	}
	// Tenant hostnames first, so that no custom domain can take one; then
	// custom domains, oldest claim first.
	idx.hosts = make(map[string]hostRoute, len(idx.list)*2)
	for _, t := range idx.list {
		i := slotOf(t.Pod)
		idx.counts[i]++
		idx.hosts[t.Name+zoneSuffix] = hostRoute{tenant: t, slot: i}
	}
	byAge := slices.Clone(idx.list)
	slices.SortStableFunc(byAge, func(a, b *Tenant) int { return a.Created.Compare(b.Created) })
	for _, t := range byAge {
		for _, d := range t.Domains {
			if prev, taken := idx.hosts[d]; taken {
				if prev.tenant != t {
					idx.problems = append(idx.problems, fmt.Errorf("domain %q of tenant %q is already routed to tenant %q; ignored", d, t.Name, prev.tenant.Name))
				}
				continue
			}
			idx.hosts[d] = hostRoute{tenant: t, slot: slot[t.Pod]}
		}
	}
	return idx
}

// sameSlice reports whether a and b are the same slice: same array, same
// length.
func sameSlice[T any](a, b []T) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}
