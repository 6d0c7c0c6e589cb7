package leader

import (
	"context"
	"encoding/json"
	"math"
	"net/http"

	"github.com/podedge/podedge/router"
)

// Bounds of a tenant's limits: beyond them a value is a typing error, not
// a limit.
const (
	maxLimitRPS         = 1e6
	maxLimitBurst       = 1 << 24
	maxLimitConcurrency = 1 << 20
	maxLimitConnsPerIP  = 1 << 16
)

type limitsArgs struct {
	name   string
	limits *router.Limits // nil clears them
}

// limitsRequest is the body of PUT /v1/tenants/{name}/limits: every field
// optional, at least one set; pointers tell a zero from an absent field.
type limitsRequest struct {
	RPS         *float64 `json:"rps"`
	Burst       *int     `json:"burst"`
	Concurrency *int     `json:"concurrency"`
	ConnsPerIP  *int     `json:"conns_per_ip"`
}

func (s *Server) parseLimits(r *http.Request, body []byte) (limitsArgs, error) {
	name := r.PathValue("name")
	if err := s.val.tenantLabel(name); err != nil {
		return limitsArgs{}, err
	}
	var req limitsRequest
	if err := decodeJSON(body, &req); err != nil {
		return limitsArgs{}, err
	}
	l, err := req.limits()
	if err != nil {
		return limitsArgs{}, err
	}
	return limitsArgs{name: name, limits: l}, nil
}

func (s *Server) parseClearLimits(r *http.Request, _ []byte) (limitsArgs, error) {
	name := r.PathValue("name")
	if err := s.val.tenantLabel(name); err != nil {
		return limitsArgs{}, err
	}
	return limitsArgs{name: name}, nil
}

// limits validates the request, naming the field that is wrong.
func (req limitsRequest) limits() (*router.Limits, error) {
	if req.RPS == nil && req.Burst == nil && req.Concurrency == nil && req.ConnsPerIP == nil {
		return nil, invalid("limits: set at least one of rps, burst, concurrency, conns_per_ip (DELETE clears them)")
	}
	var l router.Limits
	if req.RPS != nil {
		if v := *req.RPS; math.IsNaN(v) || v <= 0 || v > maxLimitRPS {
			return nil, invalid("rps: %v is outside (0, %g] requests per second", v, maxLimitRPS)
		}
		l.RPS = *req.RPS
	}
	count := func(field string, v *int, max int) (int, error) {
		if v == nil {
			return 0, nil
		}
		if *v < 1 || *v > max {
			return 0, invalid("%s: %d is outside [1, %d]", field, *v, max)
		}
		return *v, nil
	}
	var err error
	if l.Burst, err = count("burst", req.Burst, maxLimitBurst); err != nil {
		return nil, err
	}
	if l.Burst > 0 && l.RPS == 0 {
		return nil, invalid("burst: needs rps, the rate it bursts above")
	}
	if l.Concurrency, err = count("concurrency", req.Concurrency, maxLimitConcurrency); err != nil {
		return nil, err
	}
	if l.ConnsPerIP, err = count("conns_per_ip", req.ConnsPerIP, maxLimitConnsPerIP); err != nil {
		return nil, err
	}
	return &l, nil
}

func (s *Server) setLimits(ctx context.Context, a limitsArgs) (written, error) {
	t, index, err := s.store.SetLimits(ctx, a.name, a.limits)
	if err != nil {
		return written{}, err
	}
	return written{http.StatusOK, s.tenantJSON(t), index}, nil
}

// SetLimits sets (limits nil: clears) a tenant's limits. Setting what is
// there changes nothing.
func (s *Store) SetLimits(ctx context.Context, name string, limits *router.Limits) (router.Tenant, uint64, error) {
	var out router.Tenant
	index, err := s.write(ctx, "set_limits", func(session string) error {
		t, kv, _, err := s.readTenant(ctx, name)
		if err != nil {
			return err
		}
		if (t.Limits == nil && limits == nil) || (t.Limits != nil && limits != nil && *t.Limits == *limits) {
			out = t
			return nil
		}
		t.Limits = limits
		value, err := json.Marshal(t)
		if err != nil {
			return err
		}
		lh, err := s.loadLog(ctx)
		if err != nil {
			return err
		}
		tx := newTxn("set_limits", s.keys, session)
		tx.cas(kv.Key, kv.ModifyIndex, value, nil)
		if _, err := s.commitLogged(ctx, session, tx, lh, tenantChange(name, value)); err != nil {
			return err
		}
		out = t
		return nil
	})
	return out, index, err
}
