package router

import (
	"cmp"
	"hash/maphash"
	"slices"
	"strings"
)

// A cowMap has 4,096 shards in 64 groups of 64: with 1,000,000 tenants a
// change copies a map of about 250 entries and two arrays of 64 pointers,
// not the whole index.
const (
	groupBits = 6
	groups    = 1 << groupBits
	shards    = groups * groups
)

// cowMap is a string-keyed map that a change copies only in part: it is
// split into shards by a hash of the key, and an edit copies the shards it
// touches (and their groups), once each, sharing the others with the map
// it started from. A published cowMap is immutable.
type cowMap[V any] struct {
	seed maphash.Seed
	top  *[groups]*[groups]map[string]V
	n    int
}

func newCowMap[V any](seed maphash.Seed) cowMap[V] {
	m := cowMap[V]{seed: seed, top: new([groups]*[groups]map[string]V)}
	for i := range m.top {
		m.top[i] = new([groups]map[string]V)
	}
	return m
}

func (m cowMap[V]) shard(key string) uint64 { return maphash.String(m.seed, key) & (shards - 1) }

func (m cowMap[V]) at(i uint64) map[string]V { return m.top[i>>groupBits][i&(groups-1)] }

func (m cowMap[V]) get(key string) (V, bool) {
	v, ok := m.at(m.shard(key))[key]
	return v, ok
}

// getBytes is get for a key in bytes; it does not allocate.
func (m cowMap[V]) getBytes(key []byte) (V, bool) {
	v, ok := m.at(maphash.Bytes(m.seed, key) & (shards - 1))[string(key)]
	return v, ok
}

// Len is the number of keys.
func (m cowMap[V]) Len() int { return m.n }

// cowEdit changes a copy of a cowMap.
type cowEdit[V any] struct {
	m           cowMap[V]
	groupsOwned [(groups + 63) / 64]uint64
	shardsOwned [(shards + 63) / 64]uint64
}

// edit starts a copy of m; m itself stays as it is.
func (m cowMap[V]) edit() *cowEdit[V] {
	top := *m.top
	m.top = &top
	return &cowEdit[V]{m: m}
}

func owned(bits []uint64, i uint64) bool { return bits[i/64]&(1<<(i%64)) != 0 }

func own(bits []uint64, i uint64) { bits[i/64] |= 1 << (i % 64) }

func (e *cowEdit[V]) writable(key string) map[string]V {
	i := e.m.shard(key)
	g := i >> groupBits
	if !owned(e.groupsOwned[:], g) {
		cp := *e.m.top[g]
		e.m.top[g] = &cp
		own(e.groupsOwned[:], g)
	}
	if !owned(e.shardsOwned[:], i) {
		old := e.m.top[g][i&(groups-1)]
		next := make(map[string]V, len(old)+1)
		for k, v := range old {
			next[k] = v
		}
		e.m.top[g][i&(groups-1)] = next
		own(e.shardsOwned[:], i)
	}
	return e.m.top[g][i&(groups-1)]
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

// A nameList's leaves hold at most leafSize tenants and its groups at most
// groupSize leaves: a change copies one leaf, one group and the list of
// groups (1,000,000 tenants: about 120 pointers).
const (
	leafSize  = 256
	groupSize = 64
)

// nameList is the tenants sorted by name in a two-level tree of leaves
// that a change copies along one path only. A published nameList is
// immutable.
type nameList struct {
	groups []*nameGroup // each non-empty; every name of one before every name of the next
	n      int
}

type nameGroup struct {
	leaves []*nameLeaf // each non-empty, in order
}

type nameLeaf struct {
	names []*Tenant // sorted
}

func (g *nameGroup) last() string {
	l := g.leaves[len(g.leaves)-1].names
	return l[len(l)-1].Name
}

func (l *nameLeaf) last() string { return l.names[len(l.names)-1].Name }

// findGroup returns the group that holds name or would: the first whose
// last name is not before it (the last group when all are).
func (l *nameList) findGroup(name string) int {
	i, _ := slices.BinarySearchFunc(l.groups, name, func(g *nameGroup, name string) int {
		return strings.Compare(g.last(), name)
	})
	return min(i, len(l.groups)-1)
}

func (g *nameGroup) findLeaf(name string) int {
	i, _ := slices.BinarySearchFunc(g.leaves, name, func(l *nameLeaf, name string) int {
		return strings.Compare(l.last(), name)
	})
	return min(i, len(g.leaves)-1)
}

// ascend calls fn with each tenant after name, in order, until it returns
// false.
func (l *nameList) ascend(after string, fn func(*Tenant) bool) {
	if len(l.groups) == 0 {
		return
	}
	gi := l.findGroup(after)
	li := l.groups[gi].findLeaf(after)
	for ; gi < len(l.groups); gi, li = gi+1, 0 {
		g := l.groups[gi]
		for ; li < len(g.leaves); li++ {
			c := g.leaves[li].names
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
}

func compareName(t *Tenant, name string) int { return strings.Compare(t.Name, name) }

// nameEdit changes a copy of a nameList: the groups and leaves it copied
// are its own to change in place.
type nameEdit struct {
	l      nameList
	groups map[*nameGroup]bool
	leaves map[*nameLeaf]bool
}

func (l nameList) edit() *nameEdit {
	l.groups = slices.Clone(l.groups)
	return &nameEdit{l: l, groups: map[*nameGroup]bool{}, leaves: map[*nameLeaf]bool{}}
}

// own returns group gi and leaf li of it as this edit's own copies.
func (e *nameEdit) own(gi, li int) (*nameGroup, *nameLeaf) {
	g := e.l.groups[gi]
	if !e.groups[g] {
		g = &nameGroup{leaves: slices.Clone(g.leaves)}
		e.l.groups[gi] = g
		e.groups[g] = true
	}
	lf := g.leaves[li]
	if !e.leaves[lf] {
		lf = &nameLeaf{names: slices.Clone(lf.names)}
		g.leaves[li] = lf
		e.leaves[lf] = true
	}
	return g, lf
}

// put adds t, or replaces the tenant of its name.
func (e *nameEdit) put(t *Tenant) {
	l := &e.l
	if len(l.groups) == 0 {
		lf := &nameLeaf{names: []*Tenant{t}}
		g := &nameGroup{leaves: []*nameLeaf{lf}}
		l.groups = []*nameGroup{g}
		e.groups[g], e.leaves[lf] = true, true
		l.n = 1
		return
	}
	gi := l.findGroup(t.Name)
	li := l.groups[gi].findLeaf(t.Name)
	g, lf := e.own(gi, li)
	j, found := slices.BinarySearchFunc(lf.names, t.Name, compareName)
	if found {
		lf.names[j] = t
		return
	}
	lf.names = slices.Insert(lf.names, j, t)
	l.n++
	if len(lf.names) > leafSize {
		half := len(lf.names) / 2
		right := &nameLeaf{names: slices.Clone(lf.names[half:])}
		lf.names = slices.Clip(lf.names[:half])
		e.leaves[right] = true
		g.leaves = slices.Insert(g.leaves, li+1, right)
	}
	if len(g.leaves) > groupSize {
		half := len(g.leaves) / 2
		right := &nameGroup{leaves: slices.Clone(g.leaves[half:])}
		g.leaves = slices.Clip(g.leaves[:half])
		e.groups[right] = true
		l.groups = slices.Insert(l.groups, gi+1, right)
	}
}

// del removes the tenant named name, if any.
func (e *nameEdit) del(name string) {
	l := &e.l
	if len(l.groups) == 0 {
		return
	}
	gi := l.findGroup(name)
	li := l.groups[gi].findLeaf(name)
	j, found := slices.BinarySearchFunc(l.groups[gi].leaves[li].names, name, compareName)
	if !found {
		return
	}
	g, lf := e.own(gi, li)
	lf.names = slices.Delete(lf.names, j, j+1)
	l.n--
	if len(lf.names) == 0 {
		g.leaves = slices.Delete(g.leaves, li, li+1)
	}
	if len(g.leaves) == 0 {
		l.groups = slices.Delete(l.groups, gi, gi+1)
	}
}

func (e *nameEdit) done() nameList { return e.l }

// buildNameList makes a nameList of tenants sorted by name, distinct, with
// its leaves and groups half full, so that changes split few of them.
func buildNameList(sorted []*Tenant) nameList {
	l := nameList{n: len(sorted)}
	var g *nameGroup
	for start := 0; start < len(sorted); start += leafSize / 2 {
		if g == nil || len(g.leaves) == groupSize/2 {
			g = &nameGroup{}
			l.groups = append(l.groups, g)
		}
		end := min(start+leafSize/2, len(sorted))
		g.leaves = append(g.leaves, &nameLeaf{names: slices.Clone(sorted[start:end])})
	}
	return l
}

// compareClaims orders the claimants of a custom domain: the oldest claim
// wins, and of claims made at once, the first name.
func compareClaims(a, b *Tenant) int {
	return cmp.Or(a.Created.Compare(b.Created), strings.Compare(a.Name, b.Name))
}
