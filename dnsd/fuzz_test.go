package dnsd

import (
	"encoding/binary"
	"testing"

	"github.com/miekg/dns"
)

// FuzzHandle feeds the packet handler random bytes, over both transports'
// limits. It must not panic, and every answer must be a well-formed
// message with the query's ID, no larger than the query allows: 512 bytes
// without EDNS, the EDNS buffer size (at least 512, at most the configured
// 1232) with it, 65535 over TCP.
func FuzzHandle(f *testing.F) {
	h := benchHandler(f)
	seed := func(m *dns.Msg) {
		p, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(p)
	}
	for _, name := range []string{"pod-1.pods.example.test.", "AcMe.example.test.", "example.test.", "nope.example.test.", "pods.example.test.", "example.org."} {
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeMX, dns.TypeNS, dns.TypeSOA, dns.TypeANY, dns.TypeTXT, dns.TypeCNAME} {
			seed(question(name, qtype))
			m := withEDNS(question(name, qtype), 4096)
			m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_NSID{Code: dns.EDNS0NSID})
			seed(m)
		}
	}
	small := withEDNS(question("example.test.", dns.TypeNS), 100)
	seed(small)
	bad := withEDNS(question("acme.example.test.", dns.TypeA), 1232)
	bad.IsEdns0().SetVersion(3)
	seed(bad)
	notify := question("example.test.", dns.TypeSOA)
	notify.Opcode = dns.OpcodeNotify
	seed(notify)
	f.Add([]byte{})
	f.Add([]byte("\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x01\x00\x00\x01\x00\x01\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00"))

	out := make([]byte, maxTCPSize)
	f.Fuzz(func(t *testing.T, p []byte) {
		for _, udp := range []bool{true, false} {
			resp := h.Handle(p, out[:0], udp)
			if resp == nil {
				continue
			}
			limit := maxTCPSize
			if udp {
				limit = 512
				q := new(dns.Msg)
				if q.Unpack(p) == nil {
					if opt := q.IsEdns0(); opt != nil {
						limit = min(max(int(opt.UDPSize()), 512), h.data.Load().maxUDP)
					}
				} else {
					// Where miekg/dns cannot parse the query, grant the
					// most any query could get.
					limit = h.data.Load().maxUDP
				}
			}
			if len(resp) > limit {
				t.Fatalf("udp=%v: answer of %d bytes, the query allows %d\nquery %x", udp, len(resp), limit, p)
			}
			if binary.BigEndian.Uint16(resp) != binary.BigEndian.Uint16(p) || resp[2]&0x80 == 0 {
				t.Fatalf("answer %x does not answer query %x", resp[:4], p[:4])
			}
			r := new(dns.Msg)
			if err := r.Unpack(resp); err != nil {
				t.Fatalf("udp=%v: answer does not parse: %v\nquery  %x\nanswer %x", udp, err, p, resp)
			}
		}
	})
}

// TestHandleSmallBuffers checks that Handle respects the capacity of the
// caller's buffer: no panic, no answer beyond it, TC when it cut.
func TestHandleSmallBuffers(t *testing.T) {
	h := benchHandler(t)
	for _, q := range [][]byte{
		packQuery(t, "pod-1.pods.example.test.", dns.TypeA, true),
		packQuery(t, "acme.example.test.", dns.TypeA, false),
	} {
		for _, n := range []int{0, 5, 12, 40, 60, 100, 200} {
			out := make([]byte, n)
			resp := h.Handle(q, out[:0], true)
			if resp == nil {
				continue
			}
			if len(resp) > n || &resp[0] != &out[0] {
				t.Fatalf("cap %d: answer of %d bytes outside the buffer", n, len(resp))
			}
			r := new(dns.Msg)
			if err := r.Unpack(resp); err != nil || !r.Truncated {
				t.Errorf("cap %d: %v, TC %v; want a parsable answer cut with TC", n, err, r.Truncated)
			}
		}
	}
}
