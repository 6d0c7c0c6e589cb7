package router

import (
	"sync"
	"sync/atomic"
	"time"
)

// Registry keeps the live state of every endpoint address and the cursor of
// every pool, so that both outlive the snapshots that point at them: a new
// snapshot built after a health change keeps each endpoint's ejection,
// in-flight count and connection pool, and each pool's round-robin position.
//
// Entries are created when a snapshot first routes to an address and dropped
// once no snapshot has routed to it for Keep. Only the snapshot builder calls
// the locked methods; the request path reads the pointers the snapshot holds.
type Registry struct {
	// NewValue, if set, makes the data plane's attachment for a new address
	// (the edge's per-upstream connection pool). It runs under the registry
	// lock, so it must be quick and must not call back into the registry.
	NewValue func(addr string) any
	// ReleaseValue, if set, is called with an attachment whose address has
	// been dropped (to close idle connections).
	ReleaseValue func(addr string, value any)
	// Keep is how long an address that no snapshot routes to keeps its
	// state, so that an endpoint that flaps out and back in Consul keeps its
	// ejection backoff. Zero means 10 minutes.
	Keep time.Duration

	mu        sync.Mutex
	endpoints map[string]*registryEntry
	cursors   map[string]*atomic.Uint32
}

type registryEntry struct {
	state  *EndpointState
	inUse  bool
	goneAt time.Time
}

// acquire returns the state for addr, creating it when new, and marks it used
// by the snapshot being built.
func (r *Registry) acquire(addr string) *EndpointState {
	if e, ok := r.endpoints[addr]; ok {
		e.inUse = true
		return e.state
	}
	s := &EndpointState{addr: addr}
	if r.NewValue != nil {
		s.value = r.NewValue(addr)
	}
	if r.endpoints == nil {
		r.endpoints = make(map[string]*registryEntry)
	}
	r.endpoints[addr] = &registryEntry{state: s, inUse: true}
	return s
}

// cursor returns the shared round-robin position of the pool named key.
func (r *Registry) cursor(key string) *atomic.Uint32 {
	if c, ok := r.cursors[key]; ok {
		return c
	}
	if r.cursors == nil {
		r.cursors = make(map[string]*atomic.Uint32)
	}
	c := new(atomic.Uint32)
	r.cursors[key] = c
	return c
}

// beginBuild locks the registry for one snapshot build and clears the in-use
// marks; endBuild drops what has been unused for longer than Keep.
func (r *Registry) beginBuild() {
	r.mu.Lock()
	for _, e := range r.endpoints {
		e.inUse = false
	}
}

func (r *Registry) endBuild(now time.Time, usedCursors map[string]bool) {
	defer r.mu.Unlock()
	keep := r.Keep
	if keep == 0 {
		keep = 10 * time.Minute
	}
	for addr, e := range r.endpoints {
		switch {
		case e.inUse:
			e.goneAt = time.Time{}
		case e.goneAt.IsZero():
			e.goneAt = now
		case now.Sub(e.goneAt) >= keep:
			delete(r.endpoints, addr)
			if r.ReleaseValue != nil && e.state.value != nil {
				r.ReleaseValue(addr, e.state.value)
			}
		}
	}
	for key := range r.cursors {
		if !usedCursors[key] {
			delete(r.cursors, key)
		}
	}
}

// Len is the number of addresses the registry holds.
func (r *Registry) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.endpoints)
}
