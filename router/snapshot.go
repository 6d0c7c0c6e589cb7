package router

import (
	"hash/maphash"
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
	// tenants is shared, in all or in part, with the snapshots before
	// (tenantIndex); slots are this snapshot's pods in the order of
	// tenants.pods.
	tenants *tenantIndex
	slots   []*PodState
	// delta is what changed in the tenants since the snapshot published
	// before this one; deltaFull when that is not known name by name.
	delta      []string
	deltaFull  bool
	zoneSuffix string // "." + zone without its trailing dot
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
func emptySnapshot(zone string, seed maphash.Seed) *Snapshot {
	suffix := "." + zone[:len(zone)-1]
	return &Snapshot{
		Zone:       zone,
		pods:       map[string]*PodState{},
		tenants:    newTenantIndex(seed, suffix),
		zoneSuffix: suffix,
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
	}
	return s.route(s.tenants.lookup(h))
}

// route resolves a tenant's entry to this snapshot's pod.
func (s *Snapshot) route(e tenantEntry, ok bool) (Route, bool) {
	if !ok {
		return Route{}, false
	}
	return Route{Tenant: e.t, Pod: s.slots[e.slot]}, true
}

// LookupString is Lookup for a string (a TLS server name, a DNS name).
func (s *Snapshot) LookupString(host string) (Route, bool) {
	h, upper, ok := trimHost(host)
	if !ok {
		return Route{}, false
	}
	var buf [maxHostLen]byte
	b := buf[:copy(buf[:], h)]
	if upper >= 0 {
		b = lowerInto(&buf, h, upper)
	}
	return s.route(s.tenants.lookup(b))
}

// Pod returns the named pod, or nil.
func (s *Snapshot) Pod(name string) *PodState { return s.pods[name] }

// Pods returns every pod known from KV or services, sorted by name. The
// slice must not be modified.
func (s *Snapshot) Pods() []*PodState { return s.podList }

// Tenant returns the named tenant, or nil.
func (s *Snapshot) Tenant(name string) *Tenant {
	e, _ := s.tenants.byName.get(name)
	return e.t
}

// NumTenants is the number of tenants.
func (s *Snapshot) NumTenants() int { return s.tenants.byName.Len() }

// Tenants returns every tenant sorted by name, in a new slice: O(tenants),
// for full rebuilds and tests. Paging and searches use AscendTenants.
func (s *Snapshot) Tenants() []*Tenant {
	out := make([]*Tenant, 0, s.NumTenants())
	s.AscendTenants("", func(t *Tenant) bool { out = append(out, t); return true })
	return out
}

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
	s.tenants.names.ascend(after, fn)
}
