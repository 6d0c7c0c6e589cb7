package certs

import (
	"crypto/tls"
	"fmt"
	"testing"
	"time"

	"github.com/podedge/podedge/internal/consultest"
	"github.com/prometheus/client_golang/prometheus"
)

// TestSessionResumesOnAnotherEdge: a client that got a session ticket from
// one edge resumes its session on another (TLS 1.3 and TLS 1.2), because
// every edge uses the ticket keys in Consul.
func TestSessionResumesOnAnotherEdge(t *testing.T) {
	p := newPlatform(t, false)
	a := p.startEdge(edgeIPs[0], nil)
	b := p.startEdge(edgeIPs[1], nil)
	p.waitDNS(acmeHost, a.ip, b.ip)
	if _, _, err := p.get(a, acmeHost, "/"); err != nil {
		t.Fatal(err)
	}
	consultest.WaitFor(t, 10*time.Second, "both edges to use the same ticket key", func() bool {
		ca, cb := a.m.tickets.created.Load(), b.m.tickets.created.Load()
		return ca != 0 && ca == cb
	})
	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			conf := &tls.Config{RootCAs: p.pebble.roots, MaxVersion: v, ClientSessionCache: tls.NewLRUClientSessionCache(4)}
			resp, _, err := p.getWith(a, conf, acmeHost, "/")
			if err != nil {
				t.Fatal(err)
			}
			if resp.TLS.Version != v || resp.TLS.DidResume {
				t.Fatalf("first connection: version %x, resumed %v", resp.TLS.Version, resp.TLS.DidResume)
			}
			resp, body, err := p.getWith(b, conf, acmeHost, "/")
			if err != nil {
				t.Fatal(err)
			}
			if !resp.TLS.DidResume {
				t.Error("the session from edge a did not resume on edge b")
			}
			if resp.StatusCode != 200 || body != "app of pod-1 for acme.example.test/" {
				t.Errorf("resumed request: %d %q", resp.StatusCode, body)
			}
		})
	}
}

// TestTicketKeysRotateOnce: two edges rotate the shared key on schedule;
// each rotation is written by one of them (check-and-set), never both, and
// both install every new key.
func TestTicketKeysRotateOnce(t *testing.T) {
	agent := consultest.Start(t)
	const rotation = time.Second
	var ms []*Manager
	var regs []*prometheus.Registry
	for i := range 2 {
		m, err := New(Config{
			Consul: agent.Client, Holder: fmt.Sprint("edge-", i), TicketRotation: rotation, TicketKeys: 3,
			Logger: testLogger(t, nil),
		})
		if err != nil {
			t.Fatal(err)
		}
		reg := prometheus.NewRegistry()
		if err := m.Register(reg); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { _ = m.Run(t.Context()); close(done) }()
		t.Cleanup(func() { <-done })
		ms, regs = append(ms, m), append(regs, reg)
	}
	var keys *ticketKeys
	consultest.WaitFor(t, 20*time.Second, "four rotations", func() bool {
		p, _, err := agent.Client.KV().Get("podedge/tls/ticket-keys", nil)
		if err != nil || p == nil {
			return false
		}
		k, err := decodeTicketKeys(p.Value)
		if err != nil {
			t.Fatalf("ticket keys in consul: %v", err)
		}
		keys = k
		return metric(t, regs[0], "edge_tls_ticket_key_rotations_total")+metric(t, regs[1], "edge_tls_ticket_key_rotations_total") >= 4
	})
	if len(keys.Keys) != 3 {
		t.Errorf("%d keys kept, want 3", len(keys.Keys))
	}
	for i := 0; i+1 < len(keys.Keys); i++ {
		gap := keys.Keys[i].Created.Sub(keys.Keys[i+1].Created)
		if gap < rotation*9/10 {
			t.Errorf("keys %d and %d were created %s apart: two edges rotated at once", i, i+1, gap)
		}
	}
	consultest.WaitFor(t, 10*time.Second, "both edges to install the newest key", func() bool {
		p, _, err := agent.Client.KV().Get("podedge/tls/ticket-keys", nil)
		if err != nil || p == nil {
			return false
		}
		k, _ := decodeTicketKeys(p.Value)
		want := k.Keys[0].Created.UnixNano()
		return ms[0].tickets.created.Load() == want && ms[1].tickets.created.Load() == want
	})
}
