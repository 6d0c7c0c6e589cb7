package router

// maxHostLen is the longest host name (RFC 1035 section 2.3.4).
const maxHostLen = 253

// trimHost drops the port and a trailing dot from a Host header value and
// finds the first upper-case byte (-1 when none). ok is false for values that
// cannot be a host name: empty, too long, or an IPv6 literal.
func trimHost[T string | []byte](host T) (h T, upper int, ok bool) {
	if len(host) == 0 || host[0] == '[' {
		return h, -1, false
	}
	// A host name holds no ':', so the first one starts the port.
	for i := 0; i < len(host); i++ {
		if host[i] == ':' {
			host = host[:i]
			break
		}
	}
	if n := len(host); n > 0 && host[n-1] == '.' {
		host = host[:n-1]
	}
	if len(host) == 0 || len(host) > maxHostLen {
		return h, -1, false
	}
	for i := 0; i < len(host); i++ {
		if c := host[i]; c >= 'A' && c <= 'Z' {
			return host, i, true
		}
	}
	return host, -1, true
}

// lowerInto copies h into buf lower-cased from index upper on, the bytes
// before it being lower case already.
func lowerInto[T string | []byte](buf *[maxHostLen]byte, h T, upper int) []byte {
	n := copy(buf[:], h)
	for i := upper; i < n; i++ {
		if c := buf[i]; c >= 'A' && c <= 'Z' {
			buf[i] = c + ('a' - 'A')
		}
	}
	return buf[:n]
}
