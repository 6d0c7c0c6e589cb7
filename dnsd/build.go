package dnsd

import (
	"fmt"
	"hash"
	"hash/fnv"
	"log/slog"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/podedge/podedge/router"
)

// podsLabel is the label under which pod names live: <pod>.pods.<zone>.
const podsLabel = "pods"

// builder turns router snapshots into zones. It keeps what must outlive a
// single zone: the rotors of the pods' sets, the serial, and the tenant map
// while the tenants do not change. It is not safe for concurrent use
// (Handler.Update serialises it).
type builder struct {
	d   *zoneData
	m   *Metrics
	log *slog.Logger

	origin []byte
	hosts  map[string]*node // name servers in the zone and the empty non-terminals above them
	mx     *rrset           // the MX set every pod shares; nil without exchangers

	rotors map[string]*atomic.Uint32 // by pod and type, "pod-1/A"

	haveSerial bool
	serial     uint32
	hash       uint64

	tenantsOf  []*router.Tenant // the tenant list tenants was built from
	tenants    map[string]string
	tenantHash uint64
	conflicts  map[string]bool // tenant names already logged as shadowed

	gauged   map[string]bool // pods with per-pod gauge series
	failOpen map[string]bool // pods answered from failing edges, to log transitions
	built    bool
}

func newBuilder(d *zoneData, m *Metrics, log *slog.Logger) *builder {
	origin := make([]byte, maxNameLen)
	n, err := dns.PackDomainName(d.zone, origin, 0, nil, false)
	if err != nil {
		// The zone was validated; this cannot happen.
		panic(fmt.Sprintf("dnsd: zone %q: %v", d.zone, err))
	}
	b := &builder{
		d:         d,
		m:         m,
		log:       log.With("component", "dnsd"),
		origin:    origin[:n],
		rotors:    map[string]*atomic.Uint32{},
		conflicts: map[string]bool{},
		gauged:    map[string]bool{},
		failOpen:  map[string]bool{},
	}
	b.hosts = b.hostNodes()
	b.mx = b.mxSet()
	return b
}

// build makes the zone of snapshot s.
func (b *builder) build(s *router.Snapshot) *zone {
	start := time.Now()
	z := &zone{
		built:     s.Built,
		origin:    b.origin,
		names:     make(map[string]*node, 8+2*len(s.Pods())),
		tenantTTL: b.d.tenantTTL,
	}
	h := fnv.New64a()

	// Pods: <pod>.pods.<zone>, each with its A, AAAA and MX sets.
	rotors := make(map[string]*atomic.Uint32, 2*len(s.Pods()))
	gauged := make(map[string]bool, len(s.Pods()))
	failOpen := map[string]bool{}
	podKeys := make(map[string]string, len(s.Pods()))
	for _, ps := range s.Pods() {
		key := podKey(ps.Name)
		podKeys[ps.Name] = key
		n, failing := b.podNode(ps, rotors, h)
		if failing {
			failOpen[ps.Name] = true
		}
		z.names[key] = n
		h.Write([]byte(key))
		b.m.passingEdges.WithLabelValues(ps.Name).Set(float64(len(ps.PassingEdges)))
		b.m.edges.WithLabelValues(ps.Name).Set(float64(len(ps.Edges)))
		gauged[ps.Name] = true
	}
	for pod := range b.failOpen {
		if failOpen[pod] {
			continue
		}
		if ps := s.Pod(pod); ps != nil {
			b.log.Info("pod has passing edges again", "pod", pod, "passing", len(ps.PassingEdges))
		} else {
			b.log.Info("pod with no passing edge is gone", "pod", pod)
		}
	}
	b.failOpen = failOpen
	for pod := range b.gauged {
		if !gauged[pod] {
			b.m.passingEdges.DeleteLabelValues(pod)
			b.m.edges.DeleteLabelValues(pod)
		}
	}
	b.rotors, b.gauged = rotors, gauged
	if len(s.Pods()) > 0 {
		z.names[podKey("")] = &node{} // pods.<zone>, an empty non-terminal
	}
	for k, n := range b.hosts {
		z.names[k] = n
	}

	z.tenants = b.tenantMap(s.Tenants(), podKeys, z.names)
	binaryPut(h, b.tenantHash)

	// The serial follows the data: it changes when what dnsd answers
	// changes, not on every snapshot (app servers are not in DNS).
	sum := h.Sum64()
	switch {
	case !b.haveSerial:
		b.serial, b.haveSerial = max(uint32(s.Index), 1), true
	case sum != b.hash:
		next := uint32(s.Index)
		if int32(next-b.serial) <= 0 {
			// The index went backwards (a new Consul cluster) or
			// wrapped: the serial must still grow (RFC 1982).
			next = b.serial + 1
		}
		b.serial = max(next, 1)
	}
	b.hash = sum
	z.serial = b.serial

	z.names[""] = b.apexNode(z.serial)
	z.soa = b.negativeSOA(z.serial)

	b.m.serial.Set(float64(z.serial))
	b.m.builds.Inc()
	b.m.buildSeconds.Set(time.Since(start).Seconds())
	b.m.names.WithLabelValues("pod").Set(float64(len(s.Pods())))
	b.m.names.WithLabelValues("tenant").Set(float64(len(z.tenants)))
	if !b.built {
		b.built = true
		b.log.Info("answering from platform data", "serial", z.serial, "index", s.Index, "pods", len(s.Pods()), "tenants", len(z.tenants))
	}
	b.log.Debug("zone built", "serial", z.serial, "index", s.Index, "pods", len(s.Pods()), "tenants", len(z.tenants), "took", time.Since(start))
	return z
}

// podNode returns the node of a pod: its A and AAAA rings over the passing
// edges (all edges when none passes: failing is then true) and the MX set.
// The rings' rotors come from the previous zone and are recorded in rotors;
// the packed records are added to h, the hash of the zone's data.
func (b *builder) podNode(ps *router.PodState, rotors map[string]*atomic.Uint32, h hash.Hash64) (n *node, failing bool) {
	n = &node{}
	edges := ps.PassingEdges
	if len(edges) == 0 && len(ps.Edges) > 0 {
		// Fail open, as Route 53 does: an answer with every edge beats
		// NXDOMAIN or nothing, which would take the pod's tenants off the
		// Internet for as long as resolvers cache it.
		edges, failing = ps.Edges, true
		if !b.failOpen[ps.Name] {
			b.log.Warn("pod has no passing edge; answering with all its edges", "pod", ps.Name, "edges", len(ps.Edges))
		}
	}
	v4, v6 := addresses(edges)
	for _, fam := range []struct {
		rtype uint16
		ips   []netip.Addr
	}{{dns.TypeA, v4}, {dns.TypeAAAA, v6}} {
		if len(fam.ips) == 0 {
			continue
		}
		rk := ps.Name + "/" + dns.TypeToString[fam.rtype]
		rotor := b.rotors[rk]
		if rotor == nil {
			rotor = new(atomic.Uint32)
		}
		rotors[rk] = rotor
		set := b.ring(fam.rtype, fam.ips, rotor)
		if failing {
			set.failOpen = b.m.failOpen.WithLabelValues(ps.Name)
		}
		n.sets = append(n.sets, set)
		h.Write(set.data)
	}
	if b.mx != nil {
		n.sets = append(n.sets, b.mx)
	}
	return n, failing
}

// podKey is the relative wire name of pod's node, "\x05pod-1\x04pods";
// podKey("") is pods.<zone> itself.
func podKey(pod string) string {
	if pod == "" {
		return relKey([]string{podsLabel})
	}
	return relKey([]string{pod, podsLabel})
}

// tenantMap returns the map of tenant labels to pod keys. While the tenant
// list is the one the previous map was built from (the router shares it
// between snapshots until a tenant changes), the previous map is reused, so
// that a change of health does not rebuild 100,000 entries.
func (b *builder) tenantMap(tenants []*router.Tenant, podKeys map[string]string, names map[string]*node) map[string]string {
	if b.tenants != nil && slices.Equal(tenants, b.tenantsOf) {
		return b.tenants
	}
	// The labels of the zone's own one-label names, which tenants cannot
	// take: "pods", in-zone name servers.
	taken := map[string]bool{}
	for k := range names {
		if len(k) > 1 && int(k[0]) == len(k)-1 {
			taken[k[1:]] = true
		}
	}
	m := make(map[string]string, len(tenants))
	h := fnvHash(fnvOffset)
	for _, t := range tenants {
		key, ok := podKeys[t.Pod]
		if !ok {
			// The router gives every tenant's pod a PodState; this is a
			// pod it does not know, kept so the CNAME still answers.
			key = podKey(t.Pod)
		}
		if taken[t.Name] {
			if !b.conflicts[t.Name] {
				b.conflicts[t.Name] = true
				b.log.Warn("tenant name is taken by a name of the zone; it gets no CNAME", "tenant", t.Name, "zone", b.d.zone)
			}
			continue
		}
		m[t.Name] = key
		h = h.add(t.Name).add("\x00").add(key)
	}
	b.tenants, b.tenantsOf, b.tenantHash = m, tenants, uint64(h)
	return m
}

// addresses returns the distinct IPv4 and IPv6 addresses of edges, sorted.
func addresses(edges []router.EdgeEndpoint) (v4, v6 []netip.Addr) {
	for _, e := range edges {
		if e.PublicIP.Is4() {
			v4 = append(v4, e.PublicIP)
		}
		if e.PublicIPv6.Is6() {
			v6 = append(v6, e.PublicIPv6)
		}
	}
	slices.SortFunc(v4, netip.Addr.Compare)
	slices.SortFunc(v6, netip.Addr.Compare)
	return slices.Compact(v4), slices.Compact(v6)
}

// ring packs a rotating set of A or AAAA records: the n addresses followed
// by the first show-1 again, so that the show records starting at any of
// the n positions are contiguous. With more than show addresses, the
// window moves through all of them; with fewer, every address leads in
// turn.
func (b *builder) ring(rtype uint16, ips []netip.Addr, rotor *atomic.Uint32) *rrset {
	n := len(ips)
	show := min(n, b.d.answerCap)
	s := &rrset{rtype: rtype, n: n, show: show, rotor: rotor}
	for i := 0; i < n+show-1; i++ {
		ip := ips[i%n]
		hdr := dns.RR_Header{Rrtype: rtype, Class: dns.ClassINET, Ttl: b.d.podTTL}
		var rr dns.RR = &dns.A{Hdr: hdr, A: ip.AsSlice()}
		if rtype == dns.TypeAAAA {
			rr = &dns.AAAA{Hdr: hdr, AAAA: ip.AsSlice()}
		}
		rec := packAnswer(rr)
		s.size = len(rec)
		s.data = append(s.data, rec...)
	}
	return s
}

// mxSet packs the configured MX records; nil when there are none. Exchange
// names are not compressed, so the set can follow a CNAME anywhere.
func (b *builder) mxSet() *rrset {
	var rrs []dns.RR
	for _, mx := range b.d.mx {
		rrs = append(rrs, &dns.MX{Hdr: dns.RR_Header{Rrtype: dns.TypeMX, Class: dns.ClassINET, Ttl: b.d.mxTTL}, Preference: mx.pref, Mx: mx.host})
	}
	return fixedSet(dns.TypeMX, rrs, true)
}

// fixedSet packs rrs as a set that does not rotate; nil when rrs is empty.
// answer selects the owner: a pointer to the question (answer records) or
// the records' own names written in full.
func fixedSet(rtype uint16, rrs []dns.RR, answer bool) *rrset {
	if len(rrs) == 0 {
		return nil
	}
	s := &rrset{rtype: rtype, n: len(rrs), show: len(rrs)}
	for _, rr := range rrs {
		if answer {
			s.data = append(s.data, packAnswer(rr)...)
		} else {
			s.data = append(s.data, packFull(rr)...)
		}
		s.ends = append(s.ends, len(s.data))
	}
	return s
}

// packAnswer packs rr with its owner replaced by a pointer to the question
// (0xC00C) and its rdata uncompressed.
func packAnswer(rr dns.RR) []byte {
	rr.Header().Name = "."
	full := packFull(rr)
	return append([]byte{0xC0, 0x0C}, full[1:]...) // drop the root label
}

// packFull packs rr uncompressed, owner name included.
func packFull(rr dns.RR) []byte {
	buf := make([]byte, dns.Len(rr)+16)
	n, err := dns.PackRR(rr, buf, 0, nil, false)
	if err != nil {
		// Every name and value was validated with the configuration or
		// comes from parsed addresses.
		panic(fmt.Sprintf("dnsd: pack %s: %v", rr, err))
	}
	return buf[:n]
}

// fnvHash is FNV-1a over strings, without the conversions to []byte that
// hash/fnv would need for each of 100,000 tenants.
type fnvHash uint64

const fnvOffset fnvHash = 14695981039346656037

func (h fnvHash) add(s string) fnvHash {
	for i := 0; i < len(s); i++ {
		h ^= fnvHash(s[i])
		h *= 1099511628211
	}
	return h
}

func binaryPut(h interface{ Write([]byte) (int, error) }, v uint64) {
	var b [8]byte
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
	h.Write(b[:])
}
