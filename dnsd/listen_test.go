package dnsd

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestListenAddresses serves IPv4, IPv6 and the wildcard (one dual-stack
// socket answering both families), with both UDP implementations and
// several sockets sharing the port, and answers over UDP and TCP on each.
func TestListenAddresses(t *testing.T) {
	ipv6 := true
	if c, err := net.ListenPacket("udp6", "[::1]:0"); err != nil {
		ipv6 = false
	} else {
		c.Close()
	}
	for _, c := range []struct {
		listen string
		dial   []string // hosts to query
		v6     bool
	}{
		{"127.0.0.1:0", []string{"127.0.0.1"}, false},
		{"[::1]:0", []string{"::1"}, true},
		{":0", []string{"127.0.0.1", "::1"}, true},
	} {
		for _, portable := range []bool{false, true} {
			t.Run(c.listen+map[bool]string{false: "/batch", true: "/portable"}[portable], func(t *testing.T) {
				if c.v6 && !ipv6 {
					t.Skip("no IPv6 loopback on this machine")
				}
				cfg := DefaultConfig()
				cfg.Listen, cfg.Admin, cfg.UDPSockets = c.listen, "127.0.0.1:0", 3
				srv, err := New(cfg, slog.New(slog.DiscardHandler))
				if err != nil {
					t.Fatal(err)
				}
				srv.portableUDP = portable
				if err := srv.Listen(); err != nil {
					t.Fatal(err)
				}
				if len(srv.udp) != 3 {
					t.Errorf("%d UDP sockets, want 3", len(srv.udp))
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() { done <- srv.Run(ctx, nil) }()
				defer func() {
					cancel()
					select {
					case <-done:
					case <-time.After(10 * time.Second):
						t.Error("Run did not return")
					}
				}()
				srv.Router().Publish(benchState())
				_, port, _ := net.SplitHostPort(srv.Addr())
				for _, host := range c.dial {
					for _, network := range []string{"udp", "tcp"} {
						// Several clients, so that the kernel spreads
						// them over the sockets.
						for i := 0; i < 6; i++ {
							m := question("acme.example.test.", dns.TypeA)
							r, _, err := (&dns.Client{Net: network, Timeout: 5 * time.Second}).Exchange(m, net.JoinHostPort(host, port))
							if err != nil {
								t.Fatalf("%s %s: %v", network, host, err)
							}
							if len(r.Answer) != 14 {
								t.Fatalf("%s %s: %d answers, want 14", network, host, len(r.Answer))
							}
						}
					}
				}
			})
		}
	}
}

// TestTakeover starts a second server on the address of a first, which
// then stops: queries over UDP and TCP are answered throughout, as when a
// new dnsd replaces an old one.
func TestTakeover(t *testing.T) {
	start := func(listen string) (*Server, func()) {
		cfg := DefaultConfig()
		cfg.Listen, cfg.Admin, cfg.UDPSockets = listen, "127.0.0.1:0", 1
		srv, err := New(cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Listen(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { srv.Run(ctx, nil); close(done) }()
		srv.Router().Publish(benchState())
		return srv, func() { cancel(); <-done }
	}
	old, stopOld := start("127.0.0.1:0")
	addr := old.Addr()
	ask := func(when string) {
		t.Helper()
		for _, network := range []string{"udp", "tcp"} {
			for i := 0; i < 4; i++ {
				r, _, err := (&dns.Client{Net: network, Timeout: 5 * time.Second}).Exchange(question("acme.example.test.", dns.TypeA), addr)
				if err != nil || len(r.Answer) != 14 {
					t.Fatalf("%s, %s: %v %v", when, network, err, r)
				}
			}
		}
	}
	ask("old alone")
	_, stopNew := start(addr)
	defer stopNew()
	ask("both")
	stopOld()
	ask("new alone")
}
