package dnsd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/podedge/podedge/router"
)

func TestSipHash(t *testing.T) {
	// The test vector of the SipHash paper (appendix A): key 00..0f,
	// message 00..0e.
	msg := make([]byte, 15)
	for i := range msg {
		msg[i] = byte(i)
	}
	if got := sipHash24(0x0706050403020100, 0x0f0e0d0c0b0a0908, msg); got != 0xa129ca6149be45e5 {
		t.Errorf("SipHash-2-4 = %#x, want 0xa129ca6149be45e5", got)
	}
}

// rrlHandler is a Handler with cfg changed by mutate, serving benchState,
// its clock set by hand (now).
func rrlHandler(t testing.TB, now *atomic.Int64, mutate func(*Config)) *Handler {
	t.Helper()
	cfg := DefaultConfig()
	if mutate != nil {
		mutate(&cfg)
	}
	h, err := NewHandler(cfg, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	h.clock.set = now.Load
	r, err := router.New(router.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	r.Subscribe(h.Update)
	r.Publish(benchState())
	return h
}

// cookieQuery packs an A query for acme with a COOKIE option of data
// cookie (hex).
func cookieQuery(t testing.TB, cookie string) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion("acme.example.test.", dns.TypeA)
	m.SetEdns0(1232, false)
	opt := m.IsEdns0()
	opt.Option = append(opt.Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: cookie})
	return pack(t, m)
}

// cookieOf returns the COOKIE option data of r in hex, "" without one.
func cookieOf(r *dns.Msg) string {
	if opt := r.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if c, ok := o.(*dns.EDNS0_COOKIE); ok {
				return c.Cookie
			}
		}
	}
	return ""
}

func TestCookies(t *testing.T) {
	var now atomic.Int64
	now.Store(1_800_000_000)
	h := rrlHandler(t, &now, func(c *Config) { c.Cookies.Secret = "000102030405060708090a0b0c0d0e0f" })
	alice, bob := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	ask := func(t *testing.T, from netip.Addr, cookie string) (*dns.Msg, cookieState) {
		t.Helper()
		var info respInfo
		resp := h.handle(cookieQuery(t, cookie), make([]byte, 1232), true, from, &info)
		r := new(dns.Msg)
		if err := r.Unpack(resp); err != nil {
			t.Fatal(err)
		}
		return r, info.cookie
	}
	const client = "0102030405060708"
	first, state := ask(t, alice, client)
	issued := cookieOf(first)
	if state != cookieClient || len(issued) != 48 || issued[:16] != client || issued[16:24] != "01000000" {
		t.Fatalf("a client cookie alone: state %d, answered %q; want a new version-1 server cookie", state, issued)
	}
	if ts := issued[24:32]; ts != fmt.Sprintf("%08x", now.Load()) {
		t.Errorf("server cookie timestamp %s, want the time %08x", ts, now.Load())
	}

	cases := []struct {
		name      string
		from      netip.Addr
		cookie    string
		advance   int64
		want      cookieState
		sameAgain bool // the server cookie comes back as sent
	}{
		{name: "sent back from the same address: valid, echoed", from: alice, cookie: issued, want: cookieValid, sameAgain: true},
		{name: "from another address: not valid, a new one", from: bob, cookie: issued, want: cookieClient},
		{name: "with another client cookie: not valid", from: alice, cookie: "1111111111111111" + issued[16:], want: cookieClient},
		{name: "with a hash changed: not valid", from: alice, cookie: issued[:46] + "00", want: cookieClient},
		{name: "31 minutes old: valid, replaced by a new one", from: alice, cookie: issued, advance: 31 * 60, want: cookieRenewed},
		{name: "61 minutes old: not valid", from: alice, cookie: issued, advance: 61 * 60, want: cookieClient},
		{name: "6 minutes in the future: not valid", from: alice, cookie: issued, advance: -6 * 60, want: cookieClient},
		{name: "4 minutes in the future: valid", from: alice, cookie: issued, advance: -4 * 60, want: cookieValid, sameAgain: true},
		{name: "another server's 8-byte server cookie: a new one", from: alice, cookie: client + "aabbccddeeff0011", want: cookieClient},
	}
	base := now.Load()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			now.Store(base + c.advance)
			r, state := ask(t, c.from, c.cookie)
			if state != c.want {
				t.Errorf("state %d, want %d", state, c.want)
			}
			got := cookieOf(r)
			if len(got) != 48 || got[:16] != c.cookie[:16] {
				t.Fatalf("answered cookie %q, want the client cookie and a server cookie", got)
			}
			if (got == c.cookie) != c.sameAgain {
				t.Errorf("answered %q for %q: echoed = %v, want %v", got, c.cookie, got == c.cookie, c.sameAgain)
			}
		})
	}
	now.Store(base)

	for _, bad := range []string{"0102030405", "010203040506070801020304", "01020304050607080102030405060708010203040506070801020304050607080102030405060708ff"} {
		t.Run(fmt.Sprintf("%d bytes: FORMERR", len(bad)/2), func(t *testing.T) {
			r, _ := ask(t, alice, bad)
			if r.Rcode != dns.RcodeFormatError || cookieOf(r) != "" {
				t.Errorf("rcode %s, cookie %q; want FORMERR and none", dns.RcodeToString[r.Rcode], cookieOf(r))
			}
		})
	}

	t.Run("disabled: ignored, not echoed", func(t *testing.T) {
		off := rrlHandler(t, &now, func(c *Config) { c.Cookies.Enabled = false })
		r := new(dns.Msg)
		if err := r.Unpack(off.Handle(cookieQuery(t, "0102"), make([]byte, 1232), true)); err != nil {
			t.Fatal(err)
		}
		if r.Rcode != dns.RcodeSuccess || cookieOf(r) != "" {
			t.Errorf("rcode %s, cookie %q; want NOERROR and none", dns.RcodeToString[r.Rcode], cookieOf(r))
		}
	})
}

// TestRRLBuckets checks the token buckets second by second: a new flow's
// four seconds' worth, the refill, its cap, a second flow on the same
// bucket in slow start.
func TestRRLBuckets(t *testing.T) {
	r := &rrl{rate: 10, buckets: make([]atomic.Uint64, 1)}
	takeN := func(key, now uint64, n int) (ok int) {
		for range n {
			if r.take(key, now) {
				ok++
			}
		}
		return ok
	}
	a, b := uint64(0xaaaa)<<tagShift, uint64(0xbbbb)<<tagShift
	steps := []struct {
		name    string
		key     uint64
		now     uint64
		ask, ok int
	}{
		{"a new flow has four seconds of tokens", a, 100, 50, 40},
		{"the same second: none left", a, 100, 5, 0},
		{"a second later: one second's worth", a, 101, 20, 10},
		{"another flow on the bucket takes it over in slow start", b, 101, 20, 15},
		{"the first flow shares it while it is in slow start", a, 101, 5, 0},
		{"next second: slow start is over, one second's worth", b, 102, 20, 10},
		{"ten idle seconds refill at most four seconds' worth", b, 112, 50, 40},
		{"a flow idle two seconds loses its bucket to a newcomer, full", a, 114, 50, 40},
	}
	for _, s := range steps {
		if got := takeN(s.key, s.now, s.ask); got != s.ok {
			t.Errorf("%s: %d of %d answered, want %d", s.name, got, s.ask, s.ok)
		}
	}
}

func TestRRLClasses(t *testing.T) {
	cases := []struct {
		name string
		info respInfo
		want uint64
	}{
		{"an answer", respInfo{rcode: rcodeSuccess, qtype: 1, ancount: 13, size: 300}, classPositive},
		{"no records", respInfo{rcode: rcodeSuccess, qtype: 28}, classEmpty},
		{"NXDOMAIN", respInfo{rcode: rcodeNXDomain, qtype: 1}, classNXDomain},
		{"REFUSED", respInfo{rcode: rcodeRefused, qtype: 1}, classError},
		{"FORMERR", respInfo{rcode: rcodeFormErr}, classError},
		{"ANY", respInfo{rcode: rcodeSuccess, qtype: typeANY, ancount: 1}, classAny},
		{"DNSKEY", respInfo{rcode: rcodeSuccess, qtype: typeDNSKEY, ancount: 1}, classDNSSEC},
		{"1024 bytes", respInfo{rcode: rcodeSuccess, qtype: 2, ancount: 10, size: 1024}, classLarge},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := classOf(&c.info); got != c.want {
				t.Errorf("class %d, want %d", got, c.want)
			}
		})
	}
	// Errors and NXDOMAIN share one flow per network whatever the name;
	// answers have one per name.
	r := &rrl{}
	from := netip.MustParseAddr("192.0.2.1")
	neighbour := netip.MustParseAddr("192.0.2.200")
	other := netip.MustParseAddr("192.0.3.1")
	nx1, nx2 := respInfo{rcode: rcodeNXDomain, nameHash: 1}, respInfo{rcode: rcodeNXDomain, nameHash: 2}
	a1, a2 := respInfo{ancount: 1, nameHash: 1}, respInfo{ancount: 1, nameHash: 2}
	if r.flow(from, &nx1) != r.flow(from, &nx2) || r.flow(from, &nx1) != r.flow(neighbour, &nx2) {
		t.Error("NXDOMAIN for two names or from one /24 are two flows")
	}
	if r.flow(from, &a1) == r.flow(from, &a2) || r.flow(from, &a1) == r.flow(other, &a1) {
		t.Error("answers for two names, or from two /24s, share a flow")
	}
	v6a, v6b := netip.MustParseAddr("2001:db8:0:ff::1"), netip.MustParseAddr("2001:db8:0:1ff::1")
	if r.flow(v6a, &a1) != r.flow(netip.MustParseAddr("2001:db8:0:aa::2"), &a1) || r.flow(v6a, &a1) == r.flow(v6b, &a1) {
		t.Error("IPv6 flows are not /56")
	}
}

// TestSlipAnswer checks an answer that slips: the same header and
// question with TC, no records, the OPT record with its cookie kept.
func TestSlipAnswer(t *testing.T) {
	var now atomic.Int64
	now.Store(1_800_000_000)
	h := rrlHandler(t, &now, nil)
	var info respInfo
	resp := h.handle(cookieQuery(t, "0102030405060708"), make([]byte, 1232), true, netip.MustParseAddr("192.0.2.1"), &info)
	slipped := slipAnswer(resp, &info)
	r := new(dns.Msg)
	if err := r.Unpack(slipped); err != nil {
		t.Fatal(err)
	}
	if !r.Truncated || !r.Response || len(r.Answer)+len(r.Ns) != 0 || len(r.Question) != 1 || r.Question[0].Name != "acme.example.test." {
		t.Errorf("slipped answer %v", r)
	}
	if len(cookieOf(r)) != 48 {
		t.Errorf("slipped answer lost its cookie: %v", r.IsEdns0())
	}
}

// udpFrom opens a UDP socket bound to the address local (any port) and
// connected to addr.
func udpFrom(t testing.TB, local, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(local)}, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// exchangeOn sends q on c and returns the answer with q's ID, or nil after
// timeout.
func exchangeOn(t testing.TB, c *net.UDPConn, q []byte, timeout time.Duration) *dns.Msg {
	t.Helper()
	if _, err := c.Write(q); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	deadline := time.Now().Add(timeout)
	for {
		c.SetReadDeadline(deadline)
		n, err := c.Read(buf)
		if err != nil {
			return nil
		}
		if n >= 2 && binary.BigEndian.Uint16(buf) == binary.BigEndian.Uint16(q) {
			r := new(dns.Msg)
			if err := r.Unpack(buf[:n]); err != nil {
				t.Fatal(err)
			}
			return r
		}
	}
}

// TestRRLFlood floods dnsd from 64 source ports of 127.0.0.1 at 160 times
// the rate limit, as a spoofed
// attack on that address would look, and checks that the flood's full
// answers fall to the configured rate (with slip 2, some come back empty
// with TC, the rest are dropped), while a client on another network
// (127.0.1.1) and one on the flood's network with a valid server cookie are
// answered every time, and TCP from the flood's address is not limited.
func TestRRLFlood(t *testing.T) {
	const rate = 20
	ts := startServer(t, nil, func(c *Config) {
		c.RRL.RateLimit, c.RRL.Slip = rate, 2
		c.UDPSockets = 2
	})
	ts.Router().Publish(benchState())
	query := func(id uint16) []byte {
		m := new(dns.Msg)
		m.SetQuestion("pod-1.pods.example.test.", dns.TypeA)
		m.SetEdns0(1232, false)
		m.Id = id
		return pack(t, m)
	}

	// The cookie client gets its server cookie before the flood.
	cookieConn := udpFrom(t, "127.0.0.2", ts.addr)
	first := exchangeOn(t, cookieConn, cookieQuery(t, "a1a2a3a4a5a6a7a8"), 5*time.Second)
	if first == nil || len(cookieOf(first)) != 48 {
		t.Fatalf("no server cookie: %v", first)
	}
	serverCookie := cookieOf(first)

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var full, truncated, sent atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < 64; i++ {
		c := udpFrom(t, "127.0.0.1", ts.addr)
		wg.Go(func() {
			q := query(uint16(i))
			// 50 a second from each port, 3,200 in all: 160 times the
			// rate, not so many that the kernel drops queries for want
			// of CPU on a loaded machine (that would test the machine).
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for ctx.Err() == nil {
				<-tick.C
				if _, err := c.Write(q); err != nil {
					if errors.Is(err, net.ErrClosed) {
						return
					}
					continue
				}
				sent.Add(1)
			}
		})
		wg.Go(func() {
			buf := make([]byte, 1500)
			for {
				c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
				n, err := c.Read(buf)
				if err != nil {
					if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
						return
					}
					continue
				}
				switch {
				case n < headerLen:
				case binary.BigEndian.Uint16(buf[2:])&flagTC != 0:
					truncated.Add(1)
				case binary.BigEndian.Uint16(buf[6:]) > 0:
					full.Add(1)
				}
			}
		})
	}

	// Meanwhile, the others ask 40 times each, 20 ms apart.
	other := udpFrom(t, "127.0.1.1", ts.addr)
	cookieQ := cookieQuery(t, serverCookie)
	for i := 0; i < 40; i++ {
		for _, c := range []struct {
			name string
			conn *net.UDPConn
			q    []byte
		}{{"a client on 127.0.1.0/24", other, query(uint16(1000 + i))}, {"a client with a valid cookie", cookieConn, cookieQ}} {
			r := exchangeOn(t, c.conn, c.q, 2*time.Second)
			if r == nil || r.Truncated || len(addrs(r)) != 13 {
				t.Fatalf("%s, query %d during the flood: %v", c.name, i, r)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	tcp := ts.query(t, "tcp", "pod-1.pods.example.test.", dns.TypeA)
	elapsed := time.Since(start)
	stop()
	wg.Wait()

	seconds := int64(elapsed/time.Second) + 2 // seconds begun, rounded up, and the one of the last answers
	limit := rrlWindow*rate + rate*seconds
	t.Logf("flood: %d queries in %s, %d full answers (at most %d allowed), %d truncated", sent.Load(), elapsed.Round(time.Millisecond), full.Load(), limit, truncated.Load())
	if sent.Load() < 10*limit {
		t.Fatalf("the flood sent only %d queries: too few to test the limit", sent.Load())
	}
	if full.Load() > limit || full.Load() < rrlWindow*rate {
		t.Errorf("the flood got %d full answers, want %d to %d", full.Load(), rrlWindow*rate, limit)
	}
	if truncated.Load() == 0 {
		t.Error("no answer slipped (TC) with slip 2")
	}
	if len(tcp.Answer) != 13 || tcp.Truncated {
		t.Errorf("TCP from the flooded address: %v", tcp)
	}
	if got := ts.metric(t, "dnsd_rrl_slipped_total"); got < 1 {
		t.Errorf("dnsd_rrl_slipped_total %v", got)
	}
	if got := ts.metric(t, "dnsd_rrl_dropped_total"); got < 1 {
		t.Errorf("dnsd_rrl_dropped_total %v", got)
	}
	if got := ts.metric(t, `dnsd_rrl_exempt_total{reason="cookie"}`); got < 40 {
		t.Errorf(`dnsd_rrl_exempt_total{reason="cookie"} %v, want 40 or more`, got)
	}
}

// BenchmarkRRLCheck is the cost of rate limiting one answer: the flow's
// key and its bucket. "1flow" keeps one bucket in the cache; "10kflows"
// walks 10,000 flows (as many networks asking), each one bucket of a table
// of Knot's default size.
func BenchmarkRRLCheck(b *testing.B) {
	var now atomic.Int64
	now.Store(1_800_000_000)
	m := NewMetrics(nil)
	cfg := DefaultConfig().RRL
	cfg.RateLimit = maxRateLimit
	r := newRRL(cfg, &coarseClock{set: now.Load}, m)
	r.clock.now.Store(now.Load())
	for _, n := range []int{1, 10_000} {
		b.Run(fmt.Sprintf("%dflows", n), func(b *testing.B) {
			froms := make([]netip.Addr, n)
			for i := range froms {
				froms[i] = netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1})
			}
			info := respInfo{rcode: rcodeSuccess, qtype: 1, ancount: 13, size: 300, nameHash: 0x1234}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				// Past its rate, a flow is checked the same way.
				r.check(froms[i%n], &info)
				i++
			}
		})
	}
}

// BenchmarkQueryRRL answers a pod query through respond with rate limiting
// on (a limit it never reaches) and cookies: what RRL and cookies add to
// BenchmarkPodQuery.
func BenchmarkQueryRRL(b *testing.B) {
	var now atomic.Int64
	now.Store(1_800_000_000)
	for _, c := range []struct {
		name   string
		cookie string
	}{{"no-cookie", ""}, {"client-cookie", "0102030405060708"}, {"valid-cookie", "valid"}} {
		b.Run(c.name, func(b *testing.B) {
			h := rrlHandler(b, &now, func(cfg *Config) { cfg.RRL.RateLimit = maxRateLimit })
			h.clock.now.Store(now.Load())
			from := netip.MustParseAddr("192.0.2.1")
			q := packQuery(b, "pod-1.pods.example.test.", dns.TypeA, true)
			out := make([]byte, 1232)
			if c.cookie != "" {
				cookie := c.cookie
				if cookie == "valid" {
					r := new(dns.Msg)
					r.Unpack(h.respond(cookieQuery(b, "0102030405060708"), out, true, from))
					cookie = cookieOf(r)
				}
				m := new(dns.Msg)
				m.SetQuestion("pod-1.pods.example.test.", dns.TypeA)
				m.SetEdns0(1232, false)
				m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: cookie})
				q = pack(b, m)
			}
			b.ReportAllocs()
			for b.Loop() {
				if h.respond(q, out, true, from) == nil {
					b.Fatal("dropped")
				}
			}
		})
	}
}
