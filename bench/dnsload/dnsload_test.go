package dnsload

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// serve runs a miekg/dns server over UDP and TCP on one loopback port,
// answering A queries with 192.0.2.1, except those drop says to drop.
func serve(t *testing.T, drop func() bool) string {
	t.Helper()
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		if drop() {
			return
		}
		m := new(dns.Msg)
		m.SetReply(q)
		rr, _ := dns.NewRR(q.Question[0].Name + " 30 IN A 192.0.2.1")
		m.Answer = append(m.Answer, rr)
		_ = w.WriteMsg(m)
	})
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udp, err := net.ListenPacket("udp", tcp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*dns.Server{{Listener: tcp, Handler: handler}, {PacketConn: udp, Handler: handler}} {
		go func() { _ = s.ActivateAndServe() }()
		t.Cleanup(func() { _ = s.Shutdown() })
	}
	return tcp.Addr().String()
}

func TestCountsEveryQuery(t *testing.T) {
	var n atomic.Int64
	for _, tc := range []struct {
		name string
		drop func() bool
		lost bool
	}{
		{"a server that answers everything", func() bool { return false }, false},
		{"a server that drops one query in four", func() bool { return n.Add(1)%4 == 0 }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := serve(t, tc.drop)
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			res, err := Run(ctx, Config{Addr: addr, Name: "a.example.test", UDPRate: 400, TCPRate: 40, Timeout: 200 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%+v", res)
			if res.UDPSent < 100 || res.TCPQueries < 10 {
				t.Fatalf("too few queries: %+v", res)
			}
			if res.UDPBad != 0 {
				t.Errorf("bad answers: %+v", res)
			}
			if lost := res.UDPLost > 0 && res.TCPFailed > 0; lost != tc.lost {
				t.Errorf("lost %d UDP, %d TCP failed; want losses %v", res.UDPLost, res.TCPFailed, tc.lost)
			}
		})
	}
}
