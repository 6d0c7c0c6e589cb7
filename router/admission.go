package router

import (
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// TenantState is a tenant's live state in one process: what its limits
// have admitted so far. It survives snapshots (every version of a tenant
// shares its predecessor's), as endpoint state does, so that a change of
// the tenant's domains does not reset its rate. The zero value admits
// everything; its methods are safe for concurrent use and the request path
// ones take no lock and allocate nothing.
type TenantState struct {
	// tat is the theoretical arrival time of the generic cell rate
	// algorithm (GCRA), in nanoseconds of the caller's clock: one word
	// of state per tenant, moved by compare-and-swap.
	tat atomic.Int64
	// inflight counts the requests admitted and not done.
	inflight atomic.Int64
	// waiting counts the requests waiting for a concurrency slot.
	waiting atomic.Int64
	// slow is what only waits, connection counts and refusals touch,
	// made on first use: most tenants never need it, and 100,000 of
	// them would hold it for nothing.
	slow atomic.Pointer[tenantSlow]
}

type tenantSlow struct {
	mu    sync.Mutex
	wake  []*Waiter
	conns map[netip.Addr]int32 // connections per client address
	// Refusals by limit, for the metrics of the top offenders.
	rate, concurrency, connsRefused atomic.Uint64
}

func (s *TenantState) slowPart() *tenantSlow {
	if p := s.slow.Load(); p != nil {
		return p
	}
	s.slow.CompareAndSwap(nil, &tenantSlow{})
	return s.slow.Load()
}

// Refused counts the requests the tenant's limits refused, by limit.
func (s *TenantState) Refused() (rate, concurrency, conns uint64) {
	p := s.slow.Load()
	if p == nil {
		return 0, 0, 0
	}
	return p.rate.Load(), p.concurrency.Load(), p.connsRefused.Load()
}

// State returns the tenant's live state, shared by its versions; nil for
// a tenant that is in no snapshot.
func (t *Tenant) State() *TenantState { return t.state }

// Share is what one edge of a pod with n passing edges admits of limits:
// the rate, burst and concurrency divided by n (each at least one, so that
// a tenant always gets some service), the connections per client address
// as they are (a client connects to one edge at a time).
type Share struct {
	// Interval is the time between two requests at the share's rate;
	// Tolerance how far ahead of it a burst may run. Zero Interval: no
	// rate limit.
	Interval, Tolerance time.Duration
	// Concurrency bounds the requests in flight; 0: no bound.
	Concurrency int64
	// ConnsPerIP bounds one address's connections; 0: no bound.
	ConnsPerIP int32
}

// ShareOf returns one edge's share of l among n passing edges (n < 1
// counts as 1). A burst of 0 means one second at the rate.
func ShareOf(l Limits, n int) Share {
	n = max(n, 1)
	var s Share
	if l.RPS > 0 {
		rate := l.RPS / float64(n)
		burst := float64(l.Burst)
		if burst <= 0 {
			burst = l.RPS
		}
		burst = max(burst/float64(n), 1)
		interval := float64(time.Second) / rate
		s.Interval = time.Duration(min(interval, math.MaxInt64/4))
		s.Tolerance = time.Duration(min((burst-1)*interval, math.MaxInt64/4))
	}
	if l.Concurrency > 0 {
		s.Concurrency = int64(max((l.Concurrency+n-1)/n, 1))
	}
	s.ConnsPerIP = int32(l.ConnsPerIP)
	return s
}

// AdmitRate admits one request at now (nanoseconds of a monotonic clock)
// under the share's rate, or tells how long until one would be admitted.
func (s *TenantState) AdmitRate(now int64, sh *Share) (ok bool, retryAfter time.Duration) {
	if sh.Interval <= 0 {
		return true, 0
	}
	interval, tolerance := int64(sh.Interval), int64(sh.Tolerance)
	for {
		tat := s.tat.Load()
		start := max(tat, now)
		if start-now > tolerance {
			s.slowPart().rate.Add(1)
			return false, time.Duration(start - now - tolerance)
		}
		if s.tat.CompareAndSwap(tat, start+interval) {
			return true, 0
		}
	}
}

// Waiter is a request waiting for a concurrency slot: Wake is called, once,
// when one may be free; the request then asks again (AcquireOrWait).
type Waiter struct {
	Wake   func()
	queued bool
}

// AcquireOrWait takes a concurrency slot of the share, or, when none is
// free and w is not nil, queues w to be woken when one may be. A caller
// that got a slot calls Release when its request is done; one that gives
// up waiting calls Withdraw.
func (s *TenantState) AcquireOrWait(sh *Share, w *Waiter) bool {
	if sh.Concurrency <= 0 {
		return true
	}
	if s.acquire(sh) {
		return true
	}
	if w == nil {
		s.slowPart().concurrency.Add(1)
		return false
	}
	p := s.slowPart()
	p.mu.Lock()
	if !w.queued {
		w.queued = true
		p.wake = append(p.wake, w)
		s.waiting.Add(1)
	}
	p.mu.Unlock()
	// A slot freed before this wait was visible woke no one: look again.
	if s.acquire(sh) {
		s.Withdraw(w)
		return true
	}
	return false
}

func (s *TenantState) acquire(sh *Share) bool {
	if s.inflight.Add(1) <= sh.Concurrency {
		return true
	}
	s.inflight.Add(-1)
	return false
}

// Withdraw takes w out of the queue, if it is still there.
func (s *TenantState) Withdraw(w *Waiter) {
	p := s.slowPart()
	p.mu.Lock()
	defer p.mu.Unlock()
	if !w.queued {
		return
	}
	w.queued = false
	for i, o := range p.wake {
		if o == w {
			p.wake = append(p.wake[:i], p.wake[i+1:]...)
			s.waiting.Add(-1)
			return
		}
	}
}

// GiveUp counts a request refused after waiting for a slot.
func (s *TenantState) GiveUp() { s.slowPart().concurrency.Add(1) }

// Release gives back a slot AcquireOrWait gave, and wakes the longest
// waiter, if any.
func (s *TenantState) Release(sh *Share) {
	if sh.Concurrency <= 0 {
		return
	}
	s.inflight.Add(-1)
	if s.waiting.Load() == 0 {
		return
	}
	p := s.slowPart()
	p.mu.Lock()
	var w *Waiter
	if len(p.wake) > 0 {
		w = p.wake[0]
		p.wake = p.wake[1:]
		w.queued = false
		s.waiting.Add(-1)
	}
	p.mu.Unlock()
	if w != nil {
		w.Wake()
	}
}

// OpenConn counts a connection of addr that sent a request for the
// tenant, or refuses it when the address already holds the share's
// connections. A connection counted is given back with CloseConn.
func (s *TenantState) OpenConn(addr netip.Addr, sh *Share) bool {
	if sh.ConnsPerIP <= 0 {
		return true
	}
	p := s.slowPart()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		p.conns = map[netip.Addr]int32{}
	}
	if p.conns[addr] >= sh.ConnsPerIP {
		p.connsRefused.Add(1)
		return false
	}
	p.conns[addr]++
	return true
}

// CloseConn gives back a connection OpenConn counted.
func (s *TenantState) CloseConn(addr netip.Addr) {
	p := s.slowPart()
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := p.conns[addr] - 1; n > 0 {
		p.conns[addr] = n
	} else {
		delete(p.conns, addr)
	}
}

// Waiting is the requests waiting for a concurrency slot.
func (s *TenantState) Waiting() int64 { return s.waiting.Load() }

// Inflight is the requests admitted and not done.
func (s *TenantState) Inflight() int64 { return s.inflight.Load() }
