package loopforwarder

import (
	"fmt"
	"time"
)

// Timeouts are the forwarder's waits, as the fasthttp forwarder's: a
// request must arrive within Read once begun, and a response within Read
// once the request is sent; a response must be taken within Write; a client
// may stay idle between requests for Idle, and an upstream connection in
// the pool for UpstreamIdle.
type Timeouts struct {
	Read, Write, Idle, UpstreamIdle time.Duration
}

// DefaultTimeouts are the fasthttp forwarder's.
var DefaultTimeouts = Timeouts{Read: 60 * time.Second, Write: 60 * time.Second, Idle: 120 * time.Second, UpstreamIdle: 30 * time.Second}

// check refuses a timeout that is not positive: none of them may be off.
func (t Timeouts) check() error {
	for _, f := range []struct {
		name string
		d    time.Duration
	}{{"read", t.Read}, {"write", t.Write}, {"idle", t.Idle}, {"upstream idle", t.UpstreamIdle}} {
		if f.d <= 0 {
			return fmt.Errorf("%s timeout %s: must be positive", f.name, f.d)
		}
	}
	return nil
}
