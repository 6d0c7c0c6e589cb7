package dnsd

import (
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"math/bits"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/podedge/podedge/router"
)

// podsLabel is the label under which pod names live: <pod>.pods.<zone>.
const podsLabel = "pods"

// builder turns router snapshots into zones, each from the one before: it
// keeps what the latest zone was made of, so that a snapshot costs what
// changed in it. A changed tenant is one path of the tenant trie; a changed
// pod one node; the rest is shared with the previous zone, which stays as
// it was for the queries still reading it. It is not safe for concurrent
// use (Handler.Update serialises it).
type builder struct {
	d   *zoneData
	m   *Metrics
	log *slog.Logger

	origin []byte
	hosts  map[string]*node // name servers in the zone and the empty non-terminals above them
	mx     *rrset           // the MX set every pod shares; nil without exchangers
	apex   *node            // the apex with serial 0, for apexAt
	negSOA *rrset           // the negative answers' SOA with serial 0
	// zoneApex and zoneSOA are the latest serial's apex and negative SOA.
	zoneApex *node
	zoneSOA  *rrset
	// taken holds the zone's own one-label names, which tenants cannot
	// take: "pods", in-zone name servers' first labels.
	taken map[string]bool

	haveSerial bool
	serial     uint32
	hash       uint64

	// pods holds the latest zone's pod nodes by pod name, with what they
	// were built from; names is the latest zone's map of names, shared
	// with the next zone while no pod changes; podsHash sums the pods'
	// content hashes.
	pods     map[string]*podEntry
	names    map[string]*node
	podsHash uint64

	// tenants is the latest zone's tenant trie; gen numbers its
	// transactions. recs are the tenants' records by pod name: every
	// tenant of a pod shares one.
	tenants   tenantTrie
	gen       uint64
	recs      map[string]*tenantRec
	conflicts map[string]bool // tenant names already logged as shadowed

	// changes collects what the build under way changes, for the
	// journal of IXFR; journal is the latest zone's.
	changes    zoneDiff
	journal    []*zoneDiff
	journalMax int

	// sign signs the zone; nil when it is not signed (signzone.go).
	// staticExp is when the first signature of the fixed names expires.
	sign      *signer
	staticExp uint32

	built     bool
	lastBuilt time.Time // of the latest snapshot built from
}

// podEntry is a pod's node and what it was built from.
type podEntry struct {
	key string // podKey of the pod
	// edges are the addresses and health of the pod's edges in the
	// router's order: the same edges give the same node.
	edges []edgeAddr
	node  *node
	// failing is set while the node answers with failing edges because
	// none passes.
	failing bool
	hash    uint64
	// rotors carry the rotation of the A and AAAA sets into the next
	// node, so that a change does not restart it at the first edge.
	rotors [2]*atomic.Uint32
	// v4 and v6 are the addresses of the first answer of each family:
	// what a zone transfer holds; all4 and all6 all the node answers
	// with (passing edges, or all while it fails open).
	v4, v6     []netip.Addr
	all4, all6 []netip.Addr
	// sigExp is when the first of the node's signatures expires.
	sigExp uint32
}

type edgeAddr struct {
	v4, v6  netip.Addr
	passing bool
}

func newBuilder(d *zoneData, m *Metrics, log *slog.Logger, journal int, sign *signer) *builder {
	origin := make([]byte, maxNameLen)
	n, err := dns.PackDomainName(d.zone, origin, 0, nil, false)
	if err != nil {
		// The zone was validated; this cannot happen.
		panic(fmt.Sprintf("dnsd: zone %q: %v", d.zone, err))
	}
	b := &builder{
		d:          d,
		m:          m,
		log:        log.With("component", "dnsd"),
		origin:     origin[:n],
		pods:       map[string]*podEntry{},
		tenants:    newTenantTrie(),
		recs:       map[string]*tenantRec{},
		conflicts:  map[string]bool{},
		journalMax: journal,
		sign:       sign,
	}
	b.hosts = b.hostNodes()
	b.mx = b.mxSet()
	b.apex, b.negSOA = b.apexNode(0), b.negativeSOA(0)
	b.taken = map[string]bool{podsLabel: true}
	for k := range b.hosts {
		if len(k) > 1 && int(k[0]) == len(k)-1 {
			b.taken[k[1:]] = true
		}
	}
	return b
}

// build makes the zone of snapshot s, from the previous zone and the
// tenants that changed since the snapshot before s (full: look at every
// tenant, as Snapshot.TenantDelta says).
func (b *builder) build(s *router.Snapshot, changed []string, full bool) *zone {
	start := time.Now()
	b.changes = zoneDiff{}
	podsChanged := b.updatePods(s)
	if full || !b.built {
		b.fullTenants(s)
	} else {
		b.applyTenants(s, changed)
	}

	// The serial follows the data: it changes when what dnsd answers
	// changes, not on every snapshot (app servers are not in DNS).
	sum := b.podsHash ^ bits.RotateLeft64(b.tenants.sum, 1) ^ uint64(b.tenants.n)
	before := b.serial
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
	if b.built && b.serial != before {
		b.record(before, b.serial)
	}
	if b.serial != before || !b.built {
		b.zoneApex, b.zoneSOA = b.apexAt(b.serial), b.negativeAt(b.serial)
	}
	b.lastBuilt = s.Built
	z := b.zone()

	b.m.serial.Set(float64(z.serial))
	b.m.builds.Inc()
	b.m.buildSeconds.Set(time.Since(start).Seconds())
	if podsChanged || !b.built {
		b.m.names.WithLabelValues("pod").Set(float64(len(b.pods)))
	}
	b.m.names.WithLabelValues("tenant").Set(float64(b.tenants.n))
	if !b.built {
		b.built = true
		b.log.Info("answering from platform data", "serial", z.serial, "index", s.Index, "pods", len(b.pods), "tenants", b.tenants.n)
	}
	b.log.Debug("zone built", "serial", z.serial, "index", s.Index, "pods", len(b.pods), "tenants", b.tenants.n, "changed", len(changed), "full", full, "took", time.Since(start))
	return z
}

// zone returns the zone of what the builder holds now.
func (b *builder) zone() *zone {
	return &zone{
		serial:    b.serial,
		built:     b.lastBuilt,
		origin:    b.origin,
		apex:      b.zoneApex,
		names:     b.names,
		pods:      b.pods,
		tenants:   b.tenants,
		journal:   b.journal,
		soa:       b.zoneSOA,
		tenantTTL: b.d.tenantTTL,
		negTTL:    b.negativeTTL(),
		sign:      b.sign,
	}
}

// updatePods brings the pod nodes in line with s, rebuilding only the pods
// whose edges or health changed, and the map of names only when a pod
// changed. It reports whether one did.
func (b *builder) updatePods(s *router.Snapshot) bool {
	var changed []*router.PodState
	seen := 0
	for _, ps := range s.Pods() {
		e := b.pods[ps.Name]
		if e != nil {
			seen++
			if sameEdges(e.edges, ps.Edges) {
				continue
			}
		}
		changed = append(changed, ps)
	}
	if len(changed) == 0 && seen == len(b.pods) && b.names != nil {
		return false
	}
	// The map is the published zone's: changed on a copy.
	b.pods = maps.Clone(b.pods)
	added := false
	for _, ps := range changed {
		added = b.setPod(ps) || added
	}
	removed := false
	if len(b.pods) > len(s.Pods()) {
		// Every pod of s is in b.pods now; the others are gone.
		for name, e := range b.pods {
			if s.Pod(name) == nil {
				b.dropPod(name, e)
				removed = true
			}
		}
	}
	if b.names != nil && !added && !removed {
		// The same names: only some pods' nodes change.
		names := maps.Clone(b.names)
		for _, ps := range changed {
			e := b.pods[ps.Name]
			names[e.key] = e.node
		}
		b.names = names
		return true
	}
	b.rebuildNames()
	return true
}

// rebuildNames makes the map of names anew: name servers, pods.<zone>, the
// pods.
func (b *builder) rebuildNames() {
	names := make(map[string]*node, len(b.hosts)+len(b.pods)+1)
	for k, n := range b.hosts {
		names[k] = n
	}
	if len(b.pods) > 0 {
		names[podKey("")] = b.emptyNode(podsLabel + "." + b.d.zone) // pods.<zone>, an empty non-terminal
	}
	for _, e := range b.pods {
		names[e.key] = e.node
	}
	b.names = names
}

// sameEdges reports whether a pod's edges give the node built from was.
func sameEdges(was []edgeAddr, edges []router.EdgeEndpoint) bool {
	if len(was) != len(edges) {
		return false
	}
	for i := range edges {
		// Field by field: comparing the structs whole goes through
		// memequal, which made this loop most of a tenant change.
		w, e := &was[i], &edges[i]
		if w.passing != e.Passing || w.v4 != e.PublicIP || w.v6 != e.PublicIPv6 {
			return false
		}
	}
	return true
}

// setPod builds the node of ps and records it, with its gauges and the
// transitions into and out of fail-open. It reports whether the pod is new.
func (b *builder) setPod(ps *router.PodState) bool {
	old := b.pods[ps.Name]
	e := &podEntry{edges: make([]edgeAddr, len(ps.Edges))}
	for i, ed := range ps.Edges {
		e.edges[i] = edgeAddr{ed.PublicIP, ed.PublicIPv6, ed.Passing}
	}
	if old != nil {
		e.key, e.rotors = old.key, old.rotors
		b.podsHash -= old.hash
	} else {
		e.key = podKey(ps.Name)
	}
	edges := ps.PassingEdges
	if len(edges) == 0 && len(ps.Edges) > 0 {
		// Fail open, as Route 53 does: an answer with every edge beats
		// NXDOMAIN or nothing, which would take the pod's tenants off the
		// Internet for as long as resolvers cache it.
		edges, e.failing = ps.Edges, true
		if old == nil || !old.failing {
			b.log.Warn("pod has no passing edge; answering with all its edges", "pod", ps.Name, "edges", len(ps.Edges))
		}
	}
	e.all4, e.all6 = addresses(edges)
	b.podNode(ps.Name, e)
	b.podsHash += e.hash
	if old != nil && old.failing && !e.failing {
		b.log.Info("pod has passing edges again", "pod", ps.Name, "passing", len(ps.PassingEdges))
	}
	b.pods[ps.Name] = e
	b.changes.pods = append(b.changes.pods, podChange{name: ps.Name, old: old, new: e})
	b.m.passingEdges.WithLabelValues(ps.Name).Set(float64(len(ps.PassingEdges)))
	b.m.edges.WithLabelValues(ps.Name).Set(float64(len(ps.Edges)))
	return old == nil
}

func (b *builder) dropPod(name string, e *podEntry) {
	if e.failing {
		b.log.Info("pod with no passing edge is gone", "pod", name)
	}
	b.podsHash -= e.hash
	delete(b.pods, name)
	b.changes.pods = append(b.changes.pods, podChange{name: name, old: e})
	b.m.passingEdges.DeleteLabelValues(name)
	b.m.edges.DeleteLabelValues(name)
}

// podNode makes the node of pod from its entry's addresses (all4, all6)
// and failing: its A and AAAA rings and the MX set, signed when the zone
// is, with the entry's content hash, first answers and rotors (made here
// when nil).
func (b *builder) podNode(pod string, e *podEntry) {
	n := &node{}
	h := fnv.New64a()
	h.Write([]byte(pod))
	var types []uint16
	e.sigExp = ^uint32(0)
	for i, fam := range []struct {
		rtype uint16
		ips   []netip.Addr
	}{{dns.TypeA, e.all4}, {dns.TypeAAAA, e.all6}} {
		if len(fam.ips) == 0 {
			continue
		}
		if e.rotors[i] == nil {
			e.rotors[i] = new(atomic.Uint32)
		}
		set := b.ring(fam.rtype, fam.ips, e.rotors[i])
		if e.failing {
			set.failOpen = b.m.failOpen.WithLabelValues(pod)
		}
		if b.sign != nil {
			b.signRing(set, pod, fam.ips)
			e.sigExp = min(e.sigExp, set.sigExp)
		}
		n.sets = append(n.sets, set)
		types = append(types, fam.rtype)
		h.Write(set.data)
	}
	if b.mx != nil {
		mx := b.mx
		if b.sign != nil {
			mx = b.signedMX(pod)
			e.sigExp = min(e.sigExp, mx.sigExp)
		}
		n.sets = append(n.sets, mx)
		types = append(types, dns.TypeMX)
	}
	if b.sign != nil {
		nsec := b.sign.nsecSet(pod+"."+podsLabel+"."+b.d.zone, b.negativeTTL(), types)
		e.sigExp = min(e.sigExp, nsec.sigExp)
		n.sets = append(n.sets, nsec)
	}
	sum := h.Sum64()
	sum ^= sum >> 31
	sum *= 0x9e3779b97f4a7c15
	e.node, e.hash = n, sum
	e.v4, e.v6 = e.all4[:min(len(e.all4), b.d.answerCap)], e.all6[:min(len(e.all6), b.d.answerCap)]
}

// podKey is the relative wire name of pod's node, "\x05pod-1\x04pods";
// podKey("") is pods.<zone> itself.
func podKey(pod string) string {
	if pod == "" {
		return relKey([]string{podsLabel})
	}
	return relKey([]string{pod, podsLabel})
}

// rec returns the record of the tenants of pod: a CNAME to the pod's name,
// whether the pod has a node or not (a pod the router does not know keeps
// its tenants' CNAMEs answering).
func (b *builder) rec(pod string) *tenantRec {
	r := b.recs[pod]
	if r == nil {
		r = &tenantRec{pod: podKey(pod), podName: pod}
		r.hash = uint64(fnvHash(fnvOffset).add(r.pod))
		b.recs[pod] = r
	}
	return r
}

// tenantOK reports whether tenant may have a name of its own, logging once
// a name the zone already uses.
func (b *builder) tenantOK(name string) bool {
	if !b.taken[name] {
		return true
	}
	if !b.conflicts[name] {
		b.conflicts[name] = true
		b.log.Warn("tenant name is taken by a name of the zone; it gets no CNAME", "tenant", name, "zone", b.d.zone)
	}
	return false
}

// fullTenants builds the tenant trie from every tenant of s: a first
// snapshot, or one the router cannot describe name by name. It costs
// O(tenants); the unchanged tenants' records are shared with the previous
// trie, so that a resync that finds nothing new keeps the serial.
func (b *builder) fullTenants(s *router.Snapshot) {
	ents := make([]tentry, 0, s.NumTenants())
	s.AscendTenants("", func(t *router.Tenant) bool {
		if b.tenantOK(t.Name) {
			ents = append(ents, tentry{name: t.Name, rec: b.rec(t.Pod)})
		}
		return true
	})
	if b.sign != nil {
		b.signTenants(ents)
	}
	old := b.tenants
	b.tenants = b.tenants.rebuild(ents)
	if b.built {
		b.changes.tenants = diffTries(old, b.tenants)
	}
	if len(b.recs) > 2*len(s.Pods())+16 {
		// Pods come and go; forget the records of those no tenant
		// names any more.
		used := map[string]bool{}
		s.AscendTenants("", func(t *router.Tenant) bool { used[t.Pod] = true; return true })
		for pod := range b.recs {
			if !used[pod] {
				delete(b.recs, pod)
			}
		}
	}
}

// applyTenants applies the changed tenants of s to the trie, in one
// transaction: O(changed), whatever the number of tenants.
func (b *builder) applyTenants(s *router.Snapshot, changed []string) {
	if len(changed) == 0 {
		return
	}
	b.gen++
	x := b.tenants.begin(b.gen)
	for _, name := range changed {
		t := s.Tenant(name)
		var rec *tenantRec
		if t != nil && b.tenantOK(name) {
			name, rec = t.Name, b.rec(t.Pod)
			if b.sign != nil {
				rec = b.signedRec(name, rec, b.tenants.lookup(name))
			}
		}
		if old := x.set(name, rec); !sameRec(old, rec) {
			b.changes.tenants = append(b.changes.tenants, tenantChange{name: name, old: old, new: rec})
		}
	}
	b.tenants = x.tenantTrie
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
	alen := 4
	if rtype == dns.TypeAAAA {
		alen = 16
	}
	// Packed by hand, being the records a change of health repacks: the
	// owner pointer, type, class, TTL, length, the address.
	size := 12 + alen
	s := &rrset{rtype: rtype, n: n, show: show, rotor: rotor, size: size}
	s.data = make([]byte, 0, (n+show-1)*size)
	ttl := b.d.podTTL
	for i := 0; i < n+show-1; i++ {
		s.data = append(s.data, 0xC0, 0x0C, byte(rtype>>8), byte(rtype), 0, classINET,
			byte(ttl>>24), byte(ttl>>16), byte(ttl>>8), byte(ttl), 0, byte(alen))
		if alen == 4 {
			a := ips[i%n].As4()
			s.data = append(s.data, a[:]...)
		} else {
			a := ips[i%n].As16()
			s.data = append(s.data, a[:]...)
		}
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
