package router

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/consul/api"
)

// Service metadata keys of the service conventions.
const (
	MetaPod        = "pod"
	MetaPublicIP   = "public_ip"
	MetaPublicIPv6 = "public_ipv6"
)

// passing reports whether every check of a service instance, its node's
// included, passes. Warning is not passing; an instance without checks is.
func passing(checks api.HealthChecks) bool {
	for _, c := range checks {
		if c.Status != api.HealthPassing {
			return false
		}
	}
	return true
}

// endpointFromEntry turns one health entry into an Endpoint. The address is
// the service address, or the node's when the service has none.
func endpointFromEntry(e *api.ServiceEntry) (Endpoint, error) {
	if e == nil || e.Service == nil {
		return Endpoint{}, fmt.Errorf("health entry without a service")
	}
	svc := e.Service
	host := svc.Address
	if host == "" && e.Node != nil {
		host = e.Node.Address
	}
	node := ""
	if e.Node != nil {
		node = e.Node.Node
	}
	id := svc.ID
	if id == "" {
		id = svc.Service
	}
	pod := svc.Meta[MetaPod]
	switch {
	case host == "":
		return Endpoint{}, fmt.Errorf("service %q on node %q has no address", id, node)
	case svc.Port <= 0 || svc.Port > 65535:
		return Endpoint{}, fmt.Errorf("service %q on node %q has invalid port %d", id, node, svc.Port)
	case !ValidLabel(pod):
		return Endpoint{}, fmt.Errorf("service %q on node %q: Meta.%s %q is not a pod name", id, node, MetaPod, pod)
	}
	weight := svc.Weights.Passing
	if weight <= 0 {
		weight = 1
	}
	return Endpoint{
		ID:      id,
		Node:    node,
		Pod:     pod,
		Addr:    net.JoinHostPort(host, strconv.Itoa(svc.Port)),
		Weight:  weight,
		Passing: passing(e.Checks),
		Meta:    svc.Meta,
	}, nil
}

// appsFromHealth turns the health of the app service into endpoints sorted
// by node and ID. Instances it cannot route to are skipped and reported.
func appsFromHealth(entries []*api.ServiceEntry) ([]Endpoint, []error) {
	var out []Endpoint
	var errs []error
	for _, e := range entries {
		ep, err := endpointFromEntry(e)
		if err != nil {
			errs = append(errs, fmt.Errorf("app: %w", err))
			continue
		}
		out = append(out, ep)
	}
	slices.SortFunc(out, compareEndpoints)
	return out, errs
}

// edgesFromHealth turns the health of the edge service into edges sorted by
// node and ID. An edge needs Meta.public_ip (IPv4) for DNS to hand it out;
// Meta.public_ipv6 is optional.
func edgesFromHealth(entries []*api.ServiceEntry) ([]EdgeEndpoint, []error) {
	var out []EdgeEndpoint
	var errs []error
	for _, e := range entries {
		ep, err := endpointFromEntry(e)
		if err != nil {
			errs = append(errs, fmt.Errorf("edge: %w", err))
			continue
		}
		ip, err := netip.ParseAddr(ep.Meta[MetaPublicIP])
		if err != nil || !ip.Is4() {
			errs = append(errs, fmt.Errorf("edge: service %q on node %q: Meta.%s %q is not an IPv4 address", ep.ID, ep.Node, MetaPublicIP, ep.Meta[MetaPublicIP]))
			continue
		}
		edge := EdgeEndpoint{Endpoint: ep, PublicIP: ip}
		if v6 := ep.Meta[MetaPublicIPv6]; v6 != "" {
			ip6, err := netip.ParseAddr(v6)
			if err != nil || !ip6.Is6() || ip6.Is4In6() {
				errs = append(errs, fmt.Errorf("edge: service %q on node %q: Meta.%s %q is not an IPv6 address; ignored", ep.ID, ep.Node, MetaPublicIPv6, v6))
			} else {
				edge.PublicIPv6 = ip6
			}
		}
		out = append(out, edge)
	}
	slices.SortFunc(out, func(a, b EdgeEndpoint) int { return compareEndpoints(a.Endpoint, b.Endpoint) })
	return out, errs
}

func compareEndpoints(a, b Endpoint) int {
	return cmp.Or(cmp.Compare(a.Node, b.Node), cmp.Compare(a.ID, b.ID))
}

// kvDecoder decodes the values under one KV folder (pods/ or tenants/),
// remembering each key's last decoded value by ModifyIndex, so that with
// 100,000 tenants a change re-decodes one value, not all of them. It takes
// the entries of an answer one at a time (begin, add, end), as a streamed
// read hands them, and updates its cache in place: a change costs the
// values that changed, not a second copy of the folder.
type kvDecoder[T any] struct {
	folder string // "podedge/tenants/"
	decode func(name string, raw []byte) (T, error)
	cache  map[string]*kvCached[T]
	// values are the last answer's valid values, by key. A value is
	// never modified once decoded: the slices of successive answers, and
	// the indexes made from them, share it.
	values []*T
	raw    []byte // scratch for base64 values

	// The answer being read.
	pass    uint64
	seen    int
	kept    int  // values[:kept] are this answer's first values too
	out     []*T // this answer's values, once they differ from values
	diverge bool // out is in use
	fresh   []error
	changed bool
	// delta is what changed since the last answer, key by key; whole is
	// true when the cache cannot tell (the first answer, or the first
	// after one cut short).
	delta []kvChange[T]
	whole bool
}

// kvChange is a key's new value; nil when it went or is refused.
type kvChange[T any] struct {
	name  string
	value *T
}

type kvCached[T any] struct {
	key         string // the name of a tenant or pod is a part of it
	modifyIndex uint64
	value       *T
	err         error
	pass        uint64 // the last answer that held the key
	pos         int    // where value is in values; -1 when not there
}

// decodeAll returns the valid values in the entries' order (by key), the
// problems it found for the first time (so a bad value is logged once, not
// at every change of another key), and whether any key was added, removed
// or modified since the previous call. Comparing ModifyIndexes is how it
// tells, not comparing the decoded values, which would cost as much as
// decoding 100,000 of them.
func (d *kvDecoder[T]) decodeAll(entries []KVEntry) (values []*T, fresh []error, changed bool) {
	d.begin()
	for i := range entries {
		d.add(&entries[i])
	}
	return d.end()
}

// begin starts reading an answer.
func (d *kvDecoder[T]) begin() {
	d.whole = d.cache == nil
	if d.cache == nil {
		d.cache = map[string]*kvCached[T]{}
	}
	d.pass++
	d.seen, d.kept, d.out, d.diverge, d.fresh, d.changed = 0, 0, nil, false, nil, false
	d.delta = d.delta[:0]
}

// abort drops what a read cut short left: the cache no longer tells what
// the last published values were made from, so the next read decodes all.
func (d *kvDecoder[T]) abort() {
	d.cache, d.values, d.out, d.fresh = nil, nil, nil, nil
}

// add takes the next entry of the answer (entries come sorted by key).
func (d *kvDecoder[T]) add(e *KVEntry) {
	if len(e.Key) <= len(d.folder) || string(e.Key[:len(d.folder)]) != d.folder {
		return // the folder itself
	}
	c := d.cache[string(e.Key)]
	decoded := false
	if c == nil || c.modifyIndex != e.ModifyIndex || c.pass == d.pass {
		if c == nil {
			c = &kvCached[T]{key: string(e.Key)}
			d.cache[c.key] = c
		}
		decoded = true
		d.changed = true
		c.modifyIndex, c.value, c.err, c.pos = e.ModifyIndex, nil, nil, -1
		name := c.key[len(d.folder):]
		raw, err := e.ValueIn(&d.raw)
		switch {
		case err != nil:
			c.err = fmt.Errorf("key %q: value is not base64: %w", c.key, err)
		case strings.Contains(name, "/"):
			c.err = fmt.Errorf("key %q: nested keys are not allowed under %q", c.key, d.folder)
		default:
			v, err := d.decode(name, raw)
			if err != nil {
				c.err = fmt.Errorf("key %q: %w", c.key, err)
			} else {
				c.value = &v
			}
		}
		if c.err != nil {
			d.fresh = append(d.fresh, c.err)
		}
		d.delta = append(d.delta, kvChange[T]{name: name, value: c.value})
	}
	if c.pass != d.pass {
		c.pass = d.pass
		d.seen++
	}
	if c.value == nil {
		return // refused: in no answer's values
	}
	if !d.diverge {
		if !decoded && c.pos == d.kept {
			d.kept++
			return
		}
		d.diverge = true
		d.out = make([]*T, d.kept, max(len(d.values), d.kept+1))
		copy(d.out, d.values[:d.kept])
	}
	c.pos = len(d.out)
	d.out = append(d.out, c.value)
}

// end finishes the answer: its valid values, the problems found for the
// first time, and whether anything changed since the previous answer.
func (d *kvDecoder[T]) end() (values []*T, fresh []error, changed bool) {
	if d.seen != len(d.cache) {
		d.changed = true
		for k, c := range d.cache {
			if c.pass != d.pass {
				delete(d.cache, k)
				if c.value != nil {
					d.delta = append(d.delta, kvChange[T]{name: k[len(d.folder):]})
				}
			}
		}
	}
	if !d.diverge && d.kept != len(d.values) {
		d.diverge, d.out = true, d.values[:d.kept:d.kept]
	}
	if d.diverge {
		d.values = d.out
	}
	d.out = nil
	return d.values, d.fresh, d.changed
}
