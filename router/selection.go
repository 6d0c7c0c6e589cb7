package router

import (
	"fmt"
	"math/rand/v2"
)

// Selector is a load-balancing policy: it picks a usable member of a
// non-empty pool, or returns nil when none is usable. It must not allocate.
type Selector interface {
	Select(p *Pool, tried uint64) *Member
}

var (
	_ Selector = RoundRobin{}
	_ Selector = LeastRequest{}
)

// Policy names accepted in configuration.
const (
	PolicyRoundRobin   = "round_robin"
	PolicyLeastRequest = "least_request"
)

// SelectorFor returns the policy named name ("" means round_robin).
func SelectorFor(name string) (Selector, error) {
	switch name {
	case "", PolicyRoundRobin:
		return RoundRobin{}, nil
	case PolicyLeastRequest:
		return LeastRequest{}, nil
	}
	return nil, fmt.Errorf("unknown policy %q (want %s or %s)", name, PolicyRoundRobin, PolicyLeastRequest)
}

// RoundRobin is smooth weighted round robin over Consul's Weights.Passing.
// The order is precomputed per snapshot; the request path only advances a
// shared atomic cursor, skipping members that are tried or ejected.
type RoundRobin struct{}

func (RoundRobin) Select(p *Pool, tried uint64) *Member {
	n := uint32(len(p.schedule))
	start := p.cursor.Add(1)
	var panicState int8
	for i := uint32(0); i < n; i++ {
		idx := int(p.schedule[(start+i)%n])
		if p.usable(idx, tried, &panicState) {
			return p.members[idx]
		}
	}
	return nil
}

// LeastRequest picks two members at random and keeps the one with fewer
// requests in flight per unit of weight ("power of two choices"), falling
// back to a scan when both are unusable.
type LeastRequest struct{}

func (LeastRequest) Select(p *Pool, tried uint64) *Member {
	n := len(p.members)
	var panicState int8
	if n == 1 {
		if p.usable(0, tried, &panicState) {
			return p.members[0]
		}
		return nil
	}
	a := rand.IntN(n)
	b := rand.IntN(n - 1)
	if b >= a {
		b++
	}
	okA, okB := p.usable(a, tried, &panicState), p.usable(b, tried, &panicState)
	switch {
	case okA && okB:
		ma, mb := p.members[a], p.members[b]
		// Compare inflight/weight without division.
		if ma.InFlight()*int64(mb.Weight) <= mb.InFlight()*int64(ma.Weight) {
			return ma
		}
		return mb
	case okA:
		return p.members[a]
	case okB:
		return p.members[b]
	}
	for i := range n {
		j := (a + i) % n
		if p.usable(j, tried, &panicState) {
			return p.members[j]
		}
	}
	return nil
}
