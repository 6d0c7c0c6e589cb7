package dnsd

import (
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	"github.com/miekg/dns"
	"github.com/podedge/podedge/router"
)

// maxTCPSize is the largest DNS message over TCP (RFC 1035 section 4.2.2).
const maxTCPSize = 65535

// Handler answers DNS queries from the zone built from the latest router
// snapshot. Handle is safe for concurrent use and does not allocate; Update
// swaps the zone atomically.
type Handler struct {
	// data is what the zone is built from; a reload replaces it (setData).
	data atomic.Pointer[zoneData]
	m    *Metrics
	// cookies answers DNS cookies; nil when they are off. rrl limits
	// UDP answers; nil when off. clock serves both.
	cookies *cookieJar
	rrl     *rrl
	clock   *coarseClock
	// xfr answers zone transfers and signed queries; nil when no
	// transfer is configured (they are then refused, signatures
	// ignored).
	xfr *transfers
	// onSerial, when set, is called after a zone with a new serial is
	// published (NOTIFY).
	onSerial func(serial uint32)

	challenges *challenges // ACME DNS-01 answers, beside the zone

	zone atomic.Pointer[zone] // nil until the first snapshot
	// answering is closed once zone is first stored (storeZone).
	answering     chan struct{}
	answeringOnce sync.Once

	buildMu sync.Mutex // one build at a time; guards builder and what follows
	builder *builder
	// needKey is set while DNSSEC is on and its key not loaded: no zone
	// is built, so that nothing is answered unsigned; last is the latest
	// snapshot, built from once the key comes (SetKey).
	needKey bool
	last    *router.Snapshot

	log     *slog.Logger
	journal int
	dnssec  DNSSEC
}

// NewHandler returns a Handler for the zone cfg describes, which answers
// SERVFAIL until Update gives it a snapshot. cfg is validated. m may be nil
// (no metrics: tests, fuzzing); log nil means slog.Default().
func NewHandler(cfg Config, m *Metrics, log *slog.Logger) (*Handler, error) {
	d, err := cfg.zoneData()
	if err != nil {
		return nil, err
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	if log == nil {
		log = slog.Default()
	}
	h := &Handler{m: m, log: log, journal: cfg.Transfer.Journal, dnssec: cfg.DNSSEC, clock: &coarseClock{}, answering: make(chan struct{}),
		challenges: newChallenges(d.zone, cfg.ACMEChallenges, log)}
	h.data.Store(d)
	var sign *signer
	if cfg.DNSSEC.Enabled {
		if cfg.DNSSEC.KeyFile == "" {
			h.needKey = true // from Consul, when Server.Run has read it
		} else {
			b, err := os.ReadFile(cfg.DNSSEC.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("dnssec.key_file: %w", err)
			}
			if sign, err = h.newSigner(b); err != nil {
				return nil, fmt.Errorf("dnssec.key_file: %s: %w", cfg.DNSSEC.KeyFile, err)
			}
		}
	}
	h.builder = newBuilder(d, m, log, cfg.Transfer.Journal, sign)
	if sign != nil {
		m.signed.Set(1)
	}
	if len(cfg.Transfer.Allow) > 0 || cfg.Transfer.TSIG.Name != "" {
		h.xfr = newTransfers(h, cfg.Transfer, log)
	}
	if cfg.Cookies.Enabled {
		if h.cookies, err = newCookieJar(cfg.Cookies.Secret, h.clock); err != nil {
			return nil, fmt.Errorf("cookies.secret: %w", err)
		}
	}
	if cfg.RRL.RateLimit > 0 {
		h.rrl = newRRL(cfg.RRL, h.clock, m)
	}
	return h, nil
}

// Update builds the answers of snapshot s and publishes them. The router
// calls it (Router.Subscribe) on every publish, in order: the zone is
// built from the previous one and the tenants that changed
// (Snapshot.TenantDelta). A snapshot that is not synced yet is ignored.
func (h *Handler) Update(s *router.Snapshot) {
	changed, full := s.TenantDelta()
	h.apply(s, changed, full)
}

// apply is Update with the tenant delta given: changed names the tenants
// added, modified or removed since the previous snapshot; full says to
// look at all of them.
func (h *Handler) apply(s *router.Snapshot, changed []string, full bool) {
	if s == nil || !s.Synced {
		return
	}
	h.buildMu.Lock()
	defer h.buildMu.Unlock()
	h.last = s
	if h.needKey {
		return
	}
	prev := h.zone.Load()
	z := h.builder.build(s, changed, full)
	h.storeZone(z)
	h.m.journal.Set(float64(len(z.journal)))
	if prev != nil && prev.serial != z.serial && h.onSerial != nil {
		h.onSerial(z.serial)
	}
}

// storeZone publishes z, the answers from now on.
func (h *Handler) storeZone(z *zone) {
	h.zone.Store(z)
	h.answeringOnce.Do(func() { close(h.answering) })
}

// Answering is closed once the handler answers from a zone: after the
// first snapshot, and with DNSSEC once the key is loaded.
func (h *Handler) Answering() <-chan struct{} { return h.answering }

// newSigner makes the signer of the key in PEM form.
func (h *Handler) newSigner(pemKey []byte) (*signer, error) {
	key, err := parseKey(pemKey)
	if err != nil {
		return nil, err
	}
	return newSigner(key, h.data.Load(), h.dnssec, h.clock, h.m), nil
}

// setKey loads the DNSSEC key (PEM) read from Consul and builds the first
// signed zone from the latest snapshot.
func (h *Handler) setKey(pemKey []byte) error {
	sign, err := h.newSigner(pemKey)
	if err != nil {
		return err
	}
	h.buildMu.Lock()
	defer h.buildMu.Unlock()
	h.builder = newBuilder(h.data.Load(), h.m, h.log, h.journal, sign)
	h.needKey = false
	h.m.signed.Set(1)
	h.log.Info("DNSSEC key loaded", "component", "dnsd", "keytag", sign.tag, "algorithm", dns.AlgorithmToString[sign.dnskey.Algorithm])
	if h.last != nil {
		z := h.builder.build(h.last, nil, true)
		h.storeZone(z)
	}
	return nil
}

// needKeyNow reports whether the DNSSEC key is still to be loaded.
func (h *Handler) needKeyNow() bool {
	h.buildMu.Lock()
	defer h.buildMu.Unlock()
	return h.needKey
}

// DNSKEY is the zone's DNSKEY record in text, "" when it is not signed.
func (h *Handler) DNSKEY() string {
	if sign := h.signer(); sign != nil {
		return sign.dnskey.String()
	}
	return ""
}

// DS is the DS record (SHA-256) the parent zone must hold, in text; "" when
// the zone is not signed.
func (h *Handler) DS() string {
	if sign := h.signer(); sign != nil {
		return sign.dnskey.ToDS(dns.SHA256).String()
	}
	return ""
}

func (h *Handler) signer() *signer {
	h.buildMu.Lock()
	defer h.buildMu.Unlock()
	return h.builder.sign
}

// resign renews the signatures due, up to limit tenants, and publishes the
// zone; it reports whether some are left.
func (h *Handler) resign(limit int) bool {
	h.buildMu.Lock()
	defer h.buildMu.Unlock()
	if h.zone.Load() == nil || h.needKey {
		return false
	}
	more := h.builder.resign(limit)
	h.storeZone(h.builder.zone())
	return more
}

// Serial is the SOA serial of the published zone; 0 before the first.
func (h *Handler) Serial() uint32 {
	if z := h.zone.Load(); z != nil {
		return z.serial
	}
	return 0
}

// Handle answers the query p, writing the response into out, and returns
// it (a slice of out), or nil when p must be dropped. udp selects the size
// limit: 512 bytes, or the query's EDNS buffer size up to the configured
// maximum; over TCP, 65535. The response never exceeds that limit nor
// cap(out): what does not fit is cut and TC set. It applies no rate limit
// and knows no client address (server cookies are made for none).
func (h *Handler) Handle(p, out []byte, udp bool) []byte {
	var info respInfo
	return h.handle(p, out, udp, netip.Addr{}, &info)
}

// respond is Handle for a query from the client at from: server cookies
// are made for it, and UDP answers are rate limited (rrl.go): it returns
// nil for an answer to drop, an empty truncated one for one that slips.
func (h *Handler) respond(p, out []byte, udp bool, from netip.Addr) []byte {
	var info respInfo
	resp := h.handle(p, out, udp, from, &info)
	if info.slow {
		if !udp {
			return nil // TCP takes the slow path through respondTCP
		}
		return h.xfr.answerUDP(p, out, from)
	}
	if resp == nil || !udp || h.rrl == nil {
		return resp
	}
	switch h.rrl.check(from, &info) {
	case rrlPass:
		return resp
	case rrlSlip:
		return slipAnswer(resp, &info)
	}
	return nil
}

// respondTCP is respond over TCP: it returns the answer to write, or slow
// when the slow path must answer (a transfer may take many messages).
func (h *Handler) respondTCP(p, out []byte, from netip.Addr) (resp []byte, slow bool) {
	var info respInfo
	resp = h.handle(p, out, false, from, &info)
	return resp, info.slow
}

// handle answers p and describes the answer in info.
func (h *Handler) handle(p, out []byte, udp bool, from netip.Addr, info *respInfo) []byte {
	var q query
	if !parseQuery(p, &q) {
		h.m.dropped.Inc()
		return nil
	}
	if h.xfr != nil && q.opcode == 0 && !q.badOPT && (q.tsig || q.qtype == typeAXFR || q.qtype == typeIXFR) {
		info.slow = true
		return nil
	}
	limit := maxTCPSize
	if udp {
		limit = 512
		if q.edns && int(q.size) > limit {
			limit = min(int(q.size), h.data.Load().maxUDP)
		}
	}
	limit = min(limit, cap(out))
	var nsid []byte
	if q.edns && q.nsid {
		nsid = h.data.Load().nsid
	}
	var cookieBuf [clientCookieLen + serverCookieLen]byte
	var cookie []byte
	if q.edns && q.cookie != nil && h.cookies != nil {
		// A client cookie alone, or with a server cookie of 8 to 32
		// bytes; anything else is a format error (RFC 7873 section
		// 5.2.2).
		if n := len(q.cookie); n != clientCookieLen && (n < clientCookieLen+8 || n > maxCookieOptLen) {
			q.badOPT = true
			h.m.cookies[cookieMalformed].Inc()
		} else {
			info.cookie = h.cookies.check(q.cookie, from)
			h.cookies.make(&cookieBuf, q.cookie, info.cookie, from)
			cookie = cookieBuf[:]
			h.m.cookies[info.cookie].Inc()
		}
	}
	if q.edns {
		limit -= 11
		if len(nsid) > 0 {
			limit -= 4 + len(nsid)
		}
		if cookie != nil {
			limit -= 4 + len(cookie)
		}
	}
	if limit < max(q.qend, headerLen) {
		// A caller's buffer too small for any answer; never happens with
		// the buffers dnsd passes (a question takes at most 259 bytes).
		return nil
	}
	r := response{b: out[:headerLen], limit: limit}

	rcode, aa := h.answer(&q, p, &r)

	flags := flagQR | q.flags&(0xF<<11|flagRD|flagCD) | uint16(rcode&0xF)
	if aa {
		flags |= flagAA
	}
	if r.tc {
		flags |= flagTC
		h.m.truncated.Inc()
	}
	info.qend = headerLen
	if r.qdcount == 1 {
		info.qend = q.qend
	}
	if q.edns {
		info.optAt = len(r.b)
		if rcode == rcodeFormErr {
			cookie = nil
		}
		r.opt(h.data.Load().maxUDP, rcode, q.do, q.do && q.co, nsid, cookie)
	}
	b := r.b
	binary.BigEndian.PutUint16(b[0:], q.id)
	binary.BigEndian.PutUint16(b[2:], flags)
	binary.BigEndian.PutUint16(b[4:], r.qdcount)
	binary.BigEndian.PutUint16(b[6:], r.counts[secAnswer])
	binary.BigEndian.PutUint16(b[8:], r.counts[secAuthority])
	binary.BigEndian.PutUint16(b[10:], r.counts[secAdditional])
	h.m.count(q.qtype, rcode)
	info.rcode, info.qtype, info.ancount, info.size, info.nameHash = rcode, q.qtype, r.counts[secAnswer], len(b), q.nameHash
	return b
}

// answer fills the sections of r for q (read from packet p) and returns the
// rcode and whether the answer is authoritative.
func (h *Handler) answer(q *query, p []byte, r *response) (rcode int, aa bool) {
	if q.qdcount == 1 {
		// The question exactly as asked, so that a resolver using 0x20
		// case randomisation finds its own spelling.
		r.b = append(r.b, p[headerLen:q.qend]...)
		r.qdcount = 1
	}
	switch {
	case q.opcode != 0:
		return rcodeNotImp, false
	case q.qdcount != 1 || q.badOPT || q.qtype == typeOPT:
		r.b, r.qdcount = r.b[:headerLen], 0
		return rcodeFormErr, false
	case q.edns && q.version != 0:
		return rcodeBadVers, false
	}
	z := h.zone.Load()
	if z == nil {
		return rcodeServFail, false
	}
	var buf [maxNameLen]byte
	lname := buf[:len(q.qname)]
	lower(lname, q.qname)
	if h.rrl != nil {
		q.nameHash = maphash.Bytes(h.rrl.seed, lname)
	}
	rel, in := z.relative(lname)
	if !in || q.qclass != classINET {
		return rcodeRefused, false
	}
	if q.qtype == typeAXFR || q.qtype == typeIXFR {
		// Transfers take the slow path when they are configured.
		return rcodeRefused, false
	}
	if z.sign != nil {
		if q.qtype == typeNXNAME {
			// A meta-type, never asked for (RFC 9824 section 3.5).
			r.b, r.qdcount = r.b[:headerLen], 0
			return rcodeFormErr, false
		}
		r.do = q.do
	}
	n := z.apex
	if len(rel) > 0 {
		n = z.names[string(rel)]
	}
	if n != nil {
		if s := n.set(q.qtype); s != nil {
			r.add(secAnswer, s, 0)
		} else {
			z.nodata(r, n, 0)
		}
		return rcodeSuccess, true
	}
	if len(rel) > 1 && int(rel[0]) == len(rel)-1 {
		if t := z.tenants.get(rel[1:]); t != nil {
			return z.tenant(q, r, len(rel), t), true
		}
	}
	// ACME DNS-01 tokens are answered beside the zone (challenges.go),
	// unsigned: they live seconds, while an order is open.
	if rcode, ok := h.challenges.answer(q, r, lname, z.soa); ok {
		return rcode, true
	}
	return z.nxdomain(q, r, lname, 0), true
}

// nodata adds the denial that the name of n (at owner in the answer; 0 is
// the question) has records of the type asked: the SOA and, signed, the
// name's NSEC.
func (z *zone) nodata(r *response, n *node, owner uint16) {
	r.add(secAuthority, z.soa, 0)
	if r.do {
		r.add(secAuthority, n.set(typeNSEC), owner)
	}
}

// nxdomain answers that the lower-case wire name lname (at owner in the
// answer) does not exist: NXDOMAIN with the SOA; signed, a compact denial
// (RFC 9824): an NSEC owned by the name saying it has no records but RRSIG,
// NSEC and NXNAME, and NOERROR unless the client set CO.
func (z *zone) nxdomain(q *query, r *response, lname []byte, owner uint16) int {
	r.add(secAuthority, z.soa, 0)
	if !r.do {
		return rcodeNXDomain
	}
	if nsec, sig, ok := z.sign.denial(lname, z.negTTL); ok {
		r.record(secAuthority, nsec, owner)
		r.record(secAuthority, sig, owner)
	}
	if q.co {
		return rcodeNXDomain
	}
	return rcodeSuccess
}

// tenant answers for a tenant name: a CNAME to its pod, then the pod's
// records of the asked type chased in the same answer. relLen is the length
// of the tenant's label in wire form, which puts the zone's name at
// 12+relLen in the question.
func (z *zone) tenant(q *query, r *response, relLen int, t *tenantRec) int {
	target := r.cname(z.tenantTTL, t.pod, uint16(headerLen+relLen))
	if r.do && target != 0 {
		r.record(secAnswer, t.sig, 0)
	}
	if q.qtype == typeCNAME || q.qtype == typeANY || target == 0 {
		return rcodeSuccess
	}
	n := z.names[t.pod]
	if n == nil {
		// The target does not exist: NXDOMAIN with the CNAME (RFC 6604).
		var buf [maxNameLen]byte
		lname := append(append(buf[:0], t.pod...), z.origin...)
		return z.nxdomain(q, r, lname, 0xC000|target)
	}
	if s := n.set(q.qtype); s != nil {
		r.add(secAnswer, s, 0xC000|target)
	} else {
		z.nodata(r, n, 0xC000|target)
	}
	return rcodeSuccess
}
