package edge

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"
)

// EdgeService is the Consul service name edges register under.
const EdgeService = "edge"

// membership keeps the edge registered in Consul through its local agent:
// service "edge" with Meta.pod and Meta.public_ip, at the address other
// pods' edges forward to, with an HTTP check on the admin /healthz.
type membership struct {
	agent *api.Agent
	reg   *api.AgentServiceRegistration
	log   *slog.Logger
	// every is how often the registration is checked: a restarted agent
	// forgets services registered through its API, and the edge then
	// registers again.
	every time.Duration
}

func newMembership(agent *api.Agent, cfg *Config, advertised, adminAddr string, log *slog.Logger) (*membership, error) {
	host, portStr, err := net.SplitHostPort(advertised)
	if err != nil {
		return nil, fmt.Errorf("register.address: %q is not host:port", advertised)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port <= 0 {
		return nil, fmt.Errorf("register.address: %q has no usable port", advertised)
	}
	meta := map[string]string{"pod": cfg.Pod, "public_ip": cfg.PublicIP}
	if cfg.PublicIPv6 != "" {
		meta["public_ipv6"] = cfg.PublicIPv6
	}
	id := cfg.serviceID(advertised)
	return &membership{
		agent: agent,
		log:   log,
		every: 5 * time.Second,
		reg: &api.AgentServiceRegistration{
			ID:      id,
			Name:    EdgeService,
			Address: host,
			Port:    port,
			Meta:    meta,
			Check: &api.AgentServiceCheck{
				CheckID:                        "service:" + id,
				Name:                           "edge /healthz",
				HTTP:                           "http://" + adminAddr + "/healthz",
				Interval:                       cfg.Register.CheckInterval.String(),
				Timeout:                        cfg.Register.CheckTimeout.String(),
				DeregisterCriticalServiceAfter: cfg.Register.DeregisterCriticalAfter.String(),
			},
		},
	}, nil
}

// ID is the registered service ID.
func (m *membership) ID() string { return m.reg.ID }

// run registers the edge and keeps it registered until ctx ends. Failures
// are logged once, retried with backoff, and their recovery logged.
func (m *membership) run(ctx context.Context) {
	failures := 0
	for {
		err := m.ensure(ctx)
		if ctx.Err() != nil {
			return
		}
		wait := m.every
		switch {
		case err != nil:
			if failures == 0 {
				m.log.Warn("cannot register in consul; retrying", "service_id", m.reg.ID, "error", err.Error())
			}
			failures++
			wait = min(250*time.Millisecond<<min(failures, 6), m.every)
			wait -= time.Duration(rand.Int64N(int64(wait / 4)))
		case failures > 0:
			m.log.Info("registered in consul again", "service_id", m.reg.ID, "after_failures", failures)
			failures = 0
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// ensure registers the service unless the agent already has it.
func (m *membership) ensure(ctx context.Context) error {
	q := (&api.QueryOptions{}).WithContext(ctx)
	if svc, _, err := m.agent.Service(m.reg.ID, q); err == nil && svc != nil {
		return nil
	}
	if err := m.agent.ServiceRegisterOpts(m.reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		return fmt.Errorf("register %s: %w", m.reg.ID, err)
	}
	m.log.Info("registered in consul", "service_id", m.reg.ID, "address", net.JoinHostPort(m.reg.Address, strconv.Itoa(m.reg.Port)),
		"pod", m.reg.Meta["pod"], "public_ip", m.reg.Meta["public_ip"], "check", m.reg.Check.HTTP)
	return nil
}

// deregister removes the service, so that DNS and other pods' edges stop
// sending traffic here.
func (m *membership) deregister(ctx context.Context) error {
	q := (&api.QueryOptions{}).WithContext(ctx)
	if err := m.agent.ServiceDeregisterOpts(m.reg.ID, q); err != nil {
		return fmt.Errorf("deregister %s: %w", m.reg.ID, err)
	}
	return nil
}
