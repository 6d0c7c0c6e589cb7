package dnsd

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Zone transfers (AXFR, RFC 5936; IXFR, RFC 1995) to secondaries, and the
// queries signed with TSIG (RFC 8945) that secondaries send. They take the
// slow path: miekg/dns unpacks and packs them; they are rare and small
// next to the queries the hot path answers.

// tsigAlgorithms are the TSIG algorithms accepted, by configured name.
var tsigAlgorithms = map[string]string{
	"hmac-sha256": dns.HmacSHA256,
	"hmac-sha384": dns.HmacSHA384,
	"hmac-sha512": dns.HmacSHA512,
}

// tsigFudge is the clock skew allowed on signed messages, as RFC 8945
// recommends.
const tsigFudge = 300

// xfrMessageSize is the size past which a transfer message is sent and a
// new one begun: well under TCP's 65535 bytes with the largest record.
const xfrMessageSize = 16 << 10

// tsigKey is the configured key, names in canonical (lower-case, absolute)
// form.
type tsigKey struct {
	name, algorithm, secret string
}

func newTSIGKey(c TSIGKey) *tsigKey {
	if c.Name == "" {
		return nil
	}
	return &tsigKey{
		name:      dns.CanonicalName(c.Name),
		algorithm: tsigAlgorithms[strings.ToLower(c.Algorithm)],
		secret:    c.Secret,
	}
}

// transfers answers the slow-path queries of a Handler.
type transfers struct {
	h     *Handler
	allow []netip.Prefix
	key   *tsigKey
	log   *slog.Logger
}

func newTransfers(h *Handler, c Transfer, log *slog.Logger) *transfers {
	x := &transfers{h: h, key: newTSIGKey(c.TSIG), log: log.With("component", "dnsd")}
	for _, a := range c.Allow {
		p, _ := parsePrefix(a) // validated
		x.allow = append(x.allow, p)
	}
	return x
}

// errDrop is returned for a query that gets no answer at all.
var errDrop = errors.New("dropped")

// answerUDP answers the slow-path query p over UDP in out, or returns nil
// to drop it.
func (x *transfers) answerUDP(p, out []byte, from netip.Addr) []byte {
	var resp []byte
	err := x.serve(p, from, false, cap(out), func(m []byte) error {
		if len(m) > cap(out) {
			return errDrop
		}
		resp = append(out[:0], m...)
		return nil
	})
	if err != nil {
		return nil
	}
	return resp
}

// serve answers the query p from the client at from: a zone transfer, or a
// query signed with TSIG. send is called with each message of the answer,
// in order; an error from it ends the transfer. size bounds a UDP answer.
func (x *transfers) serve(p []byte, from netip.Addr, tcp bool, size int, send func([]byte) error) error {
	req := new(dns.Msg)
	if err := req.Unpack(p); err != nil || len(req.Question) != 1 {
		x.h.m.dropped.Inc()
		return errDrop
	}
	s := &xfrStream{x: x, req: req, send: send}
	if t := req.IsTsig(); t != nil {
		if code := x.verify(p, t); code != dns.RcodeSuccess {
			i := tsigResultIndex(code)
			x.h.m.tsig[i].Inc()
			x.log.Warn("TSIG check failed", "from", from.String(), "key", t.Hdr.Name, "error", tsigResultNames[i])
			return s.tsigError(t, code)
		}
		x.h.m.tsig[0].Inc()
		s.mac = t.MAC
	}
	q := req.Question[0]
	if q.Qtype != dns.TypeAXFR && q.Qtype != dns.TypeIXFR {
		return s.signedQuery(p, from, tcp, size)
	}
	z := x.h.zone.Load()
	kind := xfrAXFR
	if q.Qtype == dns.TypeIXFR {
		kind = xfrIXFR
	}
	switch {
	case z == nil || !strings.EqualFold(q.Name, x.h.data.Load().zone):
		return s.refuse(kind, "not the zone")
	case !x.allowed(from):
		return s.refuse(kind, "address not allowed")
	case x.key != nil && s.mac == "":
		return s.refuse(kind, "not signed")
	case kind == xfrAXFR && !tcp:
		// AXFR is for TCP only (RFC 5936 section 4.2).
		return s.refuse(kind, "AXFR over UDP")
	}
	if kind == xfrIXFR {
		return s.ixfr(z, tcp)
	}
	return s.axfr(z, kind)
}

// allowed reports whether from may transfer the zone.
func (x *transfers) allowed(from netip.Addr) bool {
	for _, p := range x.allow {
		if p.Contains(from) {
			return true
		}
	}
	return false
}

// verify checks the TSIG of p and returns 0 or the TSIG error code.
func (x *transfers) verify(p []byte, t *dns.TSIG) int {
	if x.key == nil || dns.CanonicalName(t.Hdr.Name) != x.key.name || dns.CanonicalName(t.Algorithm) != x.key.algorithm {
		return dns.RcodeBadKey
	}
	switch err := dns.TsigVerify(p, x.key.secret, "", false); {
	case errors.Is(err, dns.ErrTime):
		return dns.RcodeBadTime
	case err != nil:
		return dns.RcodeBadSig
	}
	return dns.RcodeSuccess
}

// The kinds of transfer, for dnsd_transfers_total.
const (
	xfrAXFR     = iota
	xfrIXFR     // differences from the journal
	xfrIXFRFull // an IXFR answered with the whole zone
	xfrIXFRNone // an IXFR from the current serial: the SOA alone
)

var xfrKindNames = [...]string{"axfr", "ixfr", "ixfr_full", "ixfr_current"}

// The results of a transfer, for dnsd_transfers_total.
const (
	xfrOK = iota
	xfrRefused
	xfrFailed
)

var xfrResultNames = [...]string{"ok", "refused", "failed"}

// tsigResultNames label dnsd_tsig_queries_total.
var tsigResultNames = [...]string{"ok", "badkey", "badsig", "badtime"}

// xfrStream writes the messages of one answer, signed when the query was.
type xfrStream struct {
	x    *transfers
	req  *dns.Msg
	send func([]byte) error
	mac  string // the request's MAC, then each message's; "" unsigned

	msg     *dns.Msg
	size    int // an estimate of msg's length, uncompressed
	records int
	started bool
}

// reply returns a new message answering the request.
func (s *xfrStream) reply() *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(s.req)
	m.Authoritative = true
	m.Compress = true
	return m
}

// write sends m, signing it when the request was signed: the first
// message with the request's MAC, the later ones with the previous
// message's, timers only (RFC 8945 section 5.3.1).
func (s *xfrStream) write(m *dns.Msg) error {
	var buf []byte
	var err error
	if s.mac != "" {
		m.SetTsig(s.x.key.name, s.x.key.algorithm, tsigFudge, time.Now().Unix())
		buf, s.mac, err = dns.TsigGenerate(m, s.x.key.secret, s.mac, s.started)
	} else {
		buf, err = m.Pack()
	}
	if err != nil {
		return fmt.Errorf("pack: %w", err)
	}
	s.started = true
	return s.send(buf)
}

// add appends rr to the message under way, sending it first when full.
func (s *xfrStream) add(rr dns.RR) error {
	if s.msg == nil {
		s.msg, s.size = s.reply(), 0
	}
	s.msg.Answer = append(s.msg.Answer, rr)
	s.size += dns.Len(rr)
	s.records++
	if s.size >= xfrMessageSize {
		return s.flush()
	}
	return nil
}

// flush sends the message under way, if any.
func (s *xfrStream) flush() error {
	if s.msg == nil {
		return nil
	}
	m := s.msg
	s.msg = nil
	return s.write(m)
}

func (s *xfrStream) done(kind int, err error) error {
	if err == nil {
		err = s.flush()
	}
	m := s.x.h.m
	if err != nil {
		m.transfers[kind][xfrFailed].Inc()
		s.x.log.Warn("zone transfer failed", "kind", xfrKindNames[kind], "error", err.Error())
		return err
	}
	m.transfers[kind][xfrOK].Inc()
	m.transferRecords.Add(float64(s.records))
	return nil
}

// refuse answers REFUSED (RFC 5936 section 2.2.1) and counts it.
func (s *xfrStream) refuse(kind int, why string) error {
	s.x.h.m.transfers[kind][xfrRefused].Inc()
	s.x.log.Debug("zone transfer refused", "kind", xfrKindNames[kind], "why", why)
	m := s.reply()
	m.Authoritative = false
	m.Rcode = dns.RcodeRefused
	return s.write(m)
}

// tsigError answers a query whose TSIG failed: NOTAUTH with the TSIG
// error, unsigned for a bad key or signature, signed with the server's
// time for a bad time (RFC 8945 section 5.2).
func (s *xfrStream) tsigError(t *dns.TSIG, code int) error {
	m := s.reply()
	m.Authoritative = false
	m.Rcode = dns.RcodeNotAuth
	if code != dns.RcodeBadTime || s.x.key == nil {
		m.Extra = append(m.Extra, &dns.TSIG{
			Hdr:       dns.RR_Header{Name: t.Hdr.Name, Rrtype: dns.TypeTSIG, Class: dns.ClassANY},
			Algorithm: t.Algorithm, Fudge: t.Fudge, TimeSigned: t.TimeSigned, OrigId: t.OrigId, Error: uint16(code),
		})
		buf, err := m.Pack()
		if err != nil {
			return err
		}
		return s.send(buf)
	}
	m.SetTsig(s.x.key.name, s.x.key.algorithm, tsigFudge, time.Now().Unix())
	ts := m.Extra[len(m.Extra)-1].(*dns.TSIG)
	ts.Error = dns.RcodeBadTime
	ts.OtherLen = 6
	ts.OtherData = fmt.Sprintf("%012x", time.Now().Unix())
	buf, _, err := dns.TsigGenerate(m, s.x.key.secret, t.MAC, false)
	if err != nil {
		return err
	}
	return s.send(buf)
}

// signedQuery answers an ordinary query that came signed (a secondary's
// SOA query): the hot path's answer to it without its TSIG, signed.
func (s *xfrStream) signedQuery(p []byte, from netip.Addr, tcp bool, size int) error {
	if s.mac == "" {
		// The hot path sends here only transfers and queries whose
		// last record is a TSIG, which IsTsig found.
		return errDrop
	}
	req := s.req.Copy()
	req.Extra = req.Extra[:len(req.Extra)-1] // the TSIG
	stripped, err := req.Pack()
	if err != nil {
		return errDrop
	}
	var info respInfo
	// Room for the TSIG record: its key and algorithm names, 38 bytes of
	// fields and a MAC of up to 64 bytes.
	room := len(s.x.key.name) + len(s.x.key.algorithm) + 110
	out := make([]byte, 0, max(size, 512)-room)
	if tcp {
		out = make([]byte, 0, maxTCPSize-room)
	}
	resp := s.x.h.handle(stripped, out, !tcp, from, &info)
	if resp == nil || info.slow {
		return errDrop
	}
	m := new(dns.Msg)
	if err := m.Unpack(resp); err != nil {
		return fmt.Errorf("unpack the answer: %w", err)
	}
	return s.write(m)
}

// axfr sends the whole zone z: its SOA, every record, its SOA again.
func (s *xfrStream) axfr(z *zone, kind int) error {
	return s.done(kind, s.zoneRecords(z, s.x.h.data.Load()))
}

// ixfr sends the differences from the client's serial to z's, from the
// journal; the whole zone when the journal does not reach back that far;
// the SOA alone when the client is current, and always over UDP (RFC
// 1995 section 2: the client then asks over TCP).
func (s *xfrStream) ixfr(z *zone, tcp bool) error {
	d := s.x.h.data.Load()
	var serial uint32
	have := false
	for _, rr := range s.req.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			serial, have = soa.Serial, true
		}
	}
	if !have {
		m := s.reply()
		m.Rcode = dns.RcodeFormatError
		return s.write(m)
	}
	current := z.serial
	if int32(serial-current) >= 0 || !tcp {
		err := s.add(s.soa(d, current))
		return s.done(xfrIXFRNone, err)
	}
	steps, ok := z.since(serial)
	if !ok {
		return s.axfr(z, xfrIXFRFull)
	}
	err := s.add(s.soa(d, current))
	for _, step := range steps {
		if err != nil {
			break
		}
		err = s.diff(d, step)
	}
	if err == nil {
		err = s.add(s.soa(d, current))
	}
	return s.done(xfrIXFR, err)
}

// soa is the zone's SOA record with serial.
func (s *xfrStream) soa(d *zoneData, serial uint32) dns.RR {
	rr := d.soaRR(serial, d.apexTTL)
	rr.Hdr.Name = d.zone
	return rr
}

// zoneRecords sends every record of z between two SOAs.
func (s *xfrStream) zoneRecords(z *zone, d *zoneData) error {
	if err := s.add(s.soa(d, z.serial)); err != nil {
		return err
	}
	for _, rr := range apexRecords(d) {
		if err := s.add(rr); err != nil {
			return err
		}
	}
	for _, name := range slices.Sorted(maps.Keys(z.pods)) {
		for _, rr := range podRecords(d, name, z.pods[name]) {
			if err := s.add(rr); err != nil {
				return err
			}
		}
	}
	var err error
	z.tenants.each(func(name string, rec *tenantRec) {
		if err == nil {
			err = s.add(cnameRecord(d, name, rec))
		}
	})
	if err != nil {
		return err
	}
	return s.add(s.soa(d, z.serial))
}

// diff sends one step of an IXFR: the old SOA and the records removed, the
// new SOA and the records added.
func (s *xfrStream) diff(d *zoneData, step *zoneDiff) error {
	var del, add []dns.RR
	for _, c := range step.tenants {
		if c.old != nil {
			del = append(del, cnameRecord(d, c.name, c.old))
		}
		if c.new != nil {
			add = append(add, cnameRecord(d, c.name, c.new))
		}
	}
	for _, c := range step.pods {
		was, now := podRecords(d, c.name, c.old), podRecords(d, c.name, c.new)
		del = append(del, minus(was, now)...)
		add = append(add, minus(now, was)...)
	}
	if err := s.add(s.soa(d, step.from)); err != nil {
		return err
	}
	for _, rr := range del {
		if err := s.add(rr); err != nil {
			return err
		}
	}
	if err := s.add(s.soa(d, step.to)); err != nil {
		return err
	}
	for _, rr := range add {
		if err := s.add(rr); err != nil {
			return err
		}
	}
	return nil
}

// minus returns the records of a that are not in b.
func minus(a, b []dns.RR) []dns.RR {
	var out []dns.RR
	for _, rr := range a {
		if !slices.ContainsFunc(b, func(o dns.RR) bool { return dns.IsDuplicate(rr, o) }) {
			out = append(out, rr)
		}
	}
	return out
}

// apexRecords are the NS records and the addresses of the name servers in
// the zone.
func apexRecords(d *zoneData) []dns.RR {
	var out []dns.RR
	for _, ns := range d.ns {
		out = append(out, &dns.NS{Hdr: dns.RR_Header{Name: d.zone, Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: d.apexTTL}, Ns: ns.name})
	}
	for _, ns := range d.ns {
		for _, ip := range ns.addrs {
			out = append(out, addressRecord(ns.name, ip, d.apexTTL))
		}
	}
	return out
}

// podRecords are a pod's records in a transfer: the addresses of its first
// answer (at most answer_cap of its passing edges, as answered) and its MX
// set; none for a nil entry.
func podRecords(d *zoneData, pod string, e *podEntry) []dns.RR {
	if e == nil {
		return nil
	}
	name := pod + "." + podsLabel + "." + d.zone
	var out []dns.RR
	for _, ip := range e.v4 {
		out = append(out, addressRecord(name, ip, d.podTTL))
	}
	for _, ip := range e.v6 {
		out = append(out, addressRecord(name, ip, d.podTTL))
	}
	for _, mx := range d.mx {
		out = append(out, &dns.MX{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeMX, Class: dns.ClassINET, Ttl: d.mxTTL}, Preference: mx.pref, Mx: mx.host})
	}
	return out
}

func addressRecord(name string, ip netip.Addr, ttl uint32) dns.RR {
	if ip.Is4() {
		return &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: ip.AsSlice()}
	}
	return &dns.AAAA{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: ttl}, AAAA: ip.AsSlice()}
}

func cnameRecord(d *zoneData, tenant string, rec *tenantRec) dns.RR {
	return &dns.CNAME{
		Hdr:    dns.RR_Header{Name: tenant + "." + d.zone, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: d.tenantTTL},
		Target: rec.podName + "." + podsLabel + "." + d.zone,
	}
}

// tsigResultIndex maps a TSIG check's outcome to dnsd_tsig_queries_total.
func tsigResultIndex(code int) int {
	switch code {
	case dns.RcodeSuccess:
		return 0
	case dns.RcodeBadKey:
		return 1
	case dns.RcodeBadTime:
		return 3
	}
	return 2
}
