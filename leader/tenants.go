package leader

import (
	"cmp"
	"context"
	"encoding/json"
	"slices"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/changelog"
	"github.com/podedge/podedge/router"
)

// candidates is every registered, valid pod as placement sees it: seat
// counts from the leader's reads, passing edges from the replica's view.
func candidates(pods podCache, view *router.Snapshot) []Candidate {
	out := make([]Candidate, 0, len(pods))
	for name, e := range pods {
		if !e.valid || e.podIndex == 0 {
			continue
		}
		c := Candidate{Name: name, Lat: e.pod.Lat, Lon: e.pod.Lon, Capacity: e.pod.Capacity, Tenants: e.seats, Cordoned: !e.pod.IsAccepting()}
		if vp := view.Pod(name); vp != nil {
			c.PassingEdges = len(vp.PassingEdges)
		}
		out = append(out, c)
	}
	// Place does not depend on the order; a stable order keeps logs tidy.
	slices.SortFunc(out, func(a, b Candidate) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// domainsFree refuses domains the view routes to a tenant other than name.
// The domain index guards every write; this catches a domain that a tenant
// written outside the leader claims before reconciliation indexes it.
func domainsFree(view *router.Snapshot, name string, domains []string) error {
	for _, d := range domains {
		if r, ok := view.LookupString(d); ok && r.Tenant != nil && r.Tenant.Name != name {
			return conflict("domain %q belongs to another tenant", d)
		}
	}
	return nil
}

// readTenant reads a tenant and the index keys of the given domains in one
// consistent read. It fails with 404 when the tenant does not exist.
func (s *Store) readTenant(ctx context.Context, name string, domains ...string) (router.Tenant, *api.KVPair, map[string]*api.KVPair, error) {
	ks := []string{s.keys.tenant(name)}
	for _, d := range domains {
		ks = append(ks, s.keys.domain(d))
	}
	kvs, err := s.readKeys(ctx, ks...)
	if err != nil {
		return router.Tenant{}, nil, nil, err
	}
	kv := kvs[s.keys.tenant(name)]
	if kv == nil {
		return router.Tenant{}, nil, nil, notFound("tenant %q not found", name)
	}
	t, err := decodeTenant(name, kv.Value)
	if err != nil {
		return router.Tenant{}, nil, nil, err
	}
	return t, kv, kvs, nil
}

// releaseSeat adds to tx the release of one seat of pod, when the pod has a
// seat count to release it from.
func (s *Store) releaseSeat(tx *txn, pods podCache, pod string) {
	if e := pods[pod]; e != nil && e.seatsIdx != 0 && e.seats > 0 && e.seats != unknownSeats {
		tx.cas(s.keys.seats(pod), e.seatsIdx, seatsValue(e.seats-1), nil)
	}
}

// applySeats updates the cache after a committed write from the indexes it
// returned: delta seats for each pod whose count it set.
func (s *Store) applySeats(pods podCache, res committed, deltas map[string]int) {
	for pod, d := range deltas {
		e := pods[pod]
		if idx, ok := res[s.keys.seats(pod)]; ok && e != nil {
			e.seats += d
			e.seatsIdx = idx
		}
	}
}

// DeleteTenant removes a tenant, frees its seat and its domains.
func (s *Store) DeleteTenant(ctx context.Context, name string) (uint64, error) {
	return s.write(ctx, "delete_tenant", func(session string) error {
		pods, err := s.loadPods(ctx)
		if err != nil {
			return err
		}
		t, kv, _, err := s.readTenant(ctx, name)
		if err != nil {
			return err
		}
		// The domain keys are read after the tenant: the tenant's index
		// guards against its domains changing in between.
		owners := map[string]*api.KVPair{}
		if len(t.Domains) > 0 {
			ks := make([]string, len(t.Domains))
			for i, d := range t.Domains {
				ks[i] = s.keys.domain(d)
			}
			if owners, err = s.readKeys(ctx, ks...); err != nil {
				return err
			}
		}
		lh, err := s.loadLog(ctx)
		if err != nil {
			return err
		}
		tx := newTxn("delete_tenant", s.keys, session)
		tx.deleteCAS(kv.Key, kv.ModifyIndex, nil)
		s.releaseSeat(tx, pods, t.Pod)
		for _, d := range t.Domains {
			if o := owners[s.keys.domain(d)]; o != nil && string(o.Value) == name {
				tx.deleteCAS(o.Key, o.ModifyIndex, nil)
			}
		}
		res, err := s.commitLogged(ctx, session, tx, lh, tenantChange(name, nil))
		if err != nil {
			return err
		}
		s.applySeats(pods, res, map[string]int{t.Pod: -1})
		return nil
	})
}

// MoveTenant moves a tenant to another pod, taking a seat there and
// freeing its seat in the old one. A full pod refuses it with 409.
func (s *Store) MoveTenant(ctx context.Context, name, pod string) (router.Tenant, uint64, error) {
	var moved router.Tenant
	index, err := s.write(ctx, "move", func(session string) error {
		pods, err := s.loadPods(ctx)
		if err != nil {
			return err
		}
		t, kv, _, err := s.readTenant(ctx, name)
		if err != nil {
			return err
		}
		if t.Pod == pod {
			moved = t
			return nil
		}
		dst := pods[pod]
		if dst == nil || dst.podIndex == 0 {
			return invalid("pod %q is not registered", pod)
		}
		if !dst.valid {
			return conflict("pod %q has an invalid registration; fix it with PUT /v1/pods/%s", pod, pod)
		}
		if !dst.pod.IsAccepting() {
			return conflict("pod %q is cordoned (accepting is false) and takes no tenant; PUT /v1/pods/%s with \"accepting\": true to open it", pod, pod)
		}
		if dst.seats >= dst.pod.Capacity {
			return conflict("pod %q is full: %d of %d seats taken", pod, min(dst.seats, dst.pod.Capacity), dst.pod.Capacity)
		}
		from := t.Pod
		t.Pod = pod
		value, err := json.Marshal(t)
		if err != nil {
			return err
		}
		lh, err := s.loadLog(ctx)
		if err != nil {
			return err
		}
		tx := newTxn("move", s.keys, session)
		tx.cas(kv.Key, kv.ModifyIndex, value, nil)
		tx.checkIndex(s.keys.pod(pod), dst.podIndex, nil)
		tx.cas(s.keys.seats(pod), dst.seatsIdx, seatsValue(dst.seats+1), nil)
		s.releaseSeat(tx, pods, from)
		res, err := s.commitLogged(ctx, session, tx, lh, tenantChange(name, value))
		if err != nil {
			return err
		}
		s.applySeats(pods, res, map[string]int{pod: +1, from: -1})
		moved = t
		return nil
	})
	return moved, index, err
}

// AddDomain gives a custom domain to a tenant. Adding a domain the tenant
// already has changes nothing.
func (s *Store) AddDomain(ctx context.Context, name, domain string) (router.Tenant, uint64, error) {
	var out router.Tenant
	index, err := s.write(ctx, "add_domain", func(session string) error {
		t, kv, owners, err := s.readTenant(ctx, name, domain)
		if err != nil {
			return err
		}
		owner := owners[s.keys.domain(domain)]
		if owner != nil && string(owner.Value) != name {
			return conflict("domain %q belongs to another tenant", domain)
		}
		has := slices.Contains(t.Domains, domain)
		if has && owner != nil {
			out = t
			return nil
		}
		if err := domainsFree(s.view(), name, []string{domain}); err != nil {
			return err
		}
		if !has && len(t.Domains) >= s.val.maxDomains {
			return conflict("tenant %q already has the maximum of %d domains", name, s.val.maxDomains)
		}
		lh, err := s.loadLog(ctx)
		if err != nil {
			return err
		}
		tx := newTxn("add_domain", s.keys, session)
		var changes []changelog.Change
		if !has {
			t.Domains = append(t.Domains, domain)
			value, err := json.Marshal(t)
			if err != nil {
				return err
			}
			tx.cas(kv.Key, kv.ModifyIndex, value, nil)
			changes = append(changes, tenantChange(name, value))
		} else {
			tx.checkIndex(kv.Key, kv.ModifyIndex, nil)
		}
		var idx uint64
		if owner != nil {
			idx = owner.ModifyIndex
		}
		tx.cas(s.keys.domain(domain), idx, []byte(name), nil)
		if _, err := s.commitLogged(ctx, session, tx, lh, changes...); err != nil {
			return err
		}
		out = t
		return nil
	})
	return out, index, err
}

// RemoveDomain takes a custom domain from a tenant and frees it.
func (s *Store) RemoveDomain(ctx context.Context, name, domain string) (uint64, error) {
	return s.write(ctx, "remove_domain", func(session string) error {
		t, kv, owners, err := s.readTenant(ctx, name, domain)
		if err != nil {
			return err
		}
		i := slices.Index(t.Domains, domain)
		if i < 0 {
			return notFound("tenant %q has no domain %q", name, domain)
		}
		t.Domains = slices.Delete(t.Domains, i, i+1)
		value, err := json.Marshal(t)
		if err != nil {
			return err
		}
		lh, err := s.loadLog(ctx)
		if err != nil {
			return err
		}
		tx := newTxn("remove_domain", s.keys, session)
		tx.cas(kv.Key, kv.ModifyIndex, value, nil)
		if o := owners[s.keys.domain(domain)]; o != nil && string(o.Value) == name {
			tx.deleteCAS(o.Key, o.ModifyIndex, nil)
		}
		if _, err := s.commitLogged(ctx, session, tx, lh, tenantChange(name, value)); err != nil {
			return err
		}
		return nil
	})
}
