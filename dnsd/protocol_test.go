package dnsd

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"
	"github.com/podedge/podedge/internal/consultest"
)

// Names as long as labels may be: 13 A records and the CNAME must still
// fit in 512 bytes without EDNS.
var (
	longTenant = strings.Repeat("t", 63)
	longPod    = strings.Repeat("p", 63)
)

// protocolServer runs dnsd over a real Consul with pod-1 (13 passing
// edges), the tenant acme in it, a tenant and a pod with the longest names,
// and ten name servers with glue: an NS answer of 1,100 bytes, more than
// 512 and less than 1232.
func protocolServer(t *testing.T, portableUDP bool) *testServer {
	t.Helper()
	agent := consultest.Start(t)
	putPod(t, agent, "pod-1")
	putPod(t, agent, longPod)
	for i, ip := range ips(1, 13) {
		edge(t, agent, fmt.Sprintf("e%d", i), "pod-1", ip, api.HealthPassing)
		edge(t, agent, fmt.Sprintf("long%d", i), longPod, ip, api.HealthPassing)
	}
	putTenant(t, agent, "acme", "pod-1")
	putTenant(t, agent, longTenant, longPod)
	cfg := testConfig(agent)
	cfg.NS = nil
	for i := 1; i <= 10; i++ {
		cfg.NS = append(cfg.NS, NameServer{Name: fmt.Sprintf("ns%02d", i), Addresses: []string{fmt.Sprintf("192.0.2.%d", 100+i), fmt.Sprintf("2001:db8::%d", 100+i)}})
	}
	ts := startServerConfig(t, agent, cfg, portableUDP)
	consultest.WaitFor(t, 10*time.Second, "both tenants to resolve to 13 edges", func() bool {
		return len(addrs(ts.query(t, "udp", "acme.example.test.", dns.TypeA))) == 13 &&
			len(addrs(ts.query(t, "udp", longTenant+".example.test.", dns.TypeA))) == 13
	})
	return ts
}

// protoCase is one query of the protocol table and the answer it needs.
type protoCase struct {
	name    string
	network string // "udp" (default) or "tcp"
	msg     func() *dns.Msg
	check   func(t *testing.T, q, r *dns.Msg, size int)
}

func question(name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	return m
}

func withEDNS(m *dns.Msg, size uint16) *dns.Msg {
	m.SetEdns0(size, false)
	return m
}

func wantRcode(rcode int) func(t *testing.T, q, r *dns.Msg, size int) {
	return func(t *testing.T, q, r *dns.Msg, size int) {
		t.Helper()
		if r.Rcode != rcode {
			t.Errorf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[rcode])
		}
	}
}

func all(checks ...func(t *testing.T, q, r *dns.Msg, size int)) func(t *testing.T, q, r *dns.Msg, size int) {
	return func(t *testing.T, q, r *dns.Msg, size int) {
		t.Helper()
		for _, c := range checks {
			c(t, q, r, size)
		}
	}
}

// fits checks the answer's size against the limit and TC against whether
// anything was cut: want records in the answer and additional sections.
func fits(limit int, tc bool, answer, extra int) func(t *testing.T, q, r *dns.Msg, size int) {
	return func(t *testing.T, q, r *dns.Msg, size int) {
		t.Helper()
		if size > limit {
			t.Errorf("answer of %d bytes, limit %d", size, limit)
		}
		if r.Truncated != tc {
			t.Errorf("TC %v, want %v", r.Truncated, tc)
		}
		if answer >= 0 && len(r.Answer) != answer {
			t.Errorf("%d answer records, want %d", len(r.Answer), answer)
		}
		if extra >= 0 && len(r.Extra) != extra {
			t.Errorf("%d additional records, want %d: %v", len(r.Extra), extra, r.Extra)
		}
	}
}

// TestProtocol runs the protocol cases of RFC 1035, 6891 and 8906 over UDP
// and TCP: sizes with and without EDNS, TC, BADVERS, NOTIMP, ANY, 0x20,
// FORMERR, NSID, options not echoed.
func TestProtocol(t *testing.T) {
	ts := protocolServer(t, false)
	runProtocolCases(t, ts)
}

// TestProtocolPortableUDP runs the same cases over the net package's UDP
// sockets, which other systems than Linux use.
func TestProtocolPortableUDP(t *testing.T) {
	ts := protocolServer(t, true)
	runProtocolCases(t, ts)
}

func runProtocolCases(t *testing.T, ts *testServer) {
	const apexNS = 10 // NS records; 20 glue records
	cases := []protoCase{
		{name: "no EDNS: 13 A and a CNAME of the longest names fit in 512", msg: func() *dns.Msg {
			return question(longTenant+".example.test.", dns.TypeA)
		}, check: fits(512, false, 14, 0)},
		{name: "no EDNS: NS and glue cut at 512 with TC", msg: func() *dns.Msg {
			return question("example.test.", dns.TypeNS)
		}, check: fits(512, true, -1, -1)},
		{name: "EDNS 1232: NS and glue whole", msg: func() *dns.Msg {
			return withEDNS(question("example.test.", dns.TypeNS), 1232)
		}, check: fits(1232, false, apexNS, 2*apexNS+1)},
		{name: "EDNS 4096: capped at 1232 and 1232 advertised", msg: func() *dns.Msg {
			return withEDNS(question("example.test.", dns.TypeNS), 4096)
		}, check: all(fits(1232, false, apexNS, 2*apexNS+1), func(t *testing.T, q, r *dns.Msg, size int) {
			if opt := r.IsEdns0(); opt == nil || opt.UDPSize() != 1232 {
				t.Errorf("OPT %v, want a buffer size of 1232", opt)
			}
		})},
		{name: "EDNS 700: cut at 700 with TC, OPT kept", msg: func() *dns.Msg {
			return withEDNS(question("example.test.", dns.TypeNS), 700)
		}, check: all(fits(700, true, -1, -1), func(t *testing.T, q, r *dns.Msg, size int) {
			if r.IsEdns0() == nil {
				t.Error("OPT record dropped")
			}
		})},
		{name: "EDNS below 512 counts as 512", msg: func() *dns.Msg {
			return withEDNS(question("example.test.", dns.TypeNS), 100)
		}, check: fits(512, true, -1, -1)},
		{name: "TCP: NS and glue whole without EDNS", network: "tcp", msg: func() *dns.Msg {
			return question("example.test.", dns.TypeNS)
		}, check: fits(65535, false, apexNS, 2*apexNS)},
		{name: "EDNS version 1 gets BADVERS", msg: func() *dns.Msg {
			m := withEDNS(question("acme.example.test.", dns.TypeA), 1232)
			m.IsEdns0().SetVersion(1)
			return m
		}, check: all(wantRcode(dns.RcodeBadVers), fits(1232, false, 0, 1), func(t *testing.T, q, r *dns.Msg, size int) {
			if opt := r.IsEdns0(); opt == nil || opt.Version() != 0 {
				t.Errorf("OPT %v, want version 0", opt)
			}
			if r.Authoritative {
				t.Error("AA set on BADVERS")
			}
		})},
		{name: "NOTIFY gets NOTIMP", msg: func() *dns.Msg {
			m := question("example.test.", dns.TypeSOA)
			m.Opcode = dns.OpcodeNotify
			return m
		}, check: all(wantRcode(dns.RcodeNotImplemented), fits(512, false, 0, 0))},
		{name: "UPDATE gets NOTIMP over TCP", network: "tcp", msg: func() *dns.Msg {
			m := question("example.test.", dns.TypeSOA)
			m.Opcode = dns.OpcodeUpdate
			return m
		}, check: all(wantRcode(dns.RcodeNotImplemented), fits(512, false, 0, 0))},
		{name: "unassigned opcode 3 gets NOTIMP", msg: func() *dns.Msg {
			m := question("example.test.", dns.TypeSOA)
			m.Opcode = 3
			return m
		}, check: wantRcode(dns.RcodeNotImplemented)},
		{name: "ANY gets one RRset", msg: func() *dns.Msg {
			return withEDNS(question("pod-1.pods.example.test.", dns.TypeANY), 1232)
		}, check: all(wantRcode(dns.RcodeSuccess), func(t *testing.T, q, r *dns.Msg, size int) {
			for _, rr := range r.Answer {
				if rr.Header().Rrtype != dns.TypeA {
					t.Errorf("ANY answered %v besides the A set", rr)
				}
			}
		})},
		{name: "0x20: the question comes back as asked", msg: func() *dns.Msg {
			return withEDNS(question("AcMe.ExAmPlE.tEsT.", dns.TypeA), 1232)
		}, check: all(wantRcode(dns.RcodeSuccess), fits(1232, false, 14, 1))},
		{name: "0x20 over TCP", network: "tcp", msg: func() *dns.Msg {
			return question("POD-1.Pods.EXAMPLE.test.", dns.TypeMX)
		}, check: all(wantRcode(dns.RcodeSuccess), fits(65535, false, 2, 0))},
		{name: "no question gets FORMERR", msg: func() *dns.Msg {
			m := new(dns.Msg)
			m.Id = dns.Id()
			return m
		}, check: all(wantRcode(dns.RcodeFormatError), fits(512, false, 0, 0))},
		{name: "two questions get FORMERR", msg: func() *dns.Msg {
			m := question("acme.example.test.", dns.TypeA)
			m.Question = append(m.Question, dns.Question{Name: "pod-1.pods.example.test.", Qtype: dns.TypeA, Qclass: dns.ClassINET})
			return m
		}, check: all(wantRcode(dns.RcodeFormatError), fits(512, false, 0, 0))},
		{name: "two OPT records get FORMERR", msg: func() *dns.Msg {
			m := withEDNS(question("acme.example.test.", dns.TypeA), 1232)
			m.Extra = append(m.Extra, m.Extra[0])
			return m
		}, check: wantRcode(dns.RcodeFormatError)},
		{name: "NSID when asked", msg: func() *dns.Msg {
			m := withEDNS(question("acme.example.test.", dns.TypeA), 1232)
			opt := m.IsEdns0()
			opt.Option = append(opt.Option, &dns.EDNS0_NSID{Code: dns.EDNS0NSID})
			return m
		}, check: func(t *testing.T, q, r *dns.Msg, size int) {
			opt := r.IsEdns0()
			if opt == nil || len(opt.Option) != 1 {
				t.Fatalf("OPT %v, want the NSID option alone", opt)
			}
			if n, ok := opt.Option[0].(*dns.EDNS0_NSID); !ok || n.Nsid != fmt.Sprintf("%x", "dnsd-test") {
				t.Errorf("NSID %v, want %x", opt.Option[0], "dnsd-test")
			}
		}},
		{name: "unknown options and subnets are not echoed, a cookie gets a server cookie; DO is copied", msg: func() *dns.Msg {
			m := question("acme.example.test.", dns.TypeA)
			m.SetEdns0(1232, true)
			opt := m.IsEdns0()
			opt.Option = append(opt.Option,
				&dns.EDNS0_LOCAL{Code: 65001, Data: []byte("hello")},
				&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"},
				&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.ParseIP("198.51.100.0").To4()})
			return m
		}, check: func(t *testing.T, q, r *dns.Msg, size int) {
			opt := r.IsEdns0()
			if opt == nil || len(opt.Option) != 1 || !opt.Do() {
				t.Fatalf("OPT %v, want the cookie alone and DO set", opt)
			}
			if c, ok := opt.Option[0].(*dns.EDNS0_COOKIE); !ok || len(c.Cookie) != 48 || c.Cookie[:16] != "0102030405060708" {
				t.Errorf("cookie %v, want the client cookie and a 16-byte server cookie", opt.Option[0])
			}
		}},
		{name: "no NSID unless asked", msg: func() *dns.Msg {
			return withEDNS(question("acme.example.test.", dns.TypeA), 1232)
		}, check: func(t *testing.T, q, r *dns.Msg, size int) {
			if opt := r.IsEdns0(); opt == nil || len(opt.Option) != 0 || opt.Do() {
				t.Errorf("OPT %v, want no option and DO clear", opt)
			}
		}},
	}
	for _, c := range cases {
		network := c.network
		if network == "" {
			network = "udp"
		}
		t.Run(c.name, func(t *testing.T) {
			q := c.msg()
			r, size := exchangeRaw(t, network, ts.addr, pack(t, q))
			if r.Id != q.Id || !r.Response {
				t.Fatalf("answer id %d response %v, want id %d, QR set", r.Id, r.Response, q.Id)
			}
			if r.Opcode != q.Opcode || r.RecursionAvailable {
				t.Errorf("opcode %d RA %v, want opcode %d and RA clear", r.Opcode, r.RecursionAvailable, q.Opcode)
			}
			if len(q.Question) == 1 && r.Rcode != dns.RcodeFormatError {
				// The question exactly as asked, case included (0x20).
				if len(r.Question) != 1 || r.Question[0] != q.Question[0] {
					t.Errorf("question %v, want %v", r.Question, q.Question)
				}
			}
			if (q.IsEdns0() == nil) != (r.IsEdns0() == nil) {
				t.Errorf("query OPT %v, answer OPT %v: EDNS answers EDNS only", q.IsEdns0(), r.IsEdns0())
			}
			c.check(t, q, r, size)
		})
	}

	// What cannot be parsed is dropped: each bad packet is followed by a
	// good query on the same socket, and the first answer must be the good
	// query's.
	good := question("acme.example.test.", dns.TypeA)
	response := question("acme.example.test.", dns.TypeA)
	response.Response = true
	truncated := pack(t, question("acme.example.test.", dns.TypeA))
	badOPT := pack(t, withEDNS(question("acme.example.test.", dns.TypeA), 1232))
	badLabel := pack(t, question("acme.example.test.", dns.TypeA))
	badLabel[12] = 0x45 // a label type RFC 6891 retired
	pointer := pack(t, question("acme.example.test.", dns.TypeA))
	pointer = append(pointer[:12], 0xC0, 12, 0, 1, 0, 1) // compressed question pointing at itself
	for _, c := range []struct {
		name   string
		packet []byte
	}{
		{"empty", nil},
		{"shorter than a header", []byte{1, 2, 3, 4, 5}},
		{"random bytes", []byte("\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fno such name")},
		{"a response", pack(t, response)},
		{"a question cut short", truncated[:len(truncated)-3]},
		{"an OPT record cut short", badOPT[:len(badOPT)-2]},
		{"a reserved label type", badLabel},
		{"a compressed question", pointer},
		{"counts beyond the packet", func() []byte {
			p := pack(t, question("acme.example.test.", dns.TypeA))
			binary.BigEndian.PutUint16(p[10:], 5)
			return p
		}()},
	} {
		t.Run("drops "+c.name, func(t *testing.T) {
			good.Id = dns.Id()
			r := ts.rawExchange(t, c.packet, pack(t, good))
			if r.Id != good.Id || r.Rcode != dns.RcodeSuccess {
				t.Fatalf("first answer has id %d rcode %s: the bad packet was answered (good query id %d)", r.Id, dns.RcodeToString[r.Rcode], good.Id)
			}
		})
	}
}

// exchangeRaw sends packet over network and returns the parsed answer and
// its size in bytes.
func exchangeRaw(t *testing.T, network, addr string, packet []byte) (*dns.Msg, int) {
	t.Helper()
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 65535)
	var n int
	if network == "tcp" {
		if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(packet))), packet...)); err != nil {
			t.Fatal(err)
		}
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			t.Fatalf("no answer: %v", err)
		}
		n = int(binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, buf[:n]); err != nil {
			t.Fatal(err)
		}
	} else {
		if _, err := c.Write(packet); err != nil {
			t.Fatal(err)
		}
		if n, err = c.Read(buf); err != nil {
			t.Fatalf("no answer: %v", err)
		}
	}
	r := new(dns.Msg)
	if err := r.Unpack(buf[:n]); err != nil {
		t.Fatalf("answer of %d bytes does not parse: %v", n, err)
	}
	return r, n
}

// TestTCP checks DNS over TCP beyond single queries: several queries in one
// write are all answered, in order (RFC 7766); an idle connection is
// closed; connections past the limit are closed at once.
func TestTCP(t *testing.T) {
	agent := consultest.Start(t)
	putPod(t, agent, "pod-1")
	edge(t, agent, "e1", "pod-1", "192.0.2.1", api.HealthPassing)
	ts := startServer(t, agent, func(c *Config) {
		c.TCP.IdleTimeout = 2 * time.Second
		c.TCP.MaxConnections = 1
	})
	c, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var stream []byte
	var ids []uint16
	for _, name := range []string{"pod-1.pods.example.test.", "nobody.example.test.", "example.test."} {
		q := question(name, dns.TypeA)
		ids = append(ids, q.Id)
		p := pack(t, q)
		stream = append(binary.BigEndian.AppendUint16(stream, uint16(len(p))), p...)
	}
	if _, err := c.Write(stream); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i, id := range ids {
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		buf := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		r := new(dns.Msg)
		if err := r.Unpack(buf); err != nil || r.Id != id {
			t.Fatalf("answer %d: id %d err %v, want id %d", i, r.Id, err, id)
		}
	}

	// The one connection allowed is taken: another is closed at once.
	c2, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c2.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("second connection: read %d, %v; want it closed (EOF)", n, err)
	}
	if n := ts.metric(t, "dnsd_tcp_rejected_total"); n != 1 {
		t.Errorf("dnsd_tcp_rejected_total = %v, want 1", n)
	}

	// Idle past the timeout: closed.
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("idle connection: read %d, %v; want it closed (EOF)", n, err)
	}

	// A message that does not parse closes the connection.
	consultest.WaitFor(t, 5*time.Second, "the idle connection to be released", func() bool {
		return ts.metric(t, "dnsd_tcp_connections") == 0
	})
	c3, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	c3.SetDeadline(time.Now().Add(5 * time.Second))
	c3.Write([]byte{0, 3, 1, 2, 3})
	if n, err := c3.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("after garbage: read %d, %v; want the connection closed", n, err)
	}
}
