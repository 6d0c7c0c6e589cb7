package edge

import (
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// retryBudget caps retries at a share of the requests seen over a sliding
// window, plus a small floor so that a quiet edge can still retry, as
// Linkerd's retry budgets do (ratio 0.2, 10 per second, 10s). When a whole
// pod fails, retries then add at most that share to its load instead of
// multiplying it: no retry storm.
//
// The window is a ring of one-second buckets; recording a request is one
// atomic add on the current bucket (and a reset when a bucket rolls over).
type retryBudget struct {
	ratio   float64
	floor   float64 // retries allowed per second regardless of traffic
	buckets []budgetBucket
	now     func() time.Time
}

type budgetBucket struct {
	second   atomic.Int64
	requests atomic.Int64
	retries  atomic.Int64
	_        [40]byte // keep buckets on their own cache lines
}

func newRetryBudget(ratio, minPerSecond float64, window time.Duration, now func() time.Time) *retryBudget {
	n := max(int(window/time.Second), 1)
	return &retryBudget{ratio: ratio, floor: minPerSecond * float64(n), buckets: make([]budgetBucket, n), now: now}
}

// bucket returns the bucket of the current second, resetting it when it last
// served an older second.
func (b *retryBudget) bucket(sec int64) *budgetBucket {
	bk := &b.buckets[sec%int64(len(b.buckets))]
	if old := bk.second.Load(); old != sec && bk.second.CompareAndSwap(old, sec) {
		bk.requests.Store(0)
		bk.retries.Store(0)
	}
	return bk
}

// request records a request that may need a retry.
func (b *retryBudget) request(now time.Time) {
	b.bucket(now.Unix()).requests.Add(1)
}

// withdraw reports whether one more retry fits in the budget and, if so,
// records it.
func (b *retryBudget) withdraw(now time.Time) bool {
	sec := now.Unix()
	var requests, retries int64
	oldest := sec - int64(len(b.buckets)) + 1
	for i := range b.buckets {
		bk := &b.buckets[i]
		if s := bk.second.Load(); s >= oldest && s <= sec {
			requests += bk.requests.Load()
			retries += bk.retries.Load()
		}
	}
	if float64(retries) >= b.floor+b.ratio*float64(requests) {
		return false
	}
	b.bucket(sec).retries.Add(1)
	return true
}

// idempotent reports whether a failed request may be sent again to another
// endpoint once it may have reached the first one: GET, HEAD and OPTIONS
// (RFC 9110, section 9.2.2, less PUT and DELETE, whose replays some
// applications do not expect).
func idempotent(h *fasthttp.RequestHeader) bool {
	return h.IsGet() || h.IsHead() || h.IsOptions()
}
