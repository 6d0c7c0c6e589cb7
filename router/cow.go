package router

import (
	"cmp"
	"hash/maphash"
	"slices"
	"strings"
)

// shardBits sets the shards of a cowMap: 1,024, so that with 1,000,000
// tenants a change copies a map of about 1,000 entries and an array of
// 1,024 pointers, not the whole index.
const (
	shardBits = 10
	shards    = 1 << shardBits
)

// cowMap is a string-keyed map that a change copies only in part: it is
// split into shards by a hash of the key, and an edit copies the shards it
// touches, once each, sharing the others with the map it started from. A
// published cowMap is immutable.
type cowMap[V any] struct {
	seed   maphash.Seed
	shards *[shards]map[string]V
	n      int
}

func newCowMap[V any](seed maphash.Seed) cowMap[V] {
	return cowMap[V]{seed: seed, shards: new([shards]map[string]V)}
}

func (m cowMap[V]) shard(key string) int {
	return int(maphash.String(m.seed, key) & (shards - 1))
}

func (m cowMap[V]) get(key string) (V, bool) {
	v, ok := m.shards[m.shard(key)][key]
	return v, ok
}

// getBytes is get for a key in bytes; it does not allocate.
func (m cowMap[V]) getBytes(key []byte) (V, bool) {
	v, ok := m.shards[maphash.Bytes(m.seed, key)&(shards-1)][string(key)]
	return v, ok
}

// Len is the number of keys.
func (m cowMap[V]) Len() int { return m.n }

// cowEdit changes a copy of a cowMap.
type cowEdit[V any] struct {
	m      cowMap[V]
	copied *[shards]bool
}

// edit starts a copy of m; m itself stays as it is.
func (m cowMap[V]) edit() *cowEdit[V] {
	cp := *m.shards
	m.shards = &cp
	return &cowEdit[V]{m: m, copied: new([shards]bool)}
}

func (e *cowEdit[V]) writable(key string) map[string]V {
	i := e.m.shard(key)
	if !e.copied[i] {
		old := e.m.shards[i]
		next := make(map[string]V, len(old)+1)
		for k, v := range old {
			next[k] = v
		}
		e.m.shards[i], e.copied[i] = next, true
	}
	return e.m.shards[i]
}

func (e *cowEdit[V]) set(key string, v V) {
	s := e.writable(key)
	if _, ok := s[key]; !ok {
		e.m.n++
	}
	s[key] = v
}

func (e *cowEdit[V]) del(key string) {
	if _, ok := e.m.get(key); !ok {
		return
	}
	delete(e.writable(key), key)
	e.m.n--
}

func (e *cowEdit[V]) get(key string) (V, bool) { return e.m.get(key) }

// done returns the edited map; the edit must not be used again.
func (e *cowEdit[V]) done() cowMap[V] { return e.m }

// chunkSize bounds a chunk of a nameList: a change copies one chunk and the
// list of chunks (1,000,000 tenants: about 4,000 pointers).
const chunkSize = 256

// nameList is the tenants sorted by name, in chunks that a change copies
// one at a time. A published nameList is immutable.
type nameList struct {
	chunks [][]*Tenant // each sorted, non-empty; every name of one before every name of the next
	n      int
}

// find returns the chunk that holds name or would: the first whose last
// name is not before it (the last chunk when all are).
func (l *nameList) find(name string) int {
	i, _ := slices.BinarySearchFunc(l.chunks, name, func(c []*Tenant, name string) int {
		return strings.Compare(c[len(c)-1].Name, name)
	})
	return min(i, len(l.chunks)-1)
}

// ascend calls fn with each tenant after name, in order, until it returns
// false.
func (l *nameList) ascend(after string, fn func(*Tenant) bool) {
	if len(l.chunks) == 0 {
		return
	}
	for i := l.find(after); i < len(l.chunks); i++ {
		c := l.chunks[i]
		j, found := slices.BinarySearchFunc(c, after, compareName)
		if found {
			j++
		}
		for ; j < len(c); j++ {
			if !fn(c[j]) {
				return
			}
		}
	}
}

func compareName(t *Tenant, name string) int { return strings.Compare(t.Name, name) }

// nameEdit changes a copy of a nameList.
type nameEdit struct {
	l      nameList
	copied map[int]bool // chunks of l that are this edit's own
}

func (l nameList) edit() *nameEdit {
	l.chunks = slices.Clone(l.chunks)
	return &nameEdit{l: l, copied: map[int]bool{}}
}

func (e *nameEdit) own(i int) []*Tenant {
	if !e.copied[i] {
		e.l.chunks[i] = slices.Clip(slices.Clone(e.l.chunks[i]))
		e.copied[i] = true
	}
	return e.l.chunks[i]
}

// put adds t, or replaces the tenant of its name.
func (e *nameEdit) put(t *Tenant) {
	l := &e.l
	if len(l.chunks) == 0 {
		l.chunks = [][]*Tenant{{t}}
		e.copied[0] = true
		l.n = 1
		return
	}
	i := l.find(t.Name)
	c := e.own(i)
	j, found := slices.BinarySearchFunc(c, t.Name, compareName)
	if found {
		c[j] = t
		return
	}
	c = slices.Insert(c, j, t)
	l.n++
	if len(c) <= chunkSize {
		l.chunks[i] = c
		return
	}
	// Split in two halves, both this edit's own; the marks of the chunks
	// after them move up by one.
	half := len(c) / 2
	left, right := slices.Clip(c[:half]), slices.Clone(c[half:])
	l.chunks = slices.Insert(l.chunks, i+1, right)
	l.chunks[i] = left
	moved := map[int]bool{}
	for k := range e.copied {
		if k > i {
			moved[k+1] = true
		} else {
			moved[k] = true
		}
	}
	moved[i], moved[i+1] = true, true
	e.copied = moved
}

// del removes the tenant named name, if any.
func (e *nameEdit) del(name string) {
	l := &e.l
	if len(l.chunks) == 0 {
		return
	}
	i := l.find(name)
	j, found := slices.BinarySearchFunc(l.chunks[i], name, compareName)
	if !found {
		return
	}
	c := e.own(i)
	c = slices.Delete(c, j, j+1)
	l.n--
	if len(c) > 0 {
		l.chunks[i] = c
		return
	}
	l.chunks = slices.Delete(l.chunks, i, i+1)
	moved := map[int]bool{}
	for k := range e.copied {
		switch {
		case k < i:
			moved[k] = true
		case k > i:
			moved[k-1] = true
		}
	}
	e.copied = moved
}

func (e *nameEdit) done() nameList { return e.l }

// buildNameList makes a nameList of tenants sorted by name, distinct.
func buildNameList(sorted []*Tenant) nameList {
	l := nameList{n: len(sorted)}
	for start := 0; start < len(sorted); start += chunkSize / 2 {
		end := min(start+chunkSize/2, len(sorted))
		l.chunks = append(l.chunks, slices.Clip(slices.Clone(sorted[start:end])))
	}
	return l
}

// compareClaims orders the claimants of a custom domain: the oldest claim
// wins, and of claims made at once, the first name.
func compareClaims(a, b *Tenant) int {
	return cmp.Or(a.Created.Compare(b.Created), strings.Compare(a.Name, b.Name))
}
