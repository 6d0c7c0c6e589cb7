package dnsd

import (
	"encoding/binary"
	"hash/maphash"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"sync/atomic"
)

// Response rate limiting (RRL), as Knot DNS 3.2's mod-rrl does it: UDP
// responses are counted per flow — the client's network (/24 for IPv4,
// /56 for IPv6), the class of the response and, for positive and empty
// answers, the name asked — against a token bucket that refills at
// rate_limit a second and holds four seconds' worth. A response over the
// rate is sent as an empty truncated answer (TC: the client may retry over
// TCP) one time in slip, and dropped otherwise. A spoofed flood towards a
// victim thus reaches the victim at the rate at most, and a resolver
// behind the victim's address still gets in over TCP. TCP, clients on the
// whitelist and queries with a valid server cookie, whose sender proved
// its address, are never limited.

// Response classes (Knot's classification): errors and NXDOMAIN are counted
// per network alone, so that a flood of random names shares one bucket.
const (
	classPositive = iota + 1
	classError
	classNXDomain
	classEmpty
	classLarge
	classAny
	classDNSSEC
)

// largeResponse is the size from which a response is classed as large.
const largeResponse = 1024

// The state of a bucket, packed in one word so that a check is one load
// and one compare-and-swap: a tag of the flow's key (23 bits, never 0 in a
// used bucket), the slow-start flag, the second of the last response (20
// bits, wrapping every 12 days) and the tokens left (20 bits).
const (
	tokenBits = 20
	timeBits  = 20
	tokenMask = 1<<tokenBits - 1
	timeMask  = 1<<timeBits - 1
	slowStart = 1 << (tokenBits + timeBits)
	tagShift  = tokenBits + timeBits + 1
	// rrlWindow is how many seconds of tokens a bucket holds.
	rrlWindow = 4
	// maxRateLimit keeps a full bucket within tokenBits.
	maxRateLimit = tokenMask / rrlWindow
)

// rrl is the rate limiter: a table of buckets allocated once. A flow
// hashes to one bucket; two flows on one bucket evict each other, the
// newcomer starting in slow start (a second and a half of tokens), during
// which it shares the bucket rather than evict it again.
type rrl struct {
	rate      uint64
	slip      uint32
	buckets   []atomic.Uint64
	seed      maphash.Seed // of the names' hashes
	key       uint64       // of the flows' hashes
	whitelist []netip.Prefix
	clock     *coarseClock
	m         *Metrics
}

func newRRL(c RRL, clock *coarseClock, m *Metrics) *rrl {
	r := &rrl{
		rate:    uint64(c.RateLimit),
		slip:    uint32(c.Slip),
		buckets: make([]atomic.Uint64, c.TableSize),
		seed:    maphash.MakeSeed(),
		key:     rand.Uint64(),
		clock:   clock,
		m:       m,
	}
	for _, w := range c.Whitelist {
		p, _ := parsePrefix(w) // validated
		r.whitelist = append(r.whitelist, p)
	}
	return r
}

// respInfo is what rate limiting needs to know of an answer.
type respInfo struct {
	rcode    int
	qtype    uint16
	ancount  uint16
	size     int
	nameHash uint64 // of the lower-case name asked; 0 when none
	cookie   cookieState
	// qend is where the question ends in the answer; optAt where its OPT
	// record starts, or 0 without one.
	qend, optAt int
	// slow is set, with no answer, for a query that the slow path
	// answers (xfr.go): a zone transfer, a signed query.
	slow bool
}

// rrlAction is what becomes of an answer.
type rrlAction uint8

const (
	rrlPass rrlAction = iota
	rrlSlip
	rrlDrop
)

// check counts the answer described by info to the client at from and
// says whether to send it, slip it or drop it.
func (r *rrl) check(from netip.Addr, info *respInfo) rrlAction {
	if info.cookie >= cookieValid {
		r.m.rrlExempt[0].Inc()
		return rrlPass
	}
	for _, p := range r.whitelist {
		if p.Contains(from) {
			r.m.rrlExempt[1].Inc()
			return rrlPass
		}
	}
	if r.take(r.flow(from, info), uint64(r.clock.unix())) {
		return rrlPass
	}
	if r.slip == 1 || r.slip > 1 && rand.Uint32()%r.slip == 0 {
		r.m.rrlSlipped.Inc()
		return rrlSlip
	}
	r.m.rrlDropped.Inc()
	return rrlDrop
}

// classOf classifies an answer as Knot does.
func classOf(info *respInfo) uint64 {
	switch {
	case info.rcode == rcodeNXDomain:
		return classNXDomain
	case info.rcode != rcodeSuccess:
		return classError
	case info.qtype == typeANY:
		return classAny
	case info.qtype == typeDNSKEY || info.qtype == typeRRSIG || info.qtype == typeDS:
		return classDNSSEC
	case info.size >= largeResponse:
		return classLarge
	case info.ancount == 0:
		return classEmpty
	}
	return classPositive
}

// flow is the key of the answer's bucket: the client's network, the class,
// and the name for the classes that have one.
func (r *rrl) flow(from netip.Addr, info *respInfo) uint64 {
	var net uint64
	if from.Is4() {
		a := from.As4()
		net = 1<<63 | uint64(a[0])<<16 | uint64(a[1])<<8 | uint64(a[2])
	} else {
		a := from.As16()
		net = binary.BigEndian.Uint64(a[:]) >> 8 // the first 56 bits
	}
	cls := classOf(info)
	name := info.nameHash
	if cls == classError || cls == classNXDomain {
		name = 0
	}
	return mix64(mix64(net^r.key) ^ name ^ cls<<56)
}

// mix64 is the finaliser of SplitMix64: every bit of x moves every bit of
// the result.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// take takes a token from the bucket of key at second now, and reports
// whether there was one.
func (r *rrl) take(key, now uint64) bool {
	idx, _ := bits.Mul64(key, uint64(len(r.buckets)))
	b := &r.buckets[idx]
	tag := key>>tagShift | 1
	t := now & timeMask
	full := r.rate * rrlWindow
	for {
		old := b.Load()
		oldTag := old >> tagShift
		dt := (t - old>>tokenBits&timeMask) & timeMask
		var tokens, flags uint64
		switch {
		case old == 0 || oldTag != tag && dt > 1:
			// A free bucket, or one of a flow idle for two seconds:
			// the flow starts with a full window, as in Knot.
			tokens = full
		case oldTag != tag && old&slowStart == 0:
			// Another flow's, active: take it over, in slow start.
			tokens, flags = r.rate+r.rate/2, slowStart
		default:
			// Ours, or shared while in slow start.
			tag, tokens, flags = oldTag, old&tokenMask, old&slowStart
			if dt > 0 {
				tokens = min(tokens+r.rate*min(dt, rrlWindow), full)
				flags = 0
			}
		}
		ok := tokens > 0
		if ok {
			tokens--
		}
		w := tag<<tagShift | flags | t<<tokenBits | tokens
		if w == old || b.CompareAndSwap(old, w) {
			return ok
		}
	}
}

// slipAnswer turns the answer resp into an empty one with TC set: the
// header and question as they were, no records, the OPT record kept.
func slipAnswer(resp []byte, info *respInfo) []byte {
	n := info.qend
	arcount := uint16(0)
	if info.optAt > 0 {
		n += copy(resp[n:], resp[info.optAt:])
		arcount = 1
	}
	flags := binary.BigEndian.Uint16(resp[2:])
	binary.BigEndian.PutUint16(resp[2:], flags|flagTC)
	binary.BigEndian.PutUint16(resp[6:], 0)
	binary.BigEndian.PutUint16(resp[8:], 0)
	binary.BigEndian.PutUint16(resp[10:], arcount)
	return resp[:n]
}

// parsePrefix reads an address or a prefix ("192.0.2.1", "2001:db8::/32").
func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}
