package edge

import (
	"net/netip"

	"github.com/valyala/fasthttp"
)

// prepareRequest turns the client's request, in place, into the one the
// endpoint receives:
//
//   - hop-by-hop headers go, those named by Connection first; an upgrade
//     keeps Upgrade and gets Connection: Upgrade;
//   - Expect goes, since the edge answered 100-continue itself;
//   - X-Forwarded-For gets the client's address, appended to what a trusted
//     peer sent and replacing what anyone else sent; X-Forwarded-Proto and
//     X-Forwarded-Host are set unless a trusted peer set them, and an
//     untrusted peer's Forwarded is dropped;
//   - X-Request-ID is the client's, when well-formed, or a fresh one;
//   - a request for another pod gets Via: 1.1 podedge;
//   - Host and the request target are sent as the client wrote them.
//
// The body, if any, is wrapped to be streamed (see reqBody).
func (p *Proxy) prepareRequest(ctx *fasthttp.RequestCtx, x *exchange, v *view, local bool) error {
	req := &ctx.Request
	h := &req.Header
	found := x.found
	x.upgrade = found&hUpgrade != 0 && h.ConnectionUpgrade()
	var keep uint32
	if x.upgrade {
		keep = hUpgrade
	}
	x.scratch = removeHopByHop(h, found, keep, x.scratch)
	if x.upgrade {
		h.Set("Connection", "Upgrade")
	}
	if found&hExpect != 0 {
		h.Del("Expect")
	}
	if found&hUnderscored != 0 {
		delUnderscored(h)
	}

	trusted := p.trusted(v, x.peer)
	x.xff = x.xff[:0]
	if found&hXForwardedFor != 0 {
		if trusted {
			for _, prior := range h.PeekAll("X-Forwarded-For") {
				if len(x.xff) > 0 {
					x.xff = append(x.xff, ", "...)
				}
				x.xff = append(x.xff, prior...)
			}
		}
		h.Del("X-Forwarded-For")
	}
	if x.peer.IsValid() {
		if len(x.xff) > 0 {
			x.xff = append(x.xff, ", "...)
		}
		x.xff = x.peer.AppendTo(x.xff)
	}
	if len(x.xff) > 0 {
		h.SetCanonical(keyXForwardedFor, x.xff)
	}
	if !trusted {
		if found&hForwarded != 0 {
			h.Del("Forwarded")
		}
		if found&hXForwardedHost != 0 {
			h.Del("X-Forwarded-Host")
		}
	}
	if !trusted || len(h.Peek("X-Forwarded-Proto")) == 0 {
		if ctx.IsTLS() {
			h.SetCanonical(keyXForwardedProto, protoHTTPS)
		} else {
			h.SetCanonical(keyXForwardedProto, protoHTTP)
		}
	}
	if !trusted || len(h.Peek("X-Forwarded-Host")) == 0 {
		h.SetCanonical(keyXForwardedHost, h.Host())
	}
	h.SetCanonical(keyXRequestID, x.reqID)
	if !local {
		if found&hVia != 0 {
			x.scratch = x.scratch[:0]
			for _, prior := range h.PeekAll("Via") {
				x.scratch = append(x.scratch, prior...)
				x.scratch = append(x.scratch, ", "...)
			}
			x.scratch = append(x.scratch, viaValue...)
			h.Del("Via")
			h.SetCanonical(keyVia, x.scratch)
		} else {
			h.SetCanonical(keyVia, viaBytes)
		}
	}
	if !h.IsHTTP11() {
		// Keep the endpoint connection alive whatever the client speaks.
		h.SetProtocol("HTTP/1.1")
	}
	req.UseHostHeader = true

	if !req.IsBodyStream() {
		x.hasBody = len(req.Body()) > 0
		return nil
	}
	cl := h.ContentLength()
	if p.cur().Limits.MaxBodyBytes > 0 && int64(cl) > p.cur().Limits.MaxBodyBytes {
		return &clientError{status: fasthttp.StatusRequestEntityTooLarge, err: errBodyTooLarge}
	}
	x.hasBody = cl != 0
	if cl < 0 || cl > prefetched {
		x.body = reqBody{
			src:          req.BodyStream(),
			ctx:          ctx,
			limit:        p.cur().Limits.MaxBodyBytes,
			clientBody:   p.cur().Timeouts.ClientBody,
			upstreamIdle: p.cur().Timeouts.UpstreamIdle,
		}
		req.SetBodyStream(&x.body, cl)
	}
	return nil
}

// Header names in fasthttp's canonical form, and values, set on every
// request: SetCanonical skips normalising the name each time.
var (
	keyXForwardedFor   = []byte("X-Forwarded-For")
	keyXForwardedProto = []byte("X-Forwarded-Proto")
	keyXForwardedHost  = []byte("X-Forwarded-Host")
	keyXRequestID      = []byte("X-Request-Id")
	keyVia             = []byte("Via")
	protoHTTP          = []byte("http")
	protoHTTPS         = []byte("https")
	viaBytes           = []byte(viaValue)
)

// trusted reports whether the peer's X-Forwarded-* headers are kept: it is a
// configured trusted proxy or an edge in the snapshot.
func (p *Proxy) trusted(v *view, peer netip.Addr) bool {
	if !peer.IsValid() {
		return false
	}
	for _, pre := range p.cur().TrustedProxies {
		if pre.Contains(peer) {
			return true
		}
	}
	_, ok := v.edges[peer]
	return ok
}
