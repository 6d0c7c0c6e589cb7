package certs

import (
	"context"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// Renewal is driven here, not by a timer per certificate: every RenewCheck
// each edge looks for the certificates it holds that are due. Every edge
// computes the same due time for a certificate (renewAt), so all of them
// find it due at once and race for its lock; the winner orders and stores
// the new certificate, and the others, once they hold the lock, find a
// shared copy newer than theirs and take it without ordering. Meanwhile the
// watch of the index has usually brought them the new one already, and
// then it is not due any more. One order per certificate, not per edge.

// renewLoop renews due certificates until ctx ends.
func (m *Manager) renewLoop(ctx context.Context) {
	t := time.NewTicker(m.cfg.RenewCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.renewDue(ctx, time.Now())
		}
	}
}

// renewDue renews, one after another, the certificates held that are due
// at now: the zone's (or obtains it, when it is not held), then those of
// the names the router still knows. It returns how many it renewed or
// refreshed.
func (m *Manager) renewDue(ctx context.Context, now time.Time) int {
	n := m.renewZone(ctx, now)
	if ctx.Err() != nil {
		return n
	}
	return n + m.renewNames(ctx, now)
}

// renewZone renews the zone's certificate when it is due at now, or
// obtains it when it is not held, and reports whether it did.
func (m *Manager) renewZone(ctx context.Context, now time.Time) int {
	if e := m.mem.get(m.zone.name); e == nil || !now.Before(e.renewAt) {
		return m.renew(ctx, m.zone.name, e)
	}
	return 0
}

// renewNames renews the other certificates held that are due at now and
// whose names the router still knows. It drops those it no longer knows
// (tenant or domain gone) and those the zone's certificate covers (a
// tenant's own, stored before the zone had one).
func (m *Manager) renewNames(ctx context.Context, now time.Time) int {
	snap := m.snapshot()
	var gone, covered []string
	n := 0
	for name, e := range m.mem.snapshot() {
		switch {
		case name == m.zone.name:
			continue
		case m.zone.coversString(name):
			covered = append(covered, name)
			continue
		}
		if _, ok := snap.LookupString(name); !ok {
			if snap.Synced {
				gone = append(gone, name)
			}
			continue
		}
		if now.Before(e.renewAt) {
			continue
		}
		n += m.renew(ctx, name, e)
		if ctx.Err() != nil {
			return n
		}
	}
	if len(gone) > 0 {
		m.mem.drop(gone...)
		m.log.Info("dropped certificates of names no longer routed", "names", len(gone))
	}
	if len(covered) > 0 {
		m.mem.drop(covered...)
		m.log.Info("dropped certificates of names the zone's certificate serves", "names", len(covered))
	}
	m.pruneNames(snap.Synced)
	return n
}

// renew has the certificate of name, held as e (nil when none), issued or
// refreshed, and waits for it; it returns 1 when that succeeded.
func (m *Manager) renew(ctx context.Context, name string, e *entry) int {
	f, err := m.begin(name, e)
	if err != nil {
		return 0 // backing off
	}
	select {
	case <-ctx.Done():
		return 0
	case <-f.done:
		if f.err != nil {
			return 0
		}
		return 1
	}
}

// pruneNames forgets the issuance state of names the router no longer
// knows.
func (m *Manager) pruneNames(synced bool) {
	if !synced {
		return
	}
	snap := m.snapshot()
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, st := range m.names {
		if name == m.zone.name {
			continue
		}
		if _, ok := snap.LookupString(name); !ok && st.flight == nil {
			delete(m.names, name)
		}
	}
}

// watchIndex follows <prefix>certs/index/, which changes with every
// certificate stored by any edge: a certificate held here that another
// edge renewed or replaced is reloaded, one deleted is dropped (the next
// handshake loads or orders it again), and the zone's and those of the
// custom domains of this edge's pod are loaded ahead of their first
// handshake, so that this edge serves them even if Consul is unreachable
// when they are first asked for.
func (m *Manager) watchIndex(ctx context.Context) {
	folder := m.cache.root + folderIndex
	seen := map[string]uint64{}
	watchList(ctx, m.cache.kv, folder, m.log, func(pairs api.KVPairs) {
		current := make(map[string]uint64, len(pairs))
		var load []string
		for _, p := range pairs {
			name := strings.TrimPrefix(p.Key, folder)
			if name == "" || strings.Contains(name, "+") {
				continue // the folder, or an RSA certificate of autocert's
			}
			current[name] = p.ModifyIndex
			if seen[name] == p.ModifyIndex {
				continue
			}
			held := m.mem.get(name)
			if held != nil && held.index >= p.ModifyIndex {
				continue
			}
			if held != nil || name == m.zone.name || m.ownPod(name) {
				load = append(load, name)
			}
		}
		var dropped []string
		for name := range seen {
			if _, ok := current[name]; !ok && m.mem.get(name) != nil {
				dropped = append(dropped, name)
			}
		}
		seen = current
		if len(dropped) > 0 {
			m.mem.drop(dropped...)
			m.log.Info("certificates deleted from consul; dropped", "names", len(dropped))
		}
		for _, name := range load {
			if ctx.Err() != nil {
				return
			}
			st, err := m.cache.loadLive(ctx, name, false, time.Now())
			if err != nil || st == nil {
				continue // the handshake path will try, and say why
			}
			m.mem.put(newEntry(name, st.cert, st.index, m.cfg.RenewBefore))
		}
	})
}

// ownPod reports whether name is a custom domain of a tenant of this
// edge's pod (tenant hostnames are the zone certificate's).
func (m *Manager) ownPod(name string) bool {
	if m.cfg.Pod == "" || m.zone.coversString(name) {
		return false
	}
	r, ok := m.snapshot().LookupString(name)
	return ok && r.Tenant != nil && r.Tenant.Pod == m.cfg.Pod
}
