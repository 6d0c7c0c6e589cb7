package loopforwarder

import "time"

// Timeouts, as the fasthttp forwarder's: a request must arrive within
// readTimeout once begun and a response within it once the request is
// sent; a client may stay idle between requests for idleTimeout, and an
// upstream connection in the pool for upstreamIdle; a response must be
// taken within writeTimeout.
type Timeouts struct {
	Read, Write, Idle, UpstreamIdle time.Duration
}

// DefaultTimeouts are the fasthttp forwarder's.
var DefaultTimeouts = Timeouts{Read: 60 * time.Second, Write: 60 * time.Second, Idle: 120 * time.Second, UpstreamIdle: 30 * time.Second}
