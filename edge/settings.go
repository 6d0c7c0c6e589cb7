package edge

import (
	"net/netip"

	"github.com/podedge/podedge/router"
	"strconv"
	"time"
)

// Settings are the proxy's values that a configuration reload may change
// while it serves. Proxy.SetSettings publishes them whole, so that a
// request reads one consistent set without a lock.
type Settings struct {
	Timeouts Timeouts
	Limits   Limits
	Retries  Retries
	// RetryAfter is the Retry-After of a 503. Zero means 5s.
	RetryAfter time.Duration
	// TrustedProxies: see Proxy.TrustedProxies.
	TrustedProxies []netip.Prefix
	// TenantLimits: see Proxy.TenantLimits.
	TenantLimits TenantLimits
}

// live are Settings with what the proxy derives from them.
type live struct {
	Settings
	retryAfter []byte
	budget     *retryBudget
	// tenantDefault is TenantLimits' limits; nil when it sets none.
	tenantDefault *router.Limits
}

// fill gives zero fields DefaultConfig's values.
func (s *Settings) fill() {
	d := DefaultConfig()
	fill := func(dst *time.Duration, def time.Duration) {
		if *dst == 0 {
			*dst = def
		}
	}
	t := &s.Timeouts
	fill(&t.Dial, d.Timeouts.Dial)
	fill(&t.ResponseHeader, d.Timeouts.ResponseHeader)
	fill(&t.UpstreamIdle, d.Timeouts.UpstreamIdle)
	fill(&t.UpstreamKeepalive, d.Timeouts.UpstreamKeepalive)
	fill(&t.ClientHeader, d.Timeouts.ClientHeader)
	fill(&t.ClientBody, d.Timeouts.ClientBody)
	fill(&t.ClientWrite, d.Timeouts.ClientWrite)
	fill(&t.ClientIdle, d.Timeouts.ClientIdle)
	fill(&t.WebSocketIdle, d.Timeouts.WebSocketIdle)
	if s.Limits.MaxHeaderBytes == 0 {
		s.Limits.MaxHeaderBytes = d.Limits.MaxHeaderBytes
	}
	if s.Limits.BufferBytes == 0 {
		s.Limits.BufferBytes = d.Limits.BufferBytes
	}
	if s.Limits.MaxConnsPerEndpoint == 0 {
		s.Limits.MaxConnsPerEndpoint = d.Limits.MaxConnsPerEndpoint
	}
	if s.Retries == (Retries{}) {
		s.Retries = d.Retries
	}
	fill(&s.Retries.BudgetWindow, d.Retries.BudgetWindow)
	fill(&s.RetryAfter, d.RetryAfter)
	if s.TenantLimits == (TenantLimits{}) {
		s.TenantLimits.QueueTimeout = d.TenantLimits.QueueTimeout
	}
}

// cur is the settings in force.
func (p *Proxy) cur() *live { return p.live.Load() }

// SetSettings makes s the proxy's settings for the requests that start
// from now on; requests in flight finish with the settings they started
// with. The retry budget carries over unless its parameters change.
// Settings that size buffers or pools (limits.max_header_bytes,
// buffer_bytes, max_conns_per_endpoint, timeouts.upstream_keepalive) and
// the server's client timeouts are read when connections open: the edge
// refuses to reload them (LiveKeys).
func (p *Proxy) SetSettings(s Settings) {
	p.init()
	p.store(s)
}

func (p *Proxy) store(s Settings) {
	s.fill()
	l := &live{Settings: s}
	if tl := s.TenantLimits.limits(); tl != (router.Limits{}) {
		l.tenantDefault = &tl
	}
	l.retryAfter = strconv.AppendInt(nil, int64((s.RetryAfter+time.Second-1)/time.Second), 10)
	r := s.Retries
	if old := p.live.Load(); old != nil && old.Retries.BudgetRatio == r.BudgetRatio &&
		old.Retries.BudgetMinPerSecond == r.BudgetMinPerSecond && old.Retries.BudgetWindow == r.BudgetWindow {
		l.budget = old.budget
	} else {
		l.budget = newRetryBudget(r.BudgetRatio, r.BudgetMinPerSecond, r.BudgetWindow, time.Now)
	}
	p.live.Store(l)
}

// LiveKeys are the keys of the edge's configuration that a reload (SIGHUP)
// may change; a change to any other is refused.
var LiveKeys = []string{
	"log.level",
	"timeouts.dial", "timeouts.response_header", "timeouts.upstream_idle",
	"timeouts.client_body", "timeouts.websocket_idle",
	"retries", "retry_after", "trusted_proxies", "tenant_limits",
}

// Reconfigure applies the live keys of cfg, which a reload validated.
func (e *Edge) Reconfigure(cfg Config) {
	trusted, _ := ParsePrefixes(cfg.TrustedProxies)
	e.proxy.SetSettings(Settings{
		Timeouts:       cfg.Timeouts,
		Limits:         cfg.Limits,
		Retries:        cfg.Retries,
		RetryAfter:     cfg.RetryAfter,
		TrustedProxies: trusted,
		TenantLimits:   cfg.TenantLimits,
	})
}
