package router

import (
	"cmp"
	"encoding/base64"
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
// 100,000 tenants a change re-decodes one value, not all of them.
type kvDecoder[T any] struct {
	folder string // "podedge/tenants/"
	decode func(name string, raw []byte) (T, error)
	cache  map[string]kvCached[T]
	values []T    // the last call's valid values
	raw    []byte // scratch for base64 values
}

type kvCached[T any] struct {
	key         string // kept so that an unchanged key costs no new string
	modifyIndex uint64
	value       T
	err         error
}

// decodeAll returns the valid values in the entries' order (by key), the
// problems it found for the first time (so a bad value is logged once, not
// at every change of another key), and whether any key was added, removed
// or modified since the previous call. Comparing ModifyIndexes is how it
// tells, not comparing the decoded values, which would cost as much as
// decoding 100,000 of them.
func (d *kvDecoder[T]) decodeAll(entries []KVEntry) (values []T, fresh []error, changed bool) {
	if d.unchanged(entries) {
		return d.values, nil, false
	}
	next := make(map[string]kvCached[T], len(entries))
	out := make([]T, 0, len(entries))
	for i := range entries {
		e := &entries[i]
		c, known := d.cache[string(e.Key)]
		if !known {
			c.key = string(e.Key)
		}
		name, ok := strings.CutPrefix(c.key, d.folder)
		if !ok || name == "" {
			continue // the folder itself
		}
		if !known || c.modifyIndex != e.ModifyIndex {
			changed = true
			c = kvCached[T]{key: c.key, modifyIndex: e.ModifyIndex}
			raw := e.Value
			if e.Base64 {
				d.raw, c.err = base64.StdEncoding.AppendDecode(d.raw[:0], e.Value)
				raw = d.raw
			}
			switch {
			case c.err != nil:
				c.err = fmt.Errorf("key %q: value is not base64: %w", c.key, c.err)
			case strings.Contains(name, "/"):
				c.err = fmt.Errorf("key %q: nested keys are not allowed under %q", c.key, d.folder)
			default:
				if c.value, c.err = d.decode(name, raw); c.err != nil {
					c.err = fmt.Errorf("key %q: %w", c.key, c.err)
				}
			}
			if c.err != nil {
				fresh = append(fresh, c.err)
			}
		}
		next[c.key] = c
		if c.err == nil {
			out = append(out, c.value)
		}
	}
	changed = changed || len(next) != len(d.cache)
	d.cache, d.values = next, out
	return out, fresh, changed
}

// unchanged reports whether entries hold the keys of the last call, each at
// the same ModifyIndex. A blocking query that times out answers the whole
// folder again, once a minute when nothing changes: with 100,000 tenants,
// building the cache anew for it would allocate tens of megabytes for
// nothing.
func (d *kvDecoder[T]) unchanged(entries []KVEntry) bool {
	if d.cache == nil {
		return false
	}
	n := 0
	for i := range entries {
		e := &entries[i]
		if len(e.Key) <= len(d.folder) || string(e.Key[:len(d.folder)]) != d.folder {
			continue // the folder itself, as decodeAll skips it
		}
		c, ok := d.cache[string(e.Key)]
		if !ok || c.modifyIndex != e.ModifyIndex {
			return false
		}
		n++
	}
	return n == len(d.cache)
}
