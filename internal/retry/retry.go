// Package retry holds the waits between attempts that every Consul loop of
// podedge shares: an exponential backoff with jitter, and a sleep that ends
// with its context.
package retry

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is the wait after the n-th failure in a row (n ≥ 1): base,
// doubling with each failure, up to maxWait, with up to a quarter taken off
// at random so that many processes retrying the same agent do not do it in
// step.
func Backoff(base, maxWait time.Duration, n int) time.Duration {
	d := base
	for i := 1; i < n && d < maxWait; i++ {
		d *= 2
	}
	d = min(d, maxWait)
	if d <= 0 {
		return 0
	}
	return d - time.Duration(rand.Int64N(int64(d/4)+1))
}

// Sleep waits d, or until ctx ends, and reports whether ctx is still live.
// A d of zero or less does not wait.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
