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
}

// builder turns a State into a Snapshot. It holds what stays the same from
// one build to the next.
type builder struct {
	zone     string
	registry *Registry
	selector Selector
	health   *PassiveHealth
	clock    func() time.Time
}

// build makes a snapshot of st. The problems it returns (a custom domain
// claimed twice, say) were resolved deterministically and are for logging.
func (b *builder) build(st State) (*Snapshot, []error) {
	now := b.clock()
	s := emptySnapshot(b.zone)
	s.Index, s.Built, s.Synced = st.Index, now, true
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

	s.tenants = make(map[string]*Tenant, len(st.Tenants))
	s.tenantList = make([]*Tenant, 0, len(st.Tenants))
	for i := range st.Tenants {
		t := &st.Tenants[i]
		if _, dup := s.tenants[t.Name]; dup {
			continue
		}
		s.tenants[t.Name] = t
		s.tenantList = append(s.tenantList, t)
	}
	slices.SortFunc(s.tenantList, func(a, b *Tenant) int { return cmp.Compare(a.Name, b.Name) })

	// Tenant hostnames first, so that no custom domain can take one; then
	// custom domains, oldest claim first.
	s.hosts = make(map[string]Route, len(s.tenantList)*2)
	for _, t := range s.tenantList {
		ps := pod(t.Pod)
		ps.Tenants++
		s.hosts[t.Name+s.zoneSuffix] = Route{Tenant: t, Pod: ps}
	}
	byAge := slices.Clone(s.tenantList)
	slices.SortStableFunc(byAge, func(a, b *Tenant) int { return a.Created.Compare(b.Created) })
	for _, t := range byAge {
		for _, d := range t.Domains {
			if prev, taken := s.hosts[d]; taken {
				if prev.Tenant != t {
					problems = append(problems, fmt.Errorf("domain %q of tenant %q is already routed to tenant %q; ignored", d, t.Name, prev.Tenant.Name))
				}
				continue
			}
			s.hosts[d] = Route{Tenant: t, Pod: s.pods[t.Pod]}
		}
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
