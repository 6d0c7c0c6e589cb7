package dnsd

import (
	"bytes"
	"time"
)

// zone is every answer dnsd can give, precomputed from one router snapshot.
// A published zone is immutable (its rrsets' rotors and counters aside).
type zone struct {
	// serial is the SOA serial; built is when the snapshot it comes from
	// was built.
	serial uint32
	built  time.Time
	// origin is the zone in lower-case wire form.
	origin []byte
	// apex is the zone's own node (SOA, NS).
	apex *node
	// names maps a name's wire form relative to the zone (lower case,
	// without the zone's labels: "\x05pod-1\x04pods" is a pod) to its
	// node: name servers, pods and the empty non-terminals above them. It
	// is shared between zones while no pod changes.
	names map[string]*node
	// pods are the pods by name with what their nodes hold; shared
	// between zones while no pod changes.
	pods map[string]*podEntry
	// tenants maps a tenant's label to its record; zones share all of it
	// but the paths that changed.
	tenants tenantTrie
	// journal holds the changes that led to this zone from the serials
	// before, oldest first, for IXFR (journal.go).
	journal []*zoneDiff
	// soa is the SOA record of negative answers, owned by the zone name
	// written in full, with the negative TTL (RFC 2308 section 3).
	soa *rrset
	// tenantTTL is the TTL of tenant CNAME records; negTTL that of
	// negative answers' records.
	tenantTTL, negTTL uint32
	// sign signs the denials of names that do not exist; nil when the
	// zone is not signed.
	sign *signer
}

// node is a name of the zone with its record sets. An empty non-terminal
// has none: it exists, so it answers NODATA, not NXDOMAIN (RFC 8020).
type node struct {
	sets []*rrset
}

// set returns the node's records of type qtype, or nil. ANY gets the first
// set only, as RFC 8482 allows: one RRset, not everything.
func (n *node) set(qtype uint16) *rrset {
	if qtype == typeANY {
		if len(n.sets) > 0 {
			return n.sets[0]
		}
		return nil
	}
	for _, s := range n.sets {
		if s.rtype == qtype {
			return s
		}
	}
	return nil
}

// relative returns lname, a lower-case wire name, without the zone's
// labels, and false when lname is not in the zone. The cut must fall on a
// label boundary: "\x08xexample\x04test\x00" is not in "example.test.".
func (z *zone) relative(lname []byte) ([]byte, bool) {
	cut := len(lname) - len(z.origin)
	if cut < 0 || !bytes.Equal(lname[cut:], z.origin) {
		return nil, false
	}
	o := 0
	for o < cut {
		o += int(lname[o]) + 1
	}
	return lname[:cut], o == cut
}

// lower copies the wire name src into dst lower-casing ASCII letters.
// Length bytes are at most 63, below 'A', so they are never changed.
func lower(dst, src []byte) {
	for i, c := range src {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst[i] = c
	}
}
