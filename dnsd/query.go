package dnsd

import "encoding/binary"

// DNS wire constants dnsd needs (RFC 1035 section 4.1, RFC 6891).
const (
	headerLen = 12

	flagQR = 1 << 15
	flagAA = 1 << 10
	flagTC = 1 << 9
	flagRD = 1 << 8
	flagCD = 1 << 4

	typeOPT    = 41
	typeTSIG   = 250
	typeNSEC   = 47
	typeANY    = 255
	typeCNAME  = 5
	typeAXFR   = 252
	typeDS     = 43
	typeRRSIG  = 46
	typeDNSKEY = 48
	typeIXFR   = 251
	classINET  = 1
	optionNSID = 3

	rcodeSuccess  = 0
	rcodeFormErr  = 1
	rcodeServFail = 2
	rcodeNXDomain = 3
	rcodeNotImp   = 4
	rcodeRefused  = 5
	// rcodeBadVers is an extended rcode (16): 0 in the header, 1 in the OPT
	// record's upper rcode bits.
	rcodeBadVers = 16

	// maxNameLen is the longest name in wire form (RFC 1035 section 3.1).
	maxNameLen = 255
)

// query is a parsed query. Its slices point into the packet, which must
// outlive it. It is built on the stack of Handle and never escapes.
type query struct {
	id     uint16
	flags  uint16
	opcode uint8
	// qdcount is the number of questions; only 1 is answered.
	qdcount uint16
	// qname is the first question's name as asked (mixed case kept), in
	// uncompressed wire form ending in the root label.
	qname         []byte
	qtype, qclass uint16
	// qend is where the first question ends in the packet.
	qend int

	// edns is set when the query carries an OPT record; size, version, do
	// and nsid are read from it.
	edns    bool
	size    uint16
	version uint8
	do      bool
	// co is the Compact Answers OK flag (RFC 9824 section 4).
	co   bool
	nsid bool
	// badOPT is set for an OPT record RFC 6891 makes a format error: a
	// second one, one not owned by the root, or options that overrun it.
	badOPT bool
	// tsig is set when the query's last record is a TSIG (RFC 8945): it
	// is answered by the slow path, which checks and signs.
	tsig bool
	// cookie is the data of the first COOKIE option (RFC 7873), nil
	// without one.
	cookie []byte
	// nameHash is the hash of the lower-case name asked, for rate
	// limiting; 0 when not computed.
	nameHash uint64
}

// parseQuery parses p into q. It returns false for a packet that must be
// dropped without an answer: shorter than a header, a response (QR set,
// never answered, so that two servers cannot ping-pong), or a body that does
// not parse. Dropping what does not parse gives nothing to an attacker who
// spoofs a victim's address (RFC 8906 section 3.1.4 allows it).
func parseQuery(p []byte, q *query) bool {
	if len(p) < headerLen {
		return false
	}
	q.id = binary.BigEndian.Uint16(p)
	q.flags = binary.BigEndian.Uint16(p[2:])
	if q.flags&flagQR != 0 {
		return false
	}
	q.opcode = uint8(q.flags>>11) & 0xF
	q.qdcount = binary.BigEndian.Uint16(p[4:])
	an := int(binary.BigEndian.Uint16(p[6:]))
	ns := int(binary.BigEndian.Uint16(p[8:]))
	ar := int(binary.BigEndian.Uint16(p[10:]))

	off := headerLen
	for i := 0; i < int(q.qdcount); i++ {
		// The first name cannot be compressed: nothing precedes it.
		end := skipName(p, off, i > 0)
		if end < 0 || end+4 > len(p) {
			return false
		}
		if i == 0 {
			q.qname = p[off:end]
			q.qtype = binary.BigEndian.Uint16(p[end:])
			q.qclass = binary.BigEndian.Uint16(p[end+2:])
			q.qend = end + 4
		}
		off = end + 4
	}
	for i := 0; i < an+ns+ar; i++ {
		owner := off
		end := skipName(p, off, true)
		if end < 0 || end+10 > len(p) {
			return false
		}
		rtype := binary.BigEndian.Uint16(p[end:])
		rdata := end + 10
		rdEnd := rdata + int(binary.BigEndian.Uint16(p[end+8:]))
		if rdEnd > len(p) {
			return false
		}
		if i >= an+ns && rtype == typeOPT {
			q.opt(p, owner, end, rdata, rdEnd)
		}
		if rtype == typeTSIG {
			if i == an+ns+ar-1 {
				q.tsig = true
			} else {
				// A TSIG must be the last record (RFC 8945
				// section 5.1): a format error.
				q.badOPT = true
			}
		}
		off = rdEnd
	}
	return true
}

// opt reads the OPT record whose owner starts at owner, whose fixed fields
// start at fields and whose options span p[rdata:rdEnd].
func (q *query) opt(p []byte, owner, fields, rdata, rdEnd int) {
	if q.edns || p[owner] != 0 {
		q.badOPT = true
	}
	q.edns = true
	q.size = binary.BigEndian.Uint16(p[fields+2:])
	ttl := binary.BigEndian.Uint32(p[fields+4:])
	q.version = uint8(ttl >> 16)
	q.do = ttl&0x8000 != 0
	q.co = ttl&0x4000 != 0
	for o := rdata; o < rdEnd; {
		if o+4 > rdEnd {
			q.badOPT = true
			return
		}
		code := binary.BigEndian.Uint16(p[o:])
		n := int(binary.BigEndian.Uint16(p[o+2:]))
		o += 4 + n
		if o > rdEnd {
			q.badOPT = true
			return
		}
		// Every other option (client subnet, padding, ...) is ignored
		// and not echoed (RFC 6891 section 6.1.2).
		switch {
		case code == optionNSID:
			q.nsid = true
		case code == optionCookie && q.cookie == nil:
			q.cookie = p[o-n : o]
		}
	}
}

// skipName returns the offset just past the name at p[off:], or -1 when it
// is malformed: it overruns p, is longer than 255 bytes, uses the reserved
// label types 0x40 and 0x80, or is compressed where pointers is false.
// Pointers are not followed: skipping needs only their two bytes.
func skipName(p []byte, off int, pointers bool) int {
	n := 0
	for off < len(p) {
		c := int(p[off])
		switch c & 0xC0 {
		case 0x00:
			n += c + 1
			if n > maxNameLen {
				return -1
			}
			if c == 0 {
				return off + 1
			}
			off += c + 1
		case 0xC0:
			if !pointers || off+2 > len(p) {
				return -1
			}
			return off + 2
		default:
			return -1
		}
	}
	return -1
}
