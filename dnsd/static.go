package dnsd

import (
	"encoding/binary"
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// hostNodes returns the nodes of the name servers inside the zone, with
// their addresses, and of the empty non-terminals between them and the
// apex. They do not change while dnsd runs.
func (b *builder) hostNodes() map[string]*node {
	nodes := map[string]*node{}
	for _, ns := range b.d.ns {
		if !ns.inZone {
			continue
		}
		var a, aaaa []dns.RR
		for _, ip := range ns.addrs {
			hdr := dns.RR_Header{Name: ns.name, Class: dns.ClassINET, Ttl: b.d.apexTTL}
			if ip.Is4() {
				hdr.Rrtype = dns.TypeA
				a = append(a, &dns.A{Hdr: hdr, A: ip.AsSlice()})
			} else {
				hdr.Rrtype = dns.TypeAAAA
				aaaa = append(aaaa, &dns.AAAA{Hdr: hdr, AAAA: ip.AsSlice()})
			}
		}
		n := &node{}
		var types []uint16
		for _, s := range []*rrset{b.signedSet(dns.TypeA, a), b.signedSet(dns.TypeAAAA, aaaa)} {
			if s != nil {
				n.sets = append(n.sets, s)
				types = append(types, s.rtype)
			}
		}
		if b.sign != nil {
			nsec := b.sign.nsecSet(ns.name, b.negativeTTL(), types)
			b.track(nsec.sigExp)
			n.sets = append(n.sets, nsec)
		}
		labels := strings.Split(strings.TrimSuffix(ns.name, "."+b.d.zone), ".")
		nodes[relKey(labels)] = n
		for i := 1; i < len(labels); i++ {
			if k := relKey(labels[i:]); nodes[k] == nil {
				nodes[k] = b.emptyNode(strings.Join(labels[i:], ".") + "." + b.d.zone)
			}
		}
	}
	return nodes
}

// relKey is the relative wire name of labels, the key of zone.names.
func relKey(labels []string) string {
	var sb strings.Builder
	for _, l := range labels {
		sb.WriteByte(byte(len(l)))
		sb.WriteString(l)
	}
	return sb.String()
}

// withSerial returns a copy of s, a set of one SOA record, with serial
// written in: the serial is the first of the last five fields of its rdata.
// A zone's SOA sets are made so, from sets packed once.
func withSerial(s *rrset, serial uint32) *rrset {
	c := *s
	c.data = slices.Clone(s.data)
	binary.BigEndian.PutUint32(c.data[len(c.data)-20:], serial)
	return &c
}

// apexAt returns the apex node of a zone with serial, from the template
// apexNode made; its SOA signed when the zone is.
func (b *builder) apexAt(serial uint32) *node {
	sets := slices.Clone(b.apex.sets)
	sets[0] = withSerial(sets[0], serial)
	if b.sign != nil {
		g := b.sign.sign([]dns.RR{b.apexSOA(serial)}, false)
		sets[0].sigs, sets[0].sigEnds, sets[0].sigExp = g.rec, []int{len(g.rec)}, g.exp
	}
	return &node{sets: sets}
}

// negativeAt is the negative answers' SOA of a zone with serial, signed
// when the zone is: the apex SOA's signature, its record's TTL lowered to
// the SOA's own, which validators accept (RFC 4035 section 5.3.3).
func (b *builder) negativeAt(serial uint32) *rrset {
	s := withSerial(b.negSOA, serial)
	if b.sign != nil {
		rr := b.sign.rrsig([]dns.RR{b.apexSOA(serial)})
		rr.Hdr.Ttl = b.negativeTTL()
		rec := packFull(rr)
		s.sigs, s.sigEnds, s.sigExp = rec, []int{len(rec)}, rr.Expiration
	}
	return s
}

// apexSOA is the SOA record as the apex holds it.
func (b *builder) apexSOA(serial uint32) *dns.SOA {
	rr := b.soaRR(serial, b.d.apexTTL)
	rr.Hdr.Name = b.d.zone
	return rr
}

// negativeTTL is the TTL of negative answers' records: the lesser of the
// SOA's TTL and its minimum field (RFC 2308 section 3, RFC 9077).
func (b *builder) negativeTTL() uint32 { return min(b.d.apexTTL, b.d.minimum) }

// apexNode returns the apex with its SOA (first, so that ANY gets it) and
// NS records, the addresses of in-zone name servers as glue; when the zone
// is signed, the key (DNSKEY, and CDS and CDNSKEY for the parent, RFC
// 7344) and the NSEC of compact denial.
func (b *builder) apexNode(serial uint32) *node {
	var ns, glue []dns.RR
	for _, s := range b.d.ns {
		ns = append(ns, &dns.NS{Hdr: dns.RR_Header{Name: b.d.zone, Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: b.d.apexTTL}, Ns: s.name})
		for _, ip := range s.addrs {
			hdr := dns.RR_Header{Name: s.name, Class: dns.ClassINET, Ttl: b.d.apexTTL}
			if ip.Is4() {
				hdr.Rrtype = dns.TypeA
				glue = append(glue, &dns.A{Hdr: hdr, A: ip.AsSlice()})
			} else {
				hdr.Rrtype = dns.TypeAAAA
				glue = append(glue, &dns.AAAA{Hdr: hdr, AAAA: ip.AsSlice()})
			}
		}
	}
	nsSet := b.signedSet(dns.TypeNS, ns)
	nsSet.glue = fixedSet(dns.TypeA, glue, false)
	n := &node{sets: []*rrset{fixedSet(dns.TypeSOA, []dns.RR{b.soaRR(serial, b.d.apexTTL)}, true), nsSet}}
	if b.sign != nil {
		key := dns.Copy(b.sign.dnskey).(*dns.DNSKEY)
		ds := key.ToDS(dns.SHA256)
		cds, cdnskey := ds.ToCDS(), key.ToCDNSKEY()
		cds.Hdr.Ttl, cdnskey.Hdr.Ttl = key.Hdr.Ttl, key.Hdr.Ttl
		n.sets = append(n.sets,
			b.signedSet(dns.TypeDNSKEY, []dns.RR{key}),
			b.signedSet(dns.TypeCDS, []dns.RR{cds}),
			b.signedSet(dns.TypeCDNSKEY, []dns.RR{cdnskey}))
		nsec := b.sign.nsecSet(b.d.zone, b.negativeTTL(), []uint16{dns.TypeNS, dns.TypeSOA, dns.TypeDNSKEY, dns.TypeCDS, dns.TypeCDNSKEY})
		b.track(nsec.sigExp)
		n.sets = append(n.sets, nsec)
	}
	return n
}

// negativeSOA is the SOA of the authority section of NXDOMAIN and NODATA
// answers. Its TTL is the lesser of the SOA's TTL and its minimum field,
// which is how long resolvers cache the negative answer (RFC 2308 section
// 3). Its owner is written in full: the zone's place in the question
// varies with the name asked.
func (b *builder) negativeSOA(serial uint32) *rrset {
	rr := b.soaRR(serial, min(b.d.apexTTL, b.d.minimum))
	rr.Hdr.Name = b.d.zone
	return fixedSet(dns.TypeSOA, []dns.RR{rr}, false)
}

func (b *builder) soaRR(serial, ttl uint32) *dns.SOA { return b.d.soaRR(serial, ttl) }

// soaRR is the zone's SOA record with serial and ttl, owner unset.
func (d *zoneData) soaRR(serial, ttl uint32) *dns.SOA {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns:      d.mname,
		Mbox:    d.rname,
		Serial:  serial,
		Refresh: d.refresh,
		Retry:   d.retry,
		Expire:  d.expire,
		Minttl:  d.minimum,
	}
}
