package dnsd

import (
	"hash/maphash"
	"math/bits"
	"slices"
	"strings"
)

// tenantTrie maps tenant labels to their records. It is persistent: a
// change copies the path from the root to one leaf (at most a few hundred
// entries) and shares everything else with the previous version, so that a
// zone built for one changed tenant costs O(1) of a 100,000-tenant map,
// while every zone already published keeps seeing its own version.
//
// It is a hash trie: a name's 64-bit hash picks a child at each level, 4
// bits at a time from the top, down to a leaf, which holds its entries
// sorted by hash. A leaf splits into 16 when it outgrows maxLeaf. Lookups
// hash once and compare integers until the one name compare at the end;
// they allocate nothing.
type tenantTrie struct {
	seed maphash.Seed
	root *tnode
	// n is the number of entries; sum the sum of their content hashes,
	// which does not depend on order, so that a change updates it in
	// O(1) and equal contents give equal sums whatever their history.
	n   int
	sum uint64
	// leafMax is the size past which a leaf splits; 0 means maxLeaf.
	// Tests make it small to have deep tries of few entries.
	leafMax int
}

const (
	trieBits   = 4
	trieFanout = 1 << trieBits
	// maxLeaf is the size past which a leaf splits: a change copies one
	// leaf, so this bounds a change's copying (32 bytes an entry).
	maxLeaf = 256
	// maxDepth levels use up the hash; a deeper leaf would not split.
	maxDepth = 64 / trieBits
)

// tnode is a node of the trie: internal (kids) or a leaf (ents). A node
// reachable from a published zone is never modified; gen marks the nodes
// made by the transaction that may still change them in place.
type tnode struct {
	internal bool
	gen      uint64
	kids     [trieFanout]*tnode
	ents     []tentry
}

// tentry is a tenant of a leaf. name shares the router's string.
type tentry struct {
	h    uint64
	name string
	rec  *tenantRec
}

// tenantRec is what a tenant answers: a CNAME to its pod. Unsigned records
// are shared by every tenant of a pod; records are never modified.
type tenantRec struct {
	// pod is the relative wire name of the pod's node, a key of
	// zone.names ("\x05pod-1\x04pods").
	pod string
	// podName is the pod's own name ("pod-1"), for zone transfers.
	podName string
	// hash is the content hash of pod, mixed into the entries' sum.
	hash uint64
	// sig is the RRSIG of the tenant's CNAME (answer form) when the zone
	// is signed, and exp when it expires; the record is then the
	// tenant's own.
	sig []byte
	exp uint32
}

// sameRec reports whether a and b answer the same (nil is absent).
func sameRec(a, b *tenantRec) bool {
	return a == b || a != nil && b != nil && a.pod == b.pod
}

func newTenantTrie() tenantTrie {
	return tenantTrie{seed: maphash.MakeSeed(), root: &tnode{}}
}

// get returns the record of the lower-case label name, or nil.
func (t *tenantTrie) get(name []byte) *tenantRec {
	h := maphash.Bytes(t.seed, name)
	ents := t.leaf(h).ents
	for i := firstOf(ents, h); i < len(ents) && ents[i].h == h; i++ {
		if ents[i].name == string(name) {
			return ents[i].rec
		}
	}
	return nil
}

// lookup is get for a string.
func (t *tenantTrie) lookup(name string) *tenantRec {
	h := maphash.String(t.seed, name)
	ents := t.leaf(h).ents
	for i := firstOf(ents, h); i < len(ents) && ents[i].h == h; i++ {
		if ents[i].name == name {
			return ents[i].rec
		}
	}
	return nil
}

// leaf returns the leaf where hash h belongs.
func (t *tenantTrie) leaf(h uint64) *tnode {
	n := t.root
	for shift := 64 - trieBits; n.internal; shift -= trieBits {
		n = n.kids[(h>>uint(shift))&(trieFanout-1)]
	}
	return n
}

// firstOf returns the index of the first entry of ents whose hash is at
// least h.
func firstOf(ents []tentry, h uint64) int {
	i, j := 0, len(ents)
	for i < j {
		m := int(uint(i+j) >> 1)
		if ents[m].h < h {
			i = m + 1
		} else {
			j = m
		}
	}
	return i
}

// leafSearch returns where (h, name) is or would be in ents.
func leafSearch(ents []tentry, h uint64, name string) int {
	i, _ := slices.BinarySearchFunc(ents, tentry{h: h, name: name}, compareEntries)
	return i
}

func compareEntries(a, b tentry) int {
	switch {
	case a.h < b.h:
		return -1
	case a.h > b.h:
		return 1
	}
	return strings.Compare(a.name, b.name)
}

// contentHash is an entry's share of the trie's sum: it changes with the
// name and with the pod.
func contentHash(h uint64, rec *tenantRec) uint64 {
	x := h ^ bits.RotateLeft64(rec.hash, 29)
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	return x
}

// trieTxn changes a copy of a trie: nodes it copied carry its gen and are
// changed in place by its later changes; nodes of the trie it started from
// are never touched. Its result is tenantTrie once done.
type trieTxn struct {
	tenantTrie
	gen uint64
}

// begin starts a transaction over t; gen must be new, greater than any
// gen used before on t's nodes.
func (t tenantTrie) begin(gen uint64) *trieTxn { return &trieTxn{tenantTrie: t, gen: gen} }

// own returns n itself if the transaction made it, else a copy it owns.
func (x *trieTxn) own(n *tnode) *tnode {
	if n.gen == x.gen {
		return n
	}
	c := *n // copies the kids
	c.gen = x.gen
	if !c.internal {
		// The entries are changed in place from now on: a copy of
		// its own, with room for one insert.
		c.ents = append(make([]tentry, 0, len(n.ents)+1), n.ents...)
	}
	return &c
}

// set makes name answer rec (nil removes it) and returns the record it had.
func (x *trieTxn) set(name string, rec *tenantRec) (old *tenantRec) {
	h := maphash.String(x.seed, name)
	x.root = x.own(x.root)
	n, depth := x.root, 0
	for n.internal {
		k := (h >> uint(64-trieBits*(depth+1))) & (trieFanout - 1)
		c := x.own(n.kids[k])
		n.kids[k] = c
		n, depth = c, depth+1
	}
	i := leafSearch(n.ents, h, name)
	found := i < len(n.ents) && n.ents[i].h == h && n.ents[i].name == name
	if found {
		old = n.ents[i].rec
		x.sum -= contentHash(h, old)
	}
	switch {
	case rec == nil && found:
		n.ents = slices.Delete(n.ents, i, i+1)
		x.n--
	case rec == nil:
	case found:
		n.ents[i].rec = rec
		x.sum += contentHash(h, rec)
	default:
		n.ents = slices.Insert(n.ents, i, tentry{h: h, name: name, rec: rec})
		x.n++
		x.sum += contentHash(h, rec)
		if len(n.ents) > x.splitAt() && depth < maxDepth {
			x.split(n, depth)
		}
	}
	return old
}

func (t *tenantTrie) splitAt() int {
	if t.leafMax > 0 {
		return t.leafMax
	}
	return maxLeaf
}

// split turns the leaf n at depth into an internal node over 16 leaves.
// Its entries are sorted by hash, so each child's are a contiguous run.
func (x *trieTxn) split(n *tnode, depth int) {
	ents := n.ents
	n.internal, n.ents = true, nil
	shift := uint(64 - trieBits*(depth+1))
	for k := range n.kids {
		i := 0
		for i < len(ents) && (ents[i].h>>shift)&(trieFanout-1) == uint64(k) {
			i++
		}
		n.kids[k] = &tnode{gen: x.gen, ents: slices.Clone(ents[:i])}
		ents = ents[i:]
	}
}

// rebuild returns a trie of ents, made from scratch with t's seed: O(n log
// n), for a full build. ents are reordered; their h is filled in here, and
// the trie keeps them: the caller must not use them again.
func (t tenantTrie) rebuild(ents []tentry) tenantTrie {
	t.n, t.sum = len(ents), 0
	for i := range ents {
		ents[i].h = maphash.String(t.seed, ents[i].name)
		t.sum += contentHash(ents[i].h, ents[i].rec)
	}
	slices.SortFunc(ents, compareEntries)
	t.root = t.buildNode(ents, 0)
	return t
}

func (t *tenantTrie) buildNode(ents []tentry, depth int) *tnode {
	if len(ents) <= t.splitAt() || depth == maxDepth {
		// The leaves share the array rebuild was given, each capped to
		// its part: a change copies a leaf before writing it (own).
		return &tnode{ents: ents[:len(ents):len(ents)]}
	}
	n := &tnode{internal: true}
	shift := uint(64 - trieBits*(depth+1))
	for k := range n.kids {
		i := 0
		for i < len(ents) && (ents[i].h>>shift)&(trieFanout-1) == uint64(k) {
			i++
		}
		n.kids[k] = t.buildNode(ents[:i], depth+1)
		ents = ents[i:]
	}
	return n
}

// each calls fn with every entry, in the trie's order.
func (t *tenantTrie) each(fn func(name string, rec *tenantRec)) {
	var walk func(n *tnode)
	walk = func(n *tnode) {
		if n.internal {
			for _, c := range n.kids {
				walk(c)
			}
			return
		}
		for _, e := range n.ents {
			fn(e.name, e.rec)
		}
	}
	walk(t.root)
}
