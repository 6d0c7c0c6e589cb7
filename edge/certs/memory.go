package certs

import (
	"crypto/tls"
	"hash/fnv"
	"maps"
	"sync"
	"sync/atomic"
	"time"
)

// entry is a certificate held in memory. It is immutable once published.
type entry struct {
	name     string
	cert     *tls.Certificate // Leaf set
	notAfter time.Time
	// renewAt is when the certificate is due for renewal. Every edge
	// computes the same instant for the same certificate, so that they
	// agree on who is late; the name's lock then lets one of them order.
	renewAt time.Time
	// index is the ModifyIndex of the live/ key it was read from, 0 when
	// unknown.
	index uint64
}

// newEntry wraps a certificate of name. renewBefore is Config.RenewBefore.
func newEntry(name string, cert *tls.Certificate, index uint64, renewBefore time.Duration) *entry {
	leaf := cert.Leaf
	return &entry{
		name:     name,
		cert:     cert,
		notAfter: leaf.NotAfter,
		renewAt:  renewAt(name, leaf.NotBefore, leaf.NotAfter, renewBefore),
		index:    index,
	}
}

// renewAt is when a certificate valid from notBefore to notAfter is
// renewed: renewBefore (or a third of its lifetime, at most 30 days, when
// zero; at most half of it in any case) before it expires, plus a jitter of
// up to a tenth of that (at most an hour) derived from the name, so that
// certificates issued together are not all renewed at the same moment, yet
// every edge computes the same time.
func renewAt(name string, notBefore, notAfter time.Time, renewBefore time.Duration) time.Time {
	life := notAfter.Sub(notBefore)
	threshold := renewBefore
	if threshold <= 0 {
		threshold = min(life/3, 30*24*time.Hour)
	}
	threshold = min(threshold, life/2)
	maxJitter := min(threshold/10, time.Hour)
	var jitter time.Duration
	if maxJitter > 0 {
		h := fnv.New64a()
		h.Write([]byte(name))
		jitter = time.Duration(h.Sum64() % uint64(maxJitter))
	}
	return notAfter.Add(-threshold + jitter)
}

// memory holds the certificates an edge serves, by lower-case name. Reads
// are lock-free (one atomic load and a map lookup: the handshake path);
// writes copy the map, which is cheap next to the ACME order or the Consul
// read that precedes every write.
type memory struct {
	mu sync.Mutex // serialises writers
	m  atomic.Pointer[map[string]*entry]
}

func newMemory() *memory {
	mem := &memory{}
	empty := map[string]*entry{}
	mem.m.Store(&empty)
	return mem
}

// get returns the entry of name (lower case), or nil.
func (mem *memory) get(name string) *entry { return (*mem.m.Load())[name] }

// snapshot returns the current map; it must not be modified.
func (mem *memory) snapshot() map[string]*entry { return *mem.m.Load() }

// put publishes entries, each replacing the held one of its name unless
// that expires later (a reload racing a renewal must not undo it). It
// reports how many it published.
func (mem *memory) put(es ...*entry) int {
	mem.mu.Lock()
	defer mem.mu.Unlock()
	cur := *mem.m.Load()
	var next map[string]*entry
	n := 0
	for _, e := range es {
		if old := cur[e.name]; old != nil && (old.notAfter.After(e.notAfter) || old.cert == e.cert) {
			continue
		}
		if next == nil {
			next = maps.Clone(cur)
		}
		next[e.name] = e
		n++
	}
	if next != nil {
		mem.m.Store(&next)
	}
	return n
}

// drop removes the entries of names.
func (mem *memory) drop(names ...string) {
	mem.mu.Lock()
	defer mem.mu.Unlock()
	cur := *mem.m.Load()
	var next map[string]*entry
	for _, n := range names {
		if _, ok := cur[n]; !ok {
			continue
		}
		if next == nil {
			next = maps.Clone(cur)
		}
		delete(next, n)
	}
	if next != nil {
		mem.m.Store(&next)
	}
}

// earliest is the expiry of the certificate that expires first; zero when
// none is held.
func (mem *memory) earliest() time.Time {
	var t time.Time
	for _, e := range mem.snapshot() {
		if t.IsZero() || e.notAfter.Before(t) {
			t = e.notAfter
		}
	}
	return t
}
