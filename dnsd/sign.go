package dnsd

import (
	"bytes"
	"crypto"
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"slices"
	"sync/atomic"

	"github.com/miekg/dns"
)

// typeNXNAME marks, in a compact denial's NSEC, that the name does not
// exist (RFC 9824 section 3.3).
const typeNXNAME = 128

// inceptionSkew backdates signatures' inception for validators whose
// clocks run behind.
const inceptionSkew = 3600

// signer signs RRsets with the zone's key.
type signer struct {
	key      crypto.Signer
	dnskey   *dns.DNSKEY
	tag      uint16
	zone     string
	lifetime uint32 // seconds
	refresh  uint32
	clock    *coarseClock
	neg      *negCache
	m        *Metrics
}

func newSigner(key crypto.Signer, d *zoneData, c DNSSEC, clock *coarseClock, m *Metrics) *signer {
	k := dnskeyOf(key, d.zone, d.apexTTL)
	return &signer{
		key:      key,
		dnskey:   k,
		tag:      k.KeyTag(),
		zone:     d.zone,
		lifetime: uint32(c.SignatureLifetime / 1e9),
		refresh:  uint32(c.Refresh / 1e9),
		clock:    clock,
		neg:      &negCache{seed: maphash.MakeSeed()},
		m:        m,
	}
}

// sig is a packed RRSIG record and when it expires.
type sig struct {
	rec []byte // answer form: a pointer to the owner first
	exp uint32
}

// sign returns the RRSIG of rrs (one RRset: one owner, type and class), in
// answer form, or in full form (owner written out) when full is set.
func (s *signer) sign(rrs []dns.RR, full bool) sig {
	rr := s.rrsig(rrs)
	if full {
		return sig{rec: packFull(rr), exp: rr.Expiration}
	}
	return sig{rec: packAnswer(rr), exp: rr.Expiration}
}

// rrsig signs rrs.
func (s *signer) rrsig(rrs []dns.RR) *dns.RRSIG {
	now := uint32(s.clock.unix())
	rr := &dns.RRSIG{
		Hdr:        dns.RR_Header{Ttl: rrs[0].Header().Ttl},
		Algorithm:  s.dnskey.Algorithm,
		Inception:  now - inceptionSkew,
		Expiration: now + s.lifetime,
		KeyTag:     s.tag,
		SignerName: s.zone,
	}
	if err := rr.Sign(s.key, rrs); err != nil {
		// The key was checked and every record packs.
		panic(fmt.Sprintf("dnsd: sign %v: %v", rrs[0].Header(), err))
	}
	return rr
}

// due reports whether a signature expiring at exp must be made again.
func (s *signer) due(exp uint32) bool {
	now := uint32(s.clock.unix())
	return int32(exp-now) < int32(s.refresh)
}

// signSet adds to set s the signatures of rrs, the records it holds.
func (s *signer) signSet(set *rrset, rrs []dns.RR) {
	g := s.sign(rrs, false)
	set.sigs, set.sigEnds, set.sigExp = g.rec, []int{len(g.rec)}, g.exp
}

// signRing adds to the rotating set the signature of each window it
// answers: one when it holds no more records than an answer shows (their
// order does not matter to a signature), else one per rotation.
func (s *signer) signRing(set *rrset, rrs []dns.RR) {
	windows := 1
	if set.n > set.show {
		windows = set.n
	}
	set.sigExp = ^uint32(0)
	for i := 0; i < windows; i++ {
		w := make([]dns.RR, set.show)
		for j := range w {
			w[j] = rrs[(i+j)%set.n]
		}
		g := s.sign(w, false)
		set.sigs = append(set.sigs, g.rec...)
		set.sigEnds = append(set.sigEnds, len(set.sigs))
		set.sigExp = min(set.sigExp, g.exp)
	}
}

// nsecSet returns the NSEC set of an existing name, as compact denial
// answers it: the next name is \000.<name>, the bitmap the types it has,
// RRSIG and NSEC (RFC 9824 section 3.1), signed.
func (s *signer) nsecSet(name string, ttl uint32, types []uint16) *rrset {
	types = append(slices.Clone(types), dns.TypeRRSIG, dns.TypeNSEC)
	slices.Sort(types)
	rr := &dns.NSEC{
		Hdr:        dns.RR_Header{Name: name, Rrtype: dns.TypeNSEC, Class: dns.ClassINET, Ttl: ttl},
		NextDomain: `\000.` + name,
		TypeBitMap: slices.Compact(types),
	}
	g := s.sign([]dns.RR{rr}, false) // before packing, which drops the owner
	set := fixedSet(dns.TypeNSEC, []dns.RR{rr}, true)
	set.sigs, set.sigEnds, set.sigExp = g.rec, []int{len(g.rec)}, g.exp
	return set
}

// negCache keeps the compact denials signed for names that do not exist,
// by name: a query for one of them is signed once, not every time. It is
// a fixed table of slots, each replaced by the last name hashed to it.
type negCache struct {
	seed  maphash.Seed
	slots [4096]atomic.Pointer[negEntry]
}

// negEntry is a denial: the NSEC record owned by the name and its RRSIG,
// both in answer form.
type negEntry struct {
	name      []byte // lower-case wire form
	nsec, sig []byte
	exp       uint32
}

// nxnameBitmap is the type bitmap of a compact denial's NSEC: RRSIG,
// NSEC and NXNAME, all in window 0.
var nxnameBitmap = func() []byte {
	b := make([]byte, 2+typeNXNAME/8+1)
	b[1] = byte(len(b) - 2)
	for _, t := range []int{typeRRSIG, typeRRSIG + 1, typeNXNAME} { // RRSIG, NSEC, NXNAME
		b[2+t/8] |= 0x80 >> (t % 8)
	}
	return b
}()

// denial returns the NSEC and RRSIG records (answer form) that deny lname,
// a lower-case wire name that does not exist, signing them when the cache
// has none fresh: the one cost per query that signing online has, paid
// once per name. ok is false for a name too long to have a next name below
// it, or with a wildcard label, which get no denial.
func (s *signer) denial(lname []byte, ttl uint32) (nsec, rrsig []byte, ok bool) {
	c := s.neg
	slot := &c.slots[maphash.Bytes(c.seed, lname)%uint64(len(c.slots))]
	if e := slot.Load(); e != nil && bytes.Equal(e.name, lname) && !s.due(e.exp) {
		return e.nsec, e.sig, true
	}
	if len(lname) > maxNameLen-2 {
		return nil, nil, false
	}
	// The NSEC in wire form with its owner written out, for miekg/dns to
	// sign: no text round trip, whatever bytes the name holds.
	bitmap := nxnameBitmap
	wire := append([]byte(nil), lname...)
	rdlen := 2 + len(lname) + len(bitmap)
	wire = append(wire, 0, byte(dns.TypeNSEC), 0, classINET, byte(ttl>>24), byte(ttl>>16), byte(ttl>>8), byte(ttl), byte(rdlen>>8), byte(rdlen), 1, 0)
	wire = append(wire, lname...)
	wire = append(wire, bitmap[:]...)
	rr, _, err := dns.UnpackRR(wire, 0)
	if err != nil || rr.Header().Name[0] == '*' {
		// A name with a wildcard label would be signed as a wildcard's
		// expansion (miekg/dns lowers the label count): no denial.
		return nil, nil, false
	}
	g := s.sign([]dns.RR{rr}, false)
	s.m.denialsSigned.Inc()
	e := &negEntry{name: append([]byte(nil), lname...), exp: g.exp, sig: g.rec}
	e.nsec = append([]byte{0xC0, 0x0C}, wire[len(lname):]...)
	slot.Store(e)
	return e.nsec, e.sig, true
}

// withTTL returns a copy of the packed record rec (answer or full form,
// owner of ownerLen bytes) with its TTL set to ttl.
func withTTL(rec []byte, ownerLen int, ttl uint32) []byte {
	c := bytes.Clone(rec)
	binary.BigEndian.PutUint32(c[ownerLen+4:], ttl)
	return c
}
