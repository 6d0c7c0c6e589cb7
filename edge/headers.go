package edge

import (
	"bytes"
	"math/rand/v2"
	"net"
	"net/netip"

	"github.com/valyala/fasthttp"
)

// Headers the edge looks for, one bit each. One pass over a head's keys
// finds them all, so that the common request, which holds none of them,
// costs no deletions.
const (
	hConnection uint32 = 1 << iota
	hProxyConnection
	hKeepAlive
	hProxyAuthenticate
	hProxyAuthorization
	hTe
	hTrailer
	hUpgrade
	hXForwardedFor
	hXForwardedProto
	hXForwardedHost
	hForwarded
	hRequestID
	hVia
	hExpect
	// hUnderscored: a name that is one of the above with underscores for
	// its dashes (X_Forwarded_For). Gateways that map names to variables
	// (CGI, WSGI, Rack: HTTP_X_FORWARDED_FOR) read it as the header itself,
	// so it would pass a client's value under the edge's name.
	hUnderscored

	// hopByHop are the hop-by-hop headers of RFC 9110 section 7.6.1 and
	// RFC 2616 section 13.5.1, plus Proxy-Connection, which old clients
	// send in Connection's place. Transfer-Encoding is hop-by-hop too, but
	// fasthttp frames every body itself and never copies it as-is.
	hopByHop = hConnection | hProxyConnection | hKeepAlive | hProxyAuthenticate |
		hProxyAuthorization | hTe | hTrailer | hUpgrade
	// forwarding are the headers a client outside the trusted proxies must
	// not be able to set on the request an app server receives.
	forwarding = hXForwardedFor | hXForwardedProto | hXForwardedHost | hForwarded
)

// headerNames are the canonical names of the bits above, in bit order.
var headerNames = [...]string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Upgrade", "X-Forwarded-For",
	"X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded", "X-Request-Id", "Via", "Expect",
}

// headerBit returns the bit of a header name, or 0.
func headerBit(k []byte) uint32 {
	// Names are compared case-insensitively after a length check, so that
	// most keys cost one switch.
	var cands []int
	switch len(k) {
	case 2:
		cands = idxTe[:]
	case 3:
		cands = idxVia[:]
	case 6:
		cands = idxExpect[:]
	case 7:
		cands = idx7[:]
	case 9:
		cands = idxForwarded[:]
	case 10:
		cands = idx10[:]
	case 12:
		cands = idxRequestID[:]
	case 15:
		cands = idxXFF[:]
	case 16:
		cands = idx16[:]
	case 17:
		cands = idxXFP[:]
	case 18:
		cands = idxProxyAuthenticate[:]
	case 19:
		cands = idxProxyAuthorization[:]
	default:
		return 0
	}
	for _, i := range cands {
		if bytes.EqualFold(k, []byte(headerNames[i])) {
			return 1 << i
		}
	}
	if bytes.IndexByte(k, '_') >= 0 {
		for _, i := range cands {
			if sameButUnderscores(k, headerNames[i]) {
				return hUnderscored
			}
		}
	}
	return 0
}

// sameButUnderscores reports whether k is name, of the same length, with
// any of its dashes written as underscores, case aside.
func sameButUnderscores(k []byte, name string) bool {
	for i := range len(k) {
		c, n := k[i], name[i]
		if c == '_' && n == '-' {
			continue
		}
		if c|0x20 != n|0x20 || c == '_' {
			return false
		}
	}
	return true
}

// delUnderscored deletes the headers of h whose names are the edge's own
// with underscores for dashes (hUnderscored), whoever sent them.
func delUnderscored(h *fasthttp.RequestHeader) {
	var names [][]byte
	for k := range h.All() {
		if headerBit(k) == hUnderscored {
			names = append(names, append([]byte(nil), k...))
		}
	}
	for _, k := range names {
		h.DelBytes(k)
	}
}

// Indexes into headerNames by name length.
var (
	idxTe                 = [...]int{5}
	idxVia                = [...]int{13}
	idxExpect             = [...]int{14}
	idx7                  = [...]int{6, 7}
	idxForwarded          = [...]int{11}
	idx10                 = [...]int{0, 2}
	idxRequestID          = [...]int{12}
	idxXFF                = [...]int{8}
	idx16                 = [...]int{1, 10}
	idxXFP                = [...]int{9}
	idxProxyAuthenticate  = [...]int{3}
	idxProxyAuthorization = [...]int{4}
)

// scanKeys returns the bits of the headers present among keys.
func scanKeys(keys [][]byte) uint32 {
	var found uint32
	for _, k := range keys {
		found |= headerBit(k)
	}
	return found
}

// requestKeys returns the bits of the headers present in a request head.
// It reads the names off the head as received, where PeekKeys would first
// parse every cookie (and the request then be sent with its cookies
// written out again one by one). A head built in place rather than parsed
// has no raw form, and its keys are listed instead.
func requestKeys(h *fasthttp.RequestHeader) uint32 {
	raw := h.RawHeaders()
	if len(raw) == 0 {
		return scanKeys(h.PeekKeys())
	}
	return lineKeys(raw)
}

// headKeys returns the bits of the headers present in a complete head as
// received, its request or status line included.
func headKeys(head []byte) uint32 {
	if i := bytes.IndexByte(head, '\n'); i >= 0 {
		return lineKeys(head[i+1:])
	}
	return 0
}

// lineKeys returns the bits of the header names that start the lines of
// raw, a head's header section.
func lineKeys(raw []byte) uint32 {
	var found uint32
	for len(raw) > 0 {
		line := raw
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			line, raw = raw[:i], raw[i+1:]
		} else {
			raw = nil
		}
		// A name ends at its colon (fasthttp refuses blanks before it). A
		// folded line starts with a blank, so it names nothing here.
		if i := bytes.IndexByte(line, ':'); i > 0 {
			found |= headerBit(line[:i])
		}
	}
	return found
}

// header is what removeHopByHop needs of a request or response head.
type header interface {
	PeekAll(key string) [][]byte
	Del(key string)
	DelBytes(key []byte)
}

// removeHopByHop deletes the hop-by-hop headers present in h (found holds
// their bits): first every header that Connection names, then the fixed
// list, as net/http/httputil does. keep holds bits to leave in place (the
// upgrade path keeps Upgrade). scratch is reused to hold Connection's value
// while its tokens are deleted; the grown buffer is returned.
//
// A Connection token naming Host or a framing header is ignored: deleting
// those would change where or how the message goes, not just what hop
// metadata it carries.
func removeHopByHop(h header, found, keep uint32, scratch []byte) []byte {
	found &= hopByHop &^ keep
	if found == 0 {
		return scratch
	}
	if found&hConnection != 0 {
		scratch = scratch[:0]
		for _, v := range h.PeekAll("Connection") {
			scratch = append(scratch, v...)
			scratch = append(scratch, ',')
		}
		for tok := range bytes.SplitSeq(scratch, []byte{','}) {
			tok = bytes.TrimSpace(tok)
			if len(tok) == 0 || protectedToken(tok) {
				continue
			}
			if keep&hUpgrade != 0 && bytes.EqualFold(tok, []byte("Upgrade")) {
				continue
			}
			h.DelBytes(tok)
		}
	}
	for i := range headerNames {
		if found&(1<<i) != 0 {
			h.Del(headerNames[i])
		}
	}
	return scratch
}

// protectedToken reports whether a Connection token names a header that
// must survive: Host, the framing headers, or a value that is not a header
// name at all (close, keep-alive).
func protectedToken(tok []byte) bool {
	for _, p := range [...]string{"close", "keep-alive", "Host", "Content-Length", "Transfer-Encoding", "Content-Type"} {
		if bytes.EqualFold(tok, []byte(p)) {
			return true
		}
	}
	return false
}

// viaToken is the received-by pseudonym the edge puts in Via when it forwards
// a request to another pod's edge (RFC 9110 section 7.6.3). A request already
// carrying it is never forwarded again.
const (
	viaToken = "podedge"
	viaValue = "1.1 " + viaToken
)

// viaHasEdge reports whether any Via value names an edge as received-by.
func viaHasEdge(values [][]byte) bool {
	for _, v := range values {
		for entry := range bytes.SplitSeq(v, []byte{','}) {
			// entry: protocol SP received-by [SP comment]
			_, by, ok := bytes.Cut(bytes.TrimSpace(entry), []byte{' '})
			by = bytes.TrimSpace(by)
			if i := bytes.IndexAny(by, " \t"); i >= 0 {
				by = by[:i]
			}
			if ok && bytes.EqualFold(by, []byte(viaToken)) {
				return true
			}
		}
	}
	return false
}

// clientAddr is the connection's peer address, or the zero Addr when the
// connection is not TCP (in-memory listeners in tests).
func clientAddr(ctx *fasthttp.RequestCtx) netip.Addr {
	if a, ok := ctx.RemoteAddr().(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

// validRequestID accepts a client's X-Request-ID when it is short visible
// ASCII, so that it cannot smuggle anything into logs or headers.
func validRequestID(id []byte) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for _, c := range id {
		if c < 0x21 || c > 0x7e {
			return false
		}
	}
	return true
}

// appendRequestID appends a fresh request ID: 128 random bits in hex.
// math/rand/v2's global source is ChaCha8 per thread: fast, lock-free and
// unpredictable enough for an identifier that is not a secret.
func appendRequestID(dst []byte) []byte {
	const hexdigits = "0123456789abcdef"
	for range 2 {
		x := rand.Uint64()
		for range 16 {
			dst = append(dst, hexdigits[x>>60])
			x <<= 4
		}
	}
	return dst
}
