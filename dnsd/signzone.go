package dnsd

import (
	"net/netip"
	"runtime"
	"sync"

	"github.com/miekg/dns"
)

// The builder's share of DNSSEC: every set a zone holds is signed when it
// is made (a tenant's CNAME when the tenant changes, a pod's sets when its
// edges do, the SOA when the serial moves), and a signature is made again
// only when it is due for renewal (resign). The previous signatures are
// kept with what they sign: a full build signs only what changed.

// signedSet packs rrs as a fixed answer set, signed when the zone is.
func (b *builder) signedSet(rtype uint16, rrs []dns.RR) *rrset {
	if len(rrs) == 0 {
		return nil
	}
	var g sig
	if b.sign != nil {
		g = b.sign.sign(rrs, false) // before packing, which drops the owners
	}
	set := fixedSet(rtype, rrs, true)
	if b.sign != nil {
		set.sigs, set.sigEnds, set.sigExp = g.rec, []int{len(g.rec)}, g.exp
		b.track(g.exp)
	}
	return set
}

// track records that a signature of the zone's fixed names (apex, name
// servers, empty non-terminals) expires at exp.
func (b *builder) track(exp uint32) {
	if b.staticExp == 0 || int32(exp-b.staticExp) < 0 {
		b.staticExp = exp
	}
}

// emptyNode is the node of an empty non-terminal called name: no records;
// when the zone is signed, its NSEC (types RRSIG and NSEC alone).
func (b *builder) emptyNode(name string) *node {
	if b.sign == nil {
		return &node{}
	}
	nsec := b.sign.nsecSet(name, b.negativeTTL(), nil)
	b.track(nsec.sigExp)
	return &node{sets: []*rrset{nsec}}
}

// signRing signs a pod's rotating A or AAAA set over ips.
func (b *builder) signRing(set *rrset, pod string, ips []netip.Addr) {
	name := pod + "." + podsLabel + "." + b.d.zone
	rrs := make([]dns.RR, len(ips))
	for i, ip := range ips {
		rrs[i] = addressRecord(name, ip, b.d.podTTL)
	}
	b.sign.signRing(set, rrs)
}

// signedMX is the MX set of pod, signed: the records every pod shares, the
// signature its own (it covers the owner).
func (b *builder) signedMX(pod string) *rrset {
	c := *b.mx
	var rrs []dns.RR
	for _, mx := range b.d.mx {
		rrs = append(rrs, &dns.MX{Hdr: dns.RR_Header{Name: pod + "." + podsLabel + "." + b.d.zone, Rrtype: dns.TypeMX, Class: dns.ClassINET, Ttl: b.d.mxTTL}, Preference: mx.pref, Mx: mx.host})
	}
	b.sign.signSet(&c, rrs)
	return &c
}

// signedRec returns the signed record of tenant name in the pod of shared
// (the pod's unsigned record): old when it is that pod's and its
// signature is not due, else a new one signed now.
func (b *builder) signedRec(name string, shared, old *tenantRec) *tenantRec {
	if old != nil && old.pod == shared.pod && old.sig != nil && !b.sign.due(old.exp) {
		return old
	}
	r := *shared
	cname := &dns.CNAME{
		Hdr:    dns.RR_Header{Name: name + "." + b.d.zone, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: b.d.tenantTTL},
		Target: shared.podName + "." + podsLabel + "." + b.d.zone,
	}
	g := b.sign.sign([]dns.RR{cname}, false)
	r.sig, r.exp = g.rec, g.exp
	return &r
}

// signTenants gives every entry of ents its signed record: the previous
// zone's where it still holds, else signed now, on every CPU (a first
// build signs them all: about 25 µs each).
func (b *builder) signTenants(ents []tentry) {
	var todo []int
	for i := range ents {
		old := b.tenants.lookup(ents[i].name)
		if old != nil && old.pod == ents[i].rec.pod && old.sig != nil && !b.sign.due(old.exp) {
			ents[i].rec = old
			continue
		}
		todo = append(todo, i)
	}
	workers := min(runtime.GOMAXPROCS(0), len(todo)/64+1)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Go(func() {
			for j := w; j < len(todo); j += workers {
				e := &ents[todo[j]]
				e.rec = b.signedRec(e.name, e.rec, nil)
			}
		})
	}
	wg.Wait()
}

// resign makes again, in one zone, the signatures due for renewal: the
// fixed names' when one of them is due, pods' nodes, and up to limit
// tenants. It reports whether tenants are left for a next call.
func (b *builder) resign(limit int) (more bool) {
	if b.sign == nil || !b.built {
		return false
	}
	if b.sign.due(b.staticExp) {
		b.staticExp = 0
		b.hosts = b.hostNodes()
		b.apex = b.apexNode(0)
		b.rebuildNames()
	}
	if b.sign.due(b.zoneApex.sets[0].sigExp) || b.sign.due(b.zoneSOA.sigExp) {
		b.zoneApex, b.zoneSOA = b.apexAt(b.serial), b.negativeAt(b.serial)
	}
	var due []string
	for name, e := range b.pods {
		if b.sign.due(e.sigExp) {
			due = append(due, name)
		}
	}
	if len(due) > 0 {
		pods := make(map[string]*podEntry, len(b.pods))
		for name, e := range b.pods {
			pods[name] = e
		}
		for _, name := range due {
			c := *pods[name]
			b.podNode(name, &c)
			pods[name] = &c
		}
		b.pods = pods
		b.rebuildNames()
	}
	var names []string
	b.tenants.each(func(name string, rec *tenantRec) {
		if rec.sig != nil && b.sign.due(rec.exp) {
			names = append(names, name)
		}
	})
	if len(names) > limit {
		names, more = names[:limit], true
	}
	if len(names) > 0 {
		b.gen++
		x := b.tenants.begin(b.gen)
		for _, name := range names {
			old := x.lookup(name)
			x.set(name, b.signedRec(name, b.rec(old.podName), nil))
		}
		b.tenants = x.tenantTrie
	}
	b.m.resigned.Add(float64(len(names) + len(due)))
	return more
}
