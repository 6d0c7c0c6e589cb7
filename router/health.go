package router

import (
	"fmt"
	"sync/atomic"
	"time"
)

// PassiveHealth configures how the data plane's own observations eject an
// endpoint. The zero value is not usable; start from DefaultPassiveHealth.
type PassiveHealth struct {
	// MaxFails consecutive failures eject an endpoint. 0 disables ejection.
	MaxFails int `yaml:"max_fails"`
	// BaseEjection is how long the first ejection lasts. Each ejection that
	// follows without a recovery in between doubles it, up to MaxEjection.
	BaseEjection time.Duration `yaml:"base_ejection"`
	// MaxEjection caps the ejection time.
	MaxEjection time.Duration `yaml:"max_ejection"`
	// PanicThreshold is the share of a pool (0..1) that may be ejected. When
	// more would be ejected, the pool routes to all its endpoints rather than
	// to too few or none, as Envoy's panic mode does.
	PanicThreshold float64 `yaml:"panic_threshold"`
}

// DefaultPassiveHealth is what an operator gets without configuration.
func DefaultPassiveHealth() PassiveHealth {
	return PassiveHealth{
		MaxFails:       3,
		BaseEjection:   5 * time.Second,
		MaxEjection:    2 * time.Minute,
		PanicThreshold: 0.5,
	}
}

// Validate names the first field that is out of range.
func (h PassiveHealth) Validate() error {
	switch {
	case h.MaxFails < 0:
		return fmt.Errorf("max_fails: %d is negative", h.MaxFails)
	case h.MaxFails > 0 && h.BaseEjection <= 0:
		return fmt.Errorf("base_ejection: must be positive, got %s", h.BaseEjection)
	case h.MaxEjection < h.BaseEjection:
		return fmt.Errorf("max_ejection: %s is shorter than base_ejection %s", h.MaxEjection, h.BaseEjection)
	case h.PanicThreshold < 0 || h.PanicThreshold > 1:
		return fmt.Errorf("panic_threshold: %v is outside [0, 1]", h.PanicThreshold)
	}
	return nil
}

// EndpointState is the live state of one endpoint address. It is shared by
// every snapshot that routes to the address, so ejections, in-flight counts
// and attachments survive snapshot swaps. All fields are atomics.
type EndpointState struct {
	addr  string
	value any // attached by Registry.NewValue at creation, never changed

	inflight     atomic.Int64
	fails        atomic.Int32 // consecutive failures
	ejections    atomic.Int32 // ejections since the last recovery
	ejectedUntil atomic.Int64 // unix nanoseconds; 0 when not ejected
	lastEjectEnd atomic.Int64 // unix nanoseconds; end of the latest ejection
	requests     atomic.Uint64
	failures     atomic.Uint64
}

// Value is what the data plane attached to the address (for the edge, its
// connection pool). It is nil when no Registry.NewValue hook was set.
func (s *EndpointState) Value() any { return s.value }

// InFlight is the number of requests started and not yet done.
func (s *EndpointState) InFlight() int64 { return s.inflight.Load() }

// EjectedUntil is the end of the current ejection, or the zero time.
func (s *EndpointState) EjectedUntil(now time.Time) time.Time {
	u := s.ejectedUntil.Load()
	if u == 0 || now.UnixNano() >= u {
		return time.Time{}
	}
	return time.Unix(0, u)
}

// available reports whether the endpoint is not ejected. It reads the clock
// only while an ejection is recorded, so the steady state costs one load.
func (s *EndpointState) available(clock func() time.Time) bool {
	u := s.ejectedUntil.Load()
	return u == 0 || clock().UnixNano() >= u
}

// success records a good outcome: the failure streak ends, an expired
// ejection is cleared so that later picks skip the clock, and the backoff
// resets once the endpoint has stayed healthy for BaseEjection after its last
// ejection ended. The steady state is three atomic loads and one add.
func (s *EndpointState) success(h *PassiveHealth, clock func() time.Time) {
	s.requests.Add(1)
	if s.fails.Load() != 0 {
		s.fails.Store(0)
	}
	if s.ejections.Load() == 0 {
		return
	}
	now := clock().UnixNano()
	if u := s.ejectedUntil.Load(); u != 0 {
		if now < u {
			return // a request that started before the ejection
		}
		s.ejectedUntil.CompareAndSwap(u, 0)
	}
	if now-s.lastEjectEnd.Load() >= int64(h.BaseEjection) {
		s.ejections.Store(0)
	}
}

// failure records a bad outcome and reports whether it ejected the endpoint.
func (s *EndpointState) failure(h *PassiveHealth, clock func() time.Time) bool {
	s.requests.Add(1)
	s.failures.Add(1)
	if h.MaxFails <= 0 {
		return false
	}
	if s.fails.Add(1) < int32(h.MaxFails) {
		return false
	}
	now := clock().UnixNano()
	u := s.ejectedUntil.Load()
	if u != 0 && now < u {
		return false // already ejected; a late failure of an earlier request
	}
	k := s.ejections.Load() + 1
	d := h.BaseEjection
	for i := int32(1); i < k && d < h.MaxEjection; i++ {
		d *= 2
	}
	d = min(d, h.MaxEjection)
	if !s.ejectedUntil.CompareAndSwap(u, now+int64(d)) {
		return false // another goroutine ejected it first
	}
	s.ejections.Store(k)
	s.lastEjectEnd.Store(now + int64(d))
	s.fails.Store(0)
	return true
}

// eject removes the endpoint from rotation for d, whatever its failure count;
// tests and operators' tooling use it.
func (s *EndpointState) eject(now time.Time, d time.Duration) {
	end := now.Add(d).UnixNano()
	s.ejections.Add(1)
	s.ejectedUntil.Store(end)
	s.lastEjectEnd.Store(end)
}
