package router

import (
	"slices"
	"strings"
	"time"
)

// Snapshot is the platform as data at one moment: pods, tenants, the hosts
// that name them and the endpoints that serve them. A published Snapshot is
// immutable: nothing reachable from it may be modified, by anyone.
type Snapshot struct {
	// Zone is the DNS zone, lower case with a trailing dot.
	Zone string
	// Index is the highest Consul index among the data it was built from.
	Index uint64
	// Built is when the snapshot was built.
	Built time.Time
	// Synced is false only for the empty snapshot a Router starts with.
	Synced bool
	// LogIndex is the Consul index through which every write of the
	// leader is reflected in this snapshot: a write the leader answered
	// with X-Podedge-Index N is visible here once LogIndex >= N.
	LogIndex uint64

	pods    map[string]*PodState
	podList []*PodState // sorted by name
	// tenants is shared by every snapshot built from the same tenants;
	// slots are this snapshot's pods in the order of tenants.pods.
	tenants *tenantIndex
	slots   []*PodState
	// delta is what changed in the tenants since the snapshot published
	// before this one; deltaFull when that is not known name by name.
	delta      []string
	deltaFull  bool
	zoneSuffix string // "." + zone without its trailing dot
}

// tenantIndex is the part of a snapshot that depends on the tenants alone:
// the tenants by name and every host that routes to one. With 100,000
// tenants it is most of a build's cost, so a change of health, which leaves
// the tenants as they were, reuses it rather than building it again.
type tenantIndex struct {
	from   []Tenant // the State.Tenants it was built from
	byName map[string]*Tenant
	list   []*Tenant // sorted by name
	hosts  map[string]hostRoute
	// pods names the pods that tenants live in, one slot each, and
	// counts how many tenants each holds.
	pods     []string
	counts   []int
	problems []error
}

// hostRoute is a route whose pod is a slot of the snapshot's pods.
type hostRoute struct {
	tenant *Tenant
	slot   int
}

// PodState is a pod with what serves it.
type PodState struct {
	Name string
	// Pod is the registry value; Registered is false when the pod has
	// services in Consul but no value under <prefix>pods/.
	Pod        Pod
	Registered bool
	// Tenants is how many tenants the pod holds.
	Tenants int
	// Edges holds every instance of the edge service in the pod, passing or
	// not, sorted by node and ID; PassingEdges the passing ones.
	Edges        []EdgeEndpoint
	PassingEdges []EdgeEndpoint
	// Apps balances over the passing app servers; EdgePool over the passing
	// edges, for requests that arrive at another pod's edge. Either may be
	// empty, never nil.
	Apps     *Pool
	EdgePool *Pool
}

// Route is what a Host names: a tenant and the pod it lives in.
type Route struct {
	Tenant *Tenant
	Pod    *PodState
}

// emptySnapshot is what a Router serves before its first sync.
func emptySnapshot(zone string) *Snapshot {
	return &Snapshot{
		Zone:       zone,
		pods:       map[string]*PodState{},
		tenants:    &tenantIndex{byName: map[string]*Tenant{}, hosts: map[string]hostRoute{}},
		zoneSuffix: "." + zone[:len(zone)-1],
	}
}

// Lookup turns a Host header value into its route. Case, a port and a
// trailing dot are ignored. It does not allocate.
func (s *Snapshot) Lookup(host []byte) (Route, bool) {
	h, upper, ok := trimHost(host)
	if !ok {
		return Route{}, false
	}
	if upper >= 0 {
		var buf [maxHostLen]byte
		h = lowerInto(&buf, h, upper)
		return s.route(s.tenants.hosts[string(h)])
	}
	return s.route(s.tenants.hosts[string(h)])
}

// route resolves a host's entry (the zero entry when there is none) to
// this snapshot's pod.
func (s *Snapshot) route(h hostRoute) (Route, bool) {
	if h.tenant == nil {
		return Route{}, false
	}
	return Route{Tenant: h.tenant, Pod: s.slots[h.slot]}, true
}

// LookupString is Lookup for a string (a TLS server name, a DNS name).
func (s *Snapshot) LookupString(host string) (Route, bool) {
	h, upper, ok := trimHost(host)
	if !ok {
		return Route{}, false
	}
	if upper >= 0 {
		var buf [maxHostLen]byte
		return s.route(s.tenants.hosts[string(lowerInto(&buf, h, upper))])
	}
	return s.route(s.tenants.hosts[h])
}

// Pod returns the named pod, or nil.
func (s *Snapshot) Pod(name string) *PodState { return s.pods[name] }

// Pods returns every pod known from KV or services, sorted by name. The
// slice must not be modified.
func (s *Snapshot) Pods() []*PodState { return s.podList }

// Tenant returns the named tenant, or nil.
func (s *Snapshot) Tenant(name string) *Tenant { return s.tenants.byName[name] }

// Tenants returns every tenant sorted by name. The slice must not be modified.
func (s *Snapshot) Tenants() []*Tenant { return s.tenants.list }

// Hostname is the tenant's own name in the zone, without a trailing dot
// ("acme.example.test").
func (s *Snapshot) Hostname(tenant string) string { return tenant + s.zoneSuffix }

// Age is how long ago the snapshot was built.
func (s *Snapshot) Age(now time.Time) time.Duration { return now.Sub(s.Built) }

// TenantDelta names the tenants added, modified or removed since the
// snapshot the router published just before this one. full is true when
// the router cannot say name by name (the first snapshot, a resync): a
// reader must then look at every tenant. The slice must not be modified.
func (s *Snapshot) TenantDelta() (changed []string, full bool) { return s.delta, s.deltaFull }

// AscendTenants calls fn with each tenant whose name sorts after after, in
// order of name, until fn returns false.
func (s *Snapshot) AscendTenants(after string, fn func(*Tenant) bool) {
	list := s.tenants.list
	i, _ := slices.BinarySearchFunc(list, after, func(t *Tenant, name string) int { return strings.Compare(t.Name, name) })
	if i < len(list) && list[i].Name == after {
		i++
	}
	for ; i < len(list); i++ {
		if !fn(list[i]) {
			return
		}
	}
}
