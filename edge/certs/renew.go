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
// at now and whose names the router still knows; it drops those it no
// longer knows (tenant or domain gone). It returns how many it renewed or
// refreshed.
func (m *Manager) renewDue(ctx context.Context, now time.Time) int {
	snap := m.snapshot()
	var gone []string
	n := 0
	for name, e := range m.mem.snapshot() {
		if _, ok := snap.LookupString(name); !ok {
			if snap.Synced {
				gone = append(gone, name)
			}
			continue
		}
		if now.Before(e.renewAt) {
			continue
		}
		f, err := m.begin(name, e)
		if err != nil {
			continue // backing off
		}
		select {
		case <-ctx.Done():
			return n
		case <-f.done:
			if f.err == nil {
				n++
			}
		}
	}
	if len(gone) > 0 {
		m.mem.drop(gone...)
		m.log.Info("dropped certificates of names no longer routed", "names", len(gone))
	}
	m.pruneNames(snap.Synced)
	return n
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
		if _, ok := snap.LookupString(name); !ok && st.flight == nil {
			delete(m.names, name)
		}
	}
}

// watchIndex follows <prefix>certs/index/, which changes with every
// certificate stored by any edge: a certificate held here that another
// edge renewed or replaced is reloaded, one deleted is dropped (the next
// handshake loads or orders it again), and the certificates of this
// edge's pod are loaded ahead of their first handshake, so that this edge
// serves them even if Consul is unreachable when they are first asked for.
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
			if held != nil || m.ownPod(name) {
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

// ownPod reports whether name belongs to a tenant of this edge's pod.
func (m *Manager) ownPod(name string) bool {
	if m.cfg.Pod == "" {
		return false
	}
	r, ok := m.snapshot().LookupString(name)
	return ok && r.Tenant != nil && r.Tenant.Pod == m.cfg.Pod
}
