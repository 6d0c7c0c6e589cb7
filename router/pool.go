package router

import (
	"sync/atomic"
	"time"
)

// Member is one endpoint of a pool: its configuration from the snapshot and a
// pointer to its live state in the Registry. A Member must not be modified.
type Member struct {
	Endpoint
	*EndpointState
	pool  *Pool
	index int
}

// Bit is the member's bit in Pool.Pick's tried set (0 past the 64th member).
func (m *Member) Bit() uint64 {
	if m.index < 64 {
		return 1 << m.index
	}
	return 0
}

// Begin counts a request to the member as in flight; call Done (or one of
// Success and Failure, which call it) when the request ends.
func (m *Member) Begin() { m.inflight.Add(1) }

// Done ends an in-flight request without judging it (for example, a request
// the client cancelled).
func (m *Member) Done() { m.inflight.Add(-1) }

// Success ends an in-flight request that the endpoint served well.
func (m *Member) Success() {
	m.inflight.Add(-1)
	m.success(m.pool.health, m.pool.clock)
}

// Failure ends an in-flight request that failed because of the endpoint and
// reports whether this failure ejected it.
func (m *Member) Failure() (ejected bool) {
	m.inflight.Add(-1)
	return m.failure(m.pool.health, m.pool.clock)
}

// Available reports whether passive health lets the member take traffic.
func (m *Member) Available() bool { return m.available(m.pool.clock) }

// Pool balances requests over the passing endpoints of one service in one
// pod. The member list is immutable; the cursor and the member states are
// shared with the pools of later snapshots through the Registry.
type Pool struct {
	members  []*Member
	schedule []uint32 // smooth weighted round-robin order of member indexes
	cursor   *atomic.Uint32
	selector Selector
	health   *PassiveHealth
	clock    func() time.Time
}

// Members returns the pool's endpoints. The slice must not be modified.
func (p *Pool) Members() []*Member {
	if p == nil {
		return nil
	}
	return p.members
}

// Len is the number of endpoints in the pool.
func (p *Pool) Len() int {
	if p == nil {
		return 0
	}
	return len(p.members)
}

// Pick returns the endpoint for the next request, or nil when the pool is
// empty or every endpoint is in tried or ejected (outside panic mode).
// tried is a bit set of member indexes already attempted by this request
// (see Member.Bit); members past the 64th are never excluded. Pick does not
// allocate.
func (p *Pool) Pick(tried uint64) *Member {
	if p == nil || len(p.members) == 0 {
		return nil
	}
	return p.selector.Select(p, tried)
}

// panicking reports whether more than the panic threshold of the pool is
// ejected, so that the pool should route to every member.
func (p *Pool) panicking() bool {
	ejected := 0
	for _, m := range p.members {
		if !m.available(p.clock) {
			ejected++
		}
	}
	return float64(ejected) > p.health.PanicThreshold*float64(len(p.members))
}

// usable reports whether member i may be picked: not tried, and available
// unless the pool panics. panicState caches the O(n) panic check for one Pick:
// 0 unknown, 1 no, 2 yes.
func (p *Pool) usable(i int, tried uint64, panicState *int8) bool {
	if i < 64 && tried&(1<<i) != 0 {
		return false
	}
	if p.members[i].available(p.clock) {
		return true
	}
	if *panicState == 0 {
		*panicState = 1
		if p.panicking() {
			*panicState = 2
		}
	}
	return *panicState == 2
}

// maxSchedule bounds the precomputed round-robin order; heavier weight sets
// are scaled down to fit, keeping their proportions within rounding.
const maxSchedule = 4096

// smoothSchedule precomputes nginx's smooth weighted round robin: over one
// cycle every member appears weight times, spread out rather than in runs.
func smoothSchedule(weights []int) []uint32 {
	w := make([]int, len(weights))
	total := 0
	g := 0
	for i, x := range weights {
		w[i] = max(x, 1)
		g = gcd(g, w[i])
	}
	for i := range w {
		w[i] /= g
		total += w[i]
	}
	if total > maxSchedule {
		scaled := 0
		for i := range w {
			w[i] = max(1, w[i]*maxSchedule/total)
			scaled += w[i]
		}
		total = scaled
	}
	current := make([]int, len(w))
	out := make([]uint32, 0, total)
	for range total {
		best := 0
		for i := range w {
			current[i] += w[i]
			if current[i] > current[best] {
				best = i
			}
		}
		current[best] -= total
		out = append(out, uint32(best))
	}
	return out
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
