package dnsd

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
	"github.com/podedge/podedge/router"
)

// benchHandler returns a Handler serving pod-1 with 15 passing edges and
// the tenant acme in it, built from a snapshot published by hand.
func benchHandler(tb testing.TB) *Handler {
	tb.Helper()
	cfg := DefaultConfig()
	cfg.MX = []MailExchanger{{Priority: 10, Host: "mx1.mail.example.net."}}
	h, err := NewHandler(cfg, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatal(err)
	}
	r, err := router.New(router.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	r.Subscribe(h.Update)
	r.Publish(benchState())
	return h
}

// benchState is pod-1 with 15 passing edges and the tenant acme in it.
func benchState() router.State {
	var edges []router.EdgeEndpoint
	for i := 1; i <= 15; i++ {
		ip := fmt.Sprintf("192.0.2.%d", i)
		edges = append(edges, router.EdgeEndpoint{
			Endpoint: router.Endpoint{ID: "edge-" + ip, Pod: "pod-1", Addr: ip + ":80", Weight: 1, Passing: true},
			PublicIP: netip.MustParseAddr(ip),
		})
	}
	return router.State{
		Pods:    []router.Pod{{Name: "pod-1"}},
		Tenants: []router.Tenant{{Name: "acme", Pod: "pod-1"}},
		Edges:   edges,
		Index:   1,
	}
}

func packQuery(tb testing.TB, name string, qtype uint16, edns bool) []byte {
	tb.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if edns {
		m.SetEdns0(1232, false)
	}
	p, err := m.Pack()
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

func benchmarkQuery(b *testing.B, name string, qtype uint16) {
	h := benchHandler(b)
	q := packQuery(b, name, qtype, true)
	out := make([]byte, 1232)
	if resp := h.Handle(q, out, true); resp == nil {
		b.Fatal("no answer")
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(q)))
	b.ResetTimer()
	for b.Loop() {
		h.Handle(q, out, true)
	}
}

// BenchmarkPodQuery answers A for a pod with 15 passing edges: 13 records,
// rotated.
func BenchmarkPodQuery(b *testing.B) { benchmarkQuery(b, "pod-1.pods.example.test.", dns.TypeA) }

// BenchmarkTenantQuery answers A for a tenant: the CNAME and the pod's 13
// records chased.
func BenchmarkTenantQuery(b *testing.B) { benchmarkQuery(b, "AcMe.example.test.", dns.TypeA) }

// BenchmarkNXDomain answers a name that does not exist.
func BenchmarkNXDomain(b *testing.B) { benchmarkQuery(b, "nope.example.test.", dns.TypeA) }

// BenchmarkServeUDP sends pod and tenant queries through a real socket to
// a running server and reads the answers: allocs/op counts every goroutine,
// the server's read loop included (the client side allocates nothing
// either). "batch" is the Linux recvmmsg loop, "portable" the net package's.
func BenchmarkServeUDP(b *testing.B) {
	for _, mode := range []struct {
		name     string
		portable bool
	}{{"batch", false}, {"portable", true}} {
		b.Run(mode.name, func(b *testing.B) {
			cfg := DefaultConfig()
			cfg.Listen, cfg.Admin, cfg.UDPSockets = "127.0.0.1:0", "127.0.0.1:0", 1
			srv, err := New(cfg, slog.New(slog.DiscardHandler))
			if err != nil {
				b.Fatal(err)
			}
			srv.portableUDP = mode.portable
			if err := srv.Listen(); err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { srv.Run(ctx, nil); close(done) }()
			defer func() { cancel(); <-done }()
			srv.Router().Publish(benchState())

			c, err := net.Dial("udp", srv.Addr())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			queries := [][]byte{
				packQuery(b, "pod-1.pods.example.test.", dns.TypeA, true),
				packQuery(b, "acme.example.test.", dns.TypeA, true),
			}
			buf := make([]byte, 1500)
			ask := func(q []byte) {
				if _, err := c.Write(q); err != nil {
					b.Fatal(err)
				}
				if _, err := c.Read(buf); err != nil {
					b.Fatal(err)
				}
			}
			for _, q := range queries { // warm up: buffers, goroutines
				ask(q)
			}
			b.ReportAllocs()
			b.ResetTimer()
			i := 0
			for b.Loop() {
				ask(queries[i&1])
				i++
			}
		})
	}
}
