package dnsd

import (
	"encoding/binary"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// rrset is the packed records of one name and type, ready to be copied into
// answers. A published rrset is immutable, except for its rotor and
// counter, which are atomic.
type rrset struct {
	rtype uint16
	// data holds the packed records. The records of an answer set begin
	// with a two-byte compression pointer to their owner, 0xC00C (the
	// question), which is patched when the set is reached through a CNAME;
	// their rdata is never compressed, so they can be copied anywhere.
	// A rotating set holds its n records followed by the first show-1 again,
	// so that every rotation is one contiguous slice.
	data []byte
	// size is the length of each record of a rotating set (all A or all
	// AAAA records have the same); 0 for a fixed set, whose records end at
	// the offsets in ends.
	size int
	ends []int
	// n is the number of distinct records; show how many an answer holds.
	n, show int
	// rotor picks the rotation of each answer; nil for fixed sets. The same
	// rotor serves the pod's set in every later zone, so rotation carries on
	// across snapshot swaps instead of restarting at the first edge.
	rotor *atomic.Uint32
	// failOpen counts the answers given from the pod's unhealthy edges
	// because none passes; nil for a healthy set.
	failOpen prometheus.Counter
	// glue is added to the additional section after this set (the
	// addresses of in-zone name servers after NS records); nil for none.
	glue *rrset
	// sigs holds the set's RRSIG records when the zone is signed, in the
	// form of its records (a pointer to the owner first, or the owner
	// written out), each ending at the offset in sigEnds: one, or for a
	// rotating set with more records than an answer shows, one per
	// rotation (a signature covers the records answered). sigExp is when
	// the first of them expires.
	sigs    []byte
	sigEnds []int
	sigExp  uint32
}

// Sections of a message, indexes of response.counts.
const (
	secAnswer = iota
	secAuthority
	secAdditional
)

// response assembles an answer in a caller's buffer. Everything it appends
// fits in limit, which already excludes the room the OPT record needs; what
// does not fit is cut at a record boundary and sets tc, after which nothing
// more is added (RFC 2181 section 9: never cut silently).
type response struct {
	b       []byte
	qdcount uint16
	limit   int
	counts  [3]uint16
	tc      bool
	// do adds the sets' signatures: the query set DO and the zone is
	// signed.
	do bool
}

// add appends the records of s to section sec. A non-zero owner replaces
// the owner pointer each record starts with.
func (r *response) add(sec int, s *rrset, owner uint16) {
	if r.tc || s == nil {
		return
	}
	room := r.limit - len(r.b)
	at := len(r.b)
	var k int
	start := 0
	if s.size > 0 {
		if s.rotor != nil && s.n > 1 {
			start = int((s.rotor.Add(1) - 1) % uint32(s.n))
		}
		k = s.show
		if k*s.size > room {
			k, r.tc = room/s.size, true
		}
		from := start * s.size
		r.b = append(r.b, s.data[from:from+k*s.size]...)
		if owner != 0 {
			for i := 0; i < k; i++ {
				binary.BigEndian.PutUint16(r.b[at+i*s.size:], owner)
			}
		}
	} else {
		k = len(s.ends)
		for k > 0 && s.ends[k-1] > room {
			k--
		}
		if k < len(s.ends) {
			r.tc = true
		}
		if k > 0 {
			r.b = append(r.b, s.data[:s.ends[k-1]]...)
		}
		if owner != 0 {
			for i := 0; i < k; i++ {
				o := at
				if i > 0 {
					o += s.ends[i-1]
				}
				binary.BigEndian.PutUint16(r.b[o:], owner)
			}
		}
	}
	r.counts[sec] += uint16(k)
	if s.failOpen != nil && k > 0 {
		s.failOpen.Inc()
	}
	if r.do && len(s.sigEnds) > 0 && !r.tc {
		i := 0
		if len(s.sigEnds) > 1 {
			i = start
		}
		from := 0
		if i > 0 {
			from = s.sigEnds[i-1]
		}
		r.record(sec, s.sigs[from:s.sigEnds[i]], owner)
	}
	if s.glue != nil {
		r.add(secAdditional, s.glue, 0)
	}
}

// record appends one packed record to section sec, with its owner pointer
// replaced when owner is not zero, or sets tc when it does not fit.
func (r *response) record(sec int, rec []byte, owner uint16) {
	if r.tc || len(rec) == 0 {
		return
	}
	if len(r.b)+len(rec) > r.limit {
		r.tc = true
		return
	}
	at := len(r.b)
	r.b = append(r.b, rec...)
	if owner != 0 {
		binary.BigEndian.PutUint16(r.b[at:], owner)
	}
	r.counts[sec]++
}

// cname appends a CNAME record owned by the question (0xC00C) whose target
// is the relative wire name target followed by a pointer to zonePtr, the
// zone's place in the question. It returns where the target starts, for the
// chased records to point at, or 0 when it did not fit.
func (r *response) cname(ttl uint32, target string, zonePtr uint16) uint16 {
	rdlen := len(target) + 2
	if r.tc || len(r.b)+12+rdlen > r.limit {
		r.tc = true
		return 0
	}
	r.b = append(r.b, 0xC0, 0x0C, 0, typeCNAME, 0, classINET,
		byte(ttl>>24), byte(ttl>>16), byte(ttl>>8), byte(ttl),
		byte(rdlen>>8), byte(rdlen))
	at := len(r.b)
	r.b = append(r.b, target...)
	r.b = append(r.b, byte(zonePtr>>8)|0xC0, byte(zonePtr))
	r.counts[secAnswer]++
	return uint16(at)
}

// opt appends the OPT record of the response (RFC 6891 section 6.1): our
// buffer size, the upper bits of the extended rcode, version 0, the DO and
// CO bits copied from the query (RFC 3225, RFC 9824), NSID when asked for
// and set, and the COOKIE option's data when given (RFC 7873).
func (r *response) opt(size int, rcode int, do, co bool, nsid, cookie []byte) {
	var flags byte
	if do {
		flags = 0x80
	}
	if co {
		flags |= 0x40
	}
	rdlen := 0
	if len(nsid) > 0 {
		rdlen += 4 + len(nsid)
	}
	if len(cookie) > 0 {
		rdlen += 4 + len(cookie)
	}
	r.b = append(r.b, 0, 0, typeOPT, byte(size>>8), byte(size),
		byte(rcode>>4), 0, flags, 0,
		byte(rdlen>>8), byte(rdlen))
	if len(nsid) > 0 {
		r.b = append(r.b, 0, optionNSID, byte(len(nsid)>>8), byte(len(nsid)))
		r.b = append(r.b, nsid...)
	}
	if len(cookie) > 0 {
		r.b = append(r.b, 0, optionCookie, 0, byte(len(cookie)))
		r.b = append(r.b, cookie...)
	}
	r.counts[secAdditional]++
}
