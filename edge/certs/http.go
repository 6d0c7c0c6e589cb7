package certs

import (
	"bytes"
	"net/netip"
	"strconv"

	"github.com/valyala/fasthttp"
)

// challengePath is where HTTP-01 challenges are asked for (RFC 8555
// section 8.3).
const challengePath = "/.well-known/acme-challenge/"

var challengePrefix = []byte(challengePath)

// HTTPHook sees every plain-HTTP request before the proxy (the edge's
// Options.HTTPHook) and reports whether it answered it:
//
//   - /.well-known/acme-challenge/<token> for a known host is answered with
//     the key authorization that any edge provisioned (404 when none), so
//     that the edge the CA reaches need not be the one that ordered;
//   - with Redirect, any other request for a known host gets 308 to https,
//     same host, path and query, on RedirectPort; except requests from
//     another edge, which forwards to this pod's edges over plain HTTP
//     what its own clients sent, HTTPS included, and must not be bounced.
//
// Unknown hosts are left to the proxy. The redirect allocates nothing.
func (m *Manager) HTTPHook(ctx *fasthttp.RequestCtx) bool {
	path := ctx.Path()
	if bytes.HasPrefix(path, challengePrefix) {
		if _, ok := m.snapshot().Lookup(ctx.Host()); !ok {
			return false
		}
		if v, ok := m.challenges.httpToken(string(path[len(challengePrefix):])); ok {
			ctx.SetStatusCode(fasthttp.StatusOK)
			ctx.SetContentType("application/octet-stream")
			ctx.SetBody(v)
			return true
		}
		ctx.Error("no such ACME challenge\n", fasthttp.StatusNotFound)
		return true
	}
	if !m.cfg.Redirect {
		return false
	}
	host := ctx.Host()
	if _, ok := m.snapshot().Lookup(host); !ok || m.fromEdge(ctx) {
		return false
	}
	if i := bytes.IndexByte(host, ':'); i >= 0 {
		host = host[:i]
	}
	bp := m.locBufs.Get().(*[]byte)
	b := append((*bp)[:0], "https://"...)
	b = append(b, host...)
	if p := m.cfg.RedirectPort; p != 0 && p != 443 {
		b = append(b, ':')
		b = strconv.AppendInt(b, int64(p), 10)
	}
	b = append(b, ctx.URI().RequestURI()...)
	ctx.Response.Header.SetBytesV("Location", b)
	*bp = b
	m.locBufs.Put(bp)
	ctx.SetStatusCode(fasthttp.StatusPermanentRedirect)
	return true
}

// fromEdge reports whether the request comes from an edge in the snapshot.
func (m *Manager) fromEdge(ctx *fasthttp.RequestCtx) bool {
	ip, ok := netip.AddrFromSlice(ctx.RemoteIP())
	if !ok {
		return false
	}
	_, ok = (*m.edgeIPs.Load())[ip.Unmap()]
	return ok
}
