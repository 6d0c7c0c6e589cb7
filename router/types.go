package router

import (
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Pod is a rack of servers in one datacenter, as stored at <prefix>pods/<name>.
type Pod struct {
	Name     string  `json:"name"`
	Region   string  `json:"region"`
	Lat      float64 `json:"lat"`
	Lon      float64 `json:"lon"`
	Capacity int     `json:"capacity"`
	// Accepting, when false, stops new placements in the pod (a cordon);
	// its tenants keep being served. Absent means true.
	Accepting *bool `json:"accepting,omitempty"`
}

// IsAccepting reports whether the pod takes new tenants.
func (p Pod) IsAccepting() bool { return p.Accepting == nil || *p.Accepting }

// Tenant is a customer placed in a pod, as stored at <prefix>tenants/<name>.
type Tenant struct {
	Name    string    `json:"name"`
	Pod     string    `json:"pod"`
	Domains []string  `json:"domains"`
	Created time.Time `json:"created"`
	// Limits bounds the tenant's traffic at every edge; nil means the
	// edge's configured default.
	Limits *Limits `json:"limits,omitempty"`

	// state is shared by every version of the tenant in one router
	// (TenantState); set when an index takes the tenant in.
	state *TenantState
}

// Limits are a tenant's traffic limits. A zero field sets no limit of its
// kind.
type Limits struct {
	// RPS is the requests per second admitted across the pod's edges, and
	// Burst how many may come at once above that rate.
	RPS   float64 `json:"rps,omitempty"`
	Burst int     `json:"burst,omitempty"`
	// Concurrency bounds the requests in flight across the pod's edges.
	Concurrency int `json:"concurrency,omitempty"`
	// ConnsPerIP bounds the connections one client address holds open to
	// one edge.
	ConnsPerIP int `json:"conns_per_ip,omitempty"`
}

// Endpoint is one instance of a Consul service: an app server or an edge.
type Endpoint struct {
	// ID is the Consul service ID, unique on its node.
	ID string `json:"id"`
	// Node is the Consul node the instance is registered on.
	Node string `json:"node"`
	// Pod is the instance's Meta.pod.
	Pod string `json:"pod"`
	// Addr is "host:port" where traffic for the instance goes.
	Addr string `json:"addr"`
	// Weight is Consul's Weights.Passing, at least 1.
	Weight int `json:"weight"`
	// Passing is true when every check of the instance (and of its node) passes.
	Passing bool `json:"passing"`
	// Meta is the service metadata. It must not be modified.
	Meta map[string]string `json:"meta,omitempty"`
}

// EdgeEndpoint is an instance of the edge service with the addresses DNS hands out.
type EdgeEndpoint struct {
	Endpoint
	PublicIP   netip.Addr `json:"public_ip"`
	PublicIPv6 netip.Addr `json:"public_ipv6,omitzero"`
}

// ValidLabel reports whether s is a DNS label as pods and tenants use them:
// [a-z0-9-]{1,63}, no leading or trailing hyphen.
func ValidLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// CheckLabel explains why s is not a valid pod or tenant name, or returns nil.
func CheckLabel(s string) error {
	if ValidLabel(s) {
		return nil
	}
	switch {
	case s == "":
		return fmt.Errorf("name is empty")
	case len(s) > 63:
		return fmt.Errorf("name %q is longer than 63 characters", s)
	case s[0] == '-' || s[len(s)-1] == '-':
		return fmt.Errorf("name %q starts or ends with '-'", s)
	default:
		return fmt.Errorf("name %q may hold only a-z, 0-9 and '-'", s)
	}
}

// NormalizeDomain lower-cases a custom domain and drops a trailing dot. It
// returns an error naming the problem when the result is not a host name of
// at least two labels, each a valid DNS label (RFC 1123; upper case folded).
func NormalizeDomain(d string) (string, error) {
	d = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(d)), ".")
	if d == "" {
		return "", fmt.Errorf("domain is empty")
	}
	if len(d) > 253 {
		return "", fmt.Errorf("domain %q is longer than 253 characters", d)
	}
	labels := strings.Split(d, ".")
	if len(labels) < 2 {
		return "", fmt.Errorf("domain %q needs at least two labels", d)
	}
	for _, l := range labels {
		if !ValidLabel(l) {
			return "", fmt.Errorf("domain %q has an invalid label %q", d, l)
		}
	}
	return d, nil
}

// decodePod parses and validates a pod value stored under key name.
func decodePod(name string, raw []byte) (Pod, error) {
	var p Pod
	if err := json.Unmarshal(raw, &p); err != nil {
		return Pod{}, fmt.Errorf("pod %q: invalid JSON: %w", name, err)
	}
	if p.Name == "" {
		p.Name = name
	}
	if p.Name != name {
		return Pod{}, fmt.Errorf("pod %q: value names pod %q", name, p.Name)
	}
	if err := CheckLabel(name); err != nil {
		return Pod{}, fmt.Errorf("pod: %w", err)
	}
	if err := CheckCoordinates(p.Lat, p.Lon); err != nil {
		return Pod{}, fmt.Errorf("pod %q: %w", name, err)
	}
	if p.Capacity < 0 {
		return Pod{}, fmt.Errorf("pod %q: capacity %d is negative", name, p.Capacity)
	}
	return p, nil
}

// decodeTenant parses and validates a tenant value stored under key name.
// Domains are normalised; an invalid domain makes the whole value invalid.
func decodeTenant(name string, raw []byte) (Tenant, error) {
	var t Tenant
	if !fastTenant(raw, name, &t) {
		t = Tenant{}
		if err := json.Unmarshal(raw, &t); err != nil {
			return Tenant{}, fmt.Errorf("tenant %q: invalid JSON: %w", name, err)
		}
	}
	if t.Name == "" {
		t.Name = name
	}
	if t.Name != name {
		return Tenant{}, fmt.Errorf("tenant %q: value names tenant %q", name, t.Name)
	}
	t.Name = name // the same, and the caller's string: one copy to keep
	if err := CheckLabel(name); err != nil {
		return Tenant{}, fmt.Errorf("tenant: %w", err)
	}
	if !ValidLabel(t.Pod) {
		return Tenant{}, fmt.Errorf("tenant %q: invalid pod %q", name, t.Pod)
	}
	for i, d := range t.Domains {
		n, err := NormalizeDomain(d)
		if err != nil {
			return Tenant{}, fmt.Errorf("tenant %q: %w", name, err)
		}
		t.Domains[i] = n
	}
	if l := t.Limits; l != nil {
		// A limit that makes no sense is no limit: the tenant stays
		// served, under the edges' default for that kind.
		if math.IsNaN(l.RPS) || math.IsInf(l.RPS, 0) || l.RPS < 0 {
			l.RPS = 0
		}
		l.Burst, l.Concurrency, l.ConnsPerIP = max(l.Burst, 0), max(l.Concurrency, 0), max(l.ConnsPerIP, 0)
		if *l == (Limits{}) {
			t.Limits = nil
		}
	}
	return t, nil
}

// CheckCoordinates returns an error unless lat and lon are a valid position.
func CheckCoordinates(lat, lon float64) error {
	if math.IsNaN(lat) || lat < -90 || lat > 90 {
		return fmt.Errorf("lat %v is outside [-90, 90]", lat)
	}
	if math.IsNaN(lon) || lon < -180 || lon > 180 {
		return fmt.Errorf("lon %v is outside [-180, 180]", lon)
	}
	return nil
}

// DecodePod parses and validates a pod value stored under key name, as the
// router does: a value it refuses is not routed.
func DecodePod(name string, raw []byte) (Pod, error) { return decodePod(name, raw) }

// DecodeTenant parses and validates a tenant value stored under key name,
// as the router does: a value it refuses is not routed.
func DecodeTenant(name string, raw []byte) (Tenant, error) { return decodeTenant(name, raw) }

// Equal reports whether p and o are the same pod value.
func (p Pod) Equal(o Pod) bool {
	return p.Name == o.Name && p.Region == o.Region && p.Lat == o.Lat && p.Lon == o.Lon &&
		p.Capacity == o.Capacity && p.IsAccepting() == o.IsAccepting()
}

// Equal reports whether t and o are the same tenant value.
func (t Tenant) Equal(o Tenant) bool {
	return t.Name == o.Name && t.Pod == o.Pod && slices.Equal(t.Domains, o.Domains) &&
		t.Created.Equal(o.Created) && (t.Limits == nil) == (o.Limits == nil) &&
		(t.Limits == nil || *t.Limits == *o.Limits)
}
