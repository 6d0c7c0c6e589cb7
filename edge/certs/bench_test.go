package certs

import (
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"

	"github.com/valyala/fasthttp"
)

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// BenchmarkGetCertificate is the handshake's certificate lookup for a name
// whose certificate is in memory, by the way it is chosen: a tenant
// hostname (the zone's certificate; the operators' maps looked up first,
// empty or not), a custom domain's own, an operator's by exact name and by
// wildcard.
func BenchmarkGetCertificate(b *testing.B) {
	for _, bc := range []struct {
		name, sni string
		operators bool
	}{
		{"zone", "acme.example.test", false},
		{"zone/mixed-case", "ACME.Example.Test", false},
		{"zone/with-operators", "acme.example.test", true},
		{"custom-domain", "shop.acme.com", false},
		{"operator/exact", "www.operator.example", true},
		{"operator/wildcard", "api.operator.example", true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			m, _ := newUnitManager(b, nil)
			holdZone(b, m)
			hold(b, m, "shop.acme.com")
			if bc.operators {
				holdOperator(b, m, "www.operator.example")
				holdOperator(b, m, "*.operator.example")
			}
			hello := &tls.ClientHelloInfo{ServerName: bc.sni}
			b.ReportAllocs()
			for b.Loop() {
				if c, err := m.getCertificate(hello); c == nil || err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkHTTPHook is the hook on a plain-HTTP request: a redirect, and a
// request it leaves to the proxy (from another edge).
func BenchmarkHTTPHook(b *testing.B) {
	for _, bc := range []struct {
		name, peer string
		answered   bool
	}{
		{"redirect", "203.0.113.1", true},
		{"pass", "192.0.2.10", false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			m, _ := newUnitManager(b, nil)
			var req fasthttp.Request
			req.SetRequestURI("/some/path?q=1")
			req.Header.SetHost("acme.example.test")
			ctx := &fasthttp.RequestCtx{}
			ctx.Init(&req, &net.TCPAddr{IP: net.ParseIP(bc.peer), Port: 40000}, nil)
			b.ReportAllocs()
			for b.Loop() {
				ctx.Response.Reset()
				if m.HTTPHook(ctx) != bc.answered {
					b.Fatal("unexpected outcome")
				}
			}
		})
	}
}
