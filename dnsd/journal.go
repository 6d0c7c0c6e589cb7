package dnsd

import "slices"

// zoneDiff is what changed from one serial of the zone to the next: the
// tenants and the pods whose records differ. Zone transfers turn it into
// the deletions and additions of an IXFR (RFC 1995). It is immutable once
// in a journal.
type zoneDiff struct {
	from, to uint32
	tenants  []tenantChange
	pods     []podChange
}

// tenantChange is a tenant's record before and after; nil is absent.
type tenantChange struct {
	name     string
	old, new *tenantRec
}

// podChange is a pod's entry before and after; nil is absent.
type podChange struct {
	name     string
	old, new *podEntry
}

// size is the number of names the diff touches.
func (d *zoneDiff) size() int { return len(d.tenants) + len(d.pods) }

// record appends the changes of the build under way to the journal as the
// step from serial from to serial to, dropping the oldest steps beyond
// journalMax, or while the journal holds more changes than the zone has
// names (a full transfer is then cheaper than replaying it).
func (b *builder) record(from, to uint32) {
	if b.journalMax == 0 {
		return
	}
	d := b.changes
	d.from, d.to = from, to
	j := append(slices.Clip(b.journal), &d) // a new array: zones share the old
	total := 0
	for _, s := range j {
		total += s.size()
	}
	limit := b.tenants.n + len(b.pods) + 16
	for len(j) > b.journalMax || len(j) > 1 && total > limit {
		total -= j[0].size()
		j = j[1:]
	}
	b.journal = j
	b.changes = zoneDiff{}
}

// since returns the steps of the journal that lead from serial to the
// zone's, or false when the journal does not reach back that far.
func (z *zone) since(serial uint32) ([]*zoneDiff, bool) {
	for i, d := range z.journal {
		if d.from == serial {
			return z.journal[i:], true
		}
	}
	return nil, false
}

// diffTries returns the tenants whose records differ between two tries of
// the same seed: O(n) lookups, for a full build, which costs that anyway.
func diffTries(old, cur tenantTrie) []tenantChange {
	var out []tenantChange
	cur.each(func(name string, rec *tenantRec) {
		if was := old.lookup(name); !sameRec(was, rec) {
			out = append(out, tenantChange{name: name, old: was, new: rec})
		}
	})
	old.each(func(name string, rec *tenantRec) {
		if cur.lookup(name) == nil {
			out = append(out, tenantChange{name: name, old: rec})
		}
	})
	return out
}
