package dnsd

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/bits"
	"net/netip"
	"sync/atomic"
	"time"
)

// DNS cookies (RFC 7873) with interoperable server cookies (RFC 9018): a
// client that sends back the server cookie it was given proves that it
// receives answers at its address, so its queries are not spoofed and
// response rate limiting leaves it alone.

const (
	optionCookie      = 10
	clientCookieLen   = 8
	serverCookieLen   = 16 // version, reserved, timestamp, hash (RFC 9018)
	cookieVersion     = 1
	maxCookieOptLen   = 40
	cookieRefreshSecs = 30 * 60 // a server cookie older than this is replaced
	cookiePastSecs    = 60 * 60 // one older than this is not valid any more
	cookieFutureSecs  = 5 * 60  // nor one from further in the future
)

// cookieJar makes and checks server cookies with one secret. Servers that
// answer for the same address (anycast) must share it.
type cookieJar struct {
	k0, k1 uint64
	clock  *coarseClock
}

// newCookieJar returns a jar with secret, 16 bytes in hex; empty makes a
// random one, which cookies issued before a restart then fail.
func newCookieJar(secret string, clock *coarseClock) (*cookieJar, error) {
	var key [16]byte
	if secret == "" {
		rand.Read(key[:])
	} else {
		b, err := hex.DecodeString(secret)
		if err != nil || len(b) != 16 {
			return nil, fmt.Errorf("must be 16 bytes in hex (32 digits)")
		}
		copy(key[:], b)
	}
	return &cookieJar{k0: binary.LittleEndian.Uint64(key[:8]), k1: binary.LittleEndian.Uint64(key[8:]), clock: clock}, nil
}

// cookieState is what a query's COOKIE option held.
type cookieState uint8

const (
	cookieNone    cookieState = iota // no COOKIE option
	cookieClient                     // a client cookie alone, or a server cookie that is not ours or too old
	cookieValid                      // a server cookie we issued, fresh: the client proved its address
	cookieRenewed                    // valid but due for replacement
	// cookieMalformed counts options of a wrong length (FORMERR); no
	// query is left in this state.
	cookieMalformed
)

// cookieStateNames label dnsd_cookie_queries_total, by cookieState.
var cookieStateNames = [...]string{"none", "new", "valid", "renewed", "malformed"}

// check reads the option data opt (client cookie, then perhaps a server
// cookie) of a query from addr.
func (j *cookieJar) check(opt []byte, addr netip.Addr) cookieState {
	if len(opt) != clientCookieLen+serverCookieLen || opt[8] != cookieVersion || opt[9]|opt[10]|opt[11] != 0 {
		return cookieClient
	}
	ts := binary.BigEndian.Uint32(opt[12:])
	now := j.clock.unix()
	age := int64(int32(uint32(now) - ts)) // serial arithmetic: wraps in 2106
	if age > cookiePastSecs || age < -cookieFutureSecs {
		return cookieClient
	}
	if binary.BigEndian.Uint64(opt[16:]) != j.hash(opt[:8], ts, addr) {
		return cookieClient
	}
	if age > cookieRefreshSecs {
		return cookieRenewed
	}
	return cookieValid
}

// make writes into dst (24 bytes) the COOKIE option data of the answer to
// a query whose option data is opt: its client cookie and a server cookie.
// A valid fresh server cookie is sent back as it came.
func (j *cookieJar) make(dst *[clientCookieLen + serverCookieLen]byte, opt []byte, state cookieState, addr netip.Addr) {
	copy(dst[:], opt[:clientCookieLen])
	if state == cookieValid {
		copy(dst[8:], opt[8:24])
		return
	}
	ts := uint32(j.clock.unix())
	dst[8], dst[9], dst[10], dst[11] = cookieVersion, 0, 0, 0
	binary.BigEndian.PutUint32(dst[12:], ts)
	binary.BigEndian.PutUint64(dst[16:], j.hash(opt[:8], ts, addr))
}

// hash is the hash of a server cookie (RFC 9018 section 4.4): SipHash-2-4
// over the client cookie, version, reserved bytes, timestamp and the
// client's address.
func (j *cookieJar) hash(client []byte, ts uint32, addr netip.Addr) uint64 {
	var msg [8 + 8 + 16]byte
	copy(msg[:8], client)
	msg[8] = cookieVersion
	binary.BigEndian.PutUint32(msg[12:], ts)
	n := 16
	if addr.Is4() {
		a := addr.As4()
		n += copy(msg[16:], a[:])
	} else {
		a := addr.As16()
		n += copy(msg[16:], a[:])
	}
	return sipHash24(j.k0, j.k1, msg[:n])
}

// sipHash24 is SipHash-2-4 (Aumasson and Bernstein), which RFC 9018 names
// for server cookies so that servers of different make can share them.
func sipHash24(k0, k1 uint64, m []byte) uint64 {
	v0 := k0 ^ 0x736f6d6570736575
	v1 := k1 ^ 0x646f72616e646f6d
	v2 := k0 ^ 0x6c7967656e657261
	v3 := k1 ^ 0x7465646279746573
	b := uint64(len(m)) << 56
	for len(m) >= 8 {
		w := binary.LittleEndian.Uint64(m)
		v3 ^= w
		v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
		v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
		v0 ^= w
		m = m[8:]
	}
	for i, c := range m {
		b |= uint64(c) << (8 * i)
	}
	v3 ^= b
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0 ^= b
	v2 ^= 0xff
	for range 4 {
		v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	}
	return v0 ^ v1 ^ v2 ^ v3
}

func sipRound(v0, v1, v2, v3 uint64) (uint64, uint64, uint64, uint64) {
	v0 += v1
	v1 = bits.RotateLeft64(v1, 13)
	v1 ^= v0
	v0 = bits.RotateLeft64(v0, 32)
	v2 += v3
	v3 = bits.RotateLeft64(v3, 16)
	v3 ^= v2
	v0 += v3
	v3 = bits.RotateLeft64(v3, 21)
	v3 ^= v0
	v2 += v1
	v1 = bits.RotateLeft64(v1, 17)
	v1 ^= v2
	v2 = bits.RotateLeft64(v2, 32)
	return v0, v1, v2, v3
}

// coarseClock is the time in whole seconds, read by every query for rate
// limiting and cookies without a system call: run keeps it current; until
// it runs (tests), it reads the system clock.
type coarseClock struct {
	now atomic.Int64 // Unix seconds; 0 when not running
	// set, when not nil, replaces the system clock (tests).
	set func() int64
}

func (c *coarseClock) unix() int64 {
	if s := c.now.Load(); s != 0 {
		return s
	}
	if c.set != nil {
		return c.set()
	}
	return time.Now().Unix()
}

// run updates the clock ten times a second until done is closed.
func (c *coarseClock) run(done <-chan struct{}) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		if c.set != nil {
			c.now.Store(c.set())
		} else {
			c.now.Store(time.Now().Unix())
		}
		select {
		case <-done:
			c.now.Store(0)
			return
		case <-t.C:
		}
	}
}
