package leader

import (
	"context"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/retry"
)

// LeaderState is who leads, as this replica knows it.
type LeaderState struct {
	// Leader is the advertised API address of the replica holding the lock,
	// "" while none does or while it is unknown.
	Leader string
	// IsLeader is true while this replica holds the lock with Session.
	IsLeader bool
	Session  string
}

// Elector runs this replica's side of the leader election: a Consul
// session bound to a TTL check the replica keeps passing, and a lock key it
// competes for with that session. Its methods are safe for concurrent use.
//
// A killed replica stops refreshing its check; CheckTTL later the check is
// critical, Consul invalidates the session and releases the lock, and the
// standbys, blocked on the lock key, compete at once. The session's own TTL
// is only a backstop.
type Elector struct {
	client    *api.Client
	key       string // the lock key
	addr      string // this replica's advertised address, the lock's value
	cfg       Election
	serviceID string
	checkID   string
	log       *slog.Logger
	m         *metrics
	onChange  func(LeaderState)
	wait      time.Duration // blocking query wait; tests shorten it

	mu    sync.Mutex
	st    LeaderState
	poke  context.CancelFunc // ends the current blocking query on the lock
	poked bool
}

func newElector(client *api.Client, k keys, addr string, cfg Election, log *slog.Logger, m *metrics, onChange func(LeaderState)) *Elector {
	id := cfg.ID
	if id == "" {
		id = cfg.Service + "-" + addr
	}
	return &Elector{
		client:    client,
		key:       k.lock(),
		addr:      addr,
		cfg:       cfg,
		serviceID: id,
		checkID:   id + ":alive",
		log:       log.With("component", "election"),
		m:         m,
		onChange:  onChange,
		wait:      5 * time.Minute,
	}
}

// State is the current leadership as this replica knows it.
func (e *Elector) State() LeaderState {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.st
}

// Session implements Fence.
func (e *Elector) Session() (string, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.st.Session, e.st.IsLeader
}

// Lost implements Fence: a write under session was fenced off, so this
// replica stops acting as leader at once and reads the lock again.
func (e *Elector) Lost(session string) {
	e.mu.Lock()
	mine := e.st.IsLeader && e.st.Session == session
	e.mu.Unlock()
	if mine {
		e.set(LeaderState{Session: session})
	}
	e.mu.Lock()
	if e.poke != nil {
		e.poked = true
		e.poke()
	}
	e.mu.Unlock()
}

// set records st and reports a change of leadership.
func (e *Elector) set(st LeaderState) {
	if !st.IsLeader {
		st.Session = ""
	}
	e.mu.Lock()
	prev := e.st
	e.st = st
	e.mu.Unlock()
	if prev == st {
		return
	}
	switch {
	case st.IsLeader && !prev.IsLeader:
		e.m.isLeader.Set(1)
		e.m.changes.WithLabelValues("acquired").Inc()
		e.log.Info("won the leader lock", "addr", e.addr)
	case !st.IsLeader && prev.IsLeader:
		e.m.isLeader.Set(0)
		e.m.changes.WithLabelValues("lost").Inc()
		e.log.Warn("lost the leader lock; writing stopped", "new_leader", st.Leader)
	case prev.Leader != st.Leader:
		e.log.Info("leader changed", "leader", st.Leader)
	}
	if e.onChange != nil {
		e.onChange(st)
	}
}

// Run takes part in the election until ctx ends, then gives the lock up
// (so a standby takes over at once), destroys its session and deregisters
// the replica's service.
func (e *Elector) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	heartbeat := false
	for failures := 0; ctx.Err() == nil; {
		if err := e.register(ctx); err != nil {
			failures++
			e.failed("register", err, failures)
			retry.Sleep(ctx, backoff(failures))
			continue
		}
		if !heartbeat {
			heartbeat = true
			wg.Go(func() { e.heartbeat(ctx) })
		}
		sid, err := e.createSession(ctx)
		if err != nil {
			failures++
			e.failed("session", err, failures)
			retry.Sleep(ctx, backoff(failures))
			continue
		}
		failures = 0
		e.campaign(ctx, sid)
		e.end(sid)
	}
	e.deregister()
}

// failed counts and logs a failed election step: the first of a streak at
// warn, the rest at debug.
func (e *Elector) failed(step string, err error, failures int) {
	e.m.electionErrors.WithLabelValues(step).Inc()
	level := slog.LevelDebug
	if failures <= 1 {
		level = slog.LevelWarn
	}
	e.log.Log(context.Background(), level, "election step failed; retrying", "step", step, "error", err.Error())
}

// register registers the replica's service with its TTL check, passing.
func (e *Elector) register(ctx context.Context) error {
	host, portStr, _ := net.SplitHostPort(e.addr)
	port, _ := strconv.Atoi(portStr)
	reg := &api.AgentServiceRegistration{
		ID: e.serviceID, Name: e.cfg.Service, Address: host, Port: port,
		Check: &api.AgentServiceCheck{
			CheckID:                        e.checkID,
			Name:                           "leader replica alive",
			TTL:                            e.cfg.CheckTTL.String(),
			Status:                         api.HealthPassing,
			DeregisterCriticalServiceAfter: e.cfg.DeregisterAfter.String(),
		},
	}
	return e.client.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx))
}

func (e *Elector) deregister() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	q := (&api.QueryOptions{}).WithContext(ctx)
	if err := e.client.Agent().ServiceDeregisterOpts(e.serviceID, q); err != nil {
		e.log.Warn("could not deregister the replica's service", "error", err.Error())
	}
}

// heartbeat keeps the replica's check passing, four times per CheckTTL so
// that one late refresh does not fail it. When the agent has forgotten the
// check (it restarted) the service is registered again.
func (e *Elector) heartbeat(ctx context.Context) {
	t := time.NewTicker(e.cfg.CheckTTL / 4)
	defer t.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := e.client.Agent().UpdateTTLOpts(e.checkID, "", api.HealthPassing, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil && ctx.Err() == nil {
			failures++
			e.failed("heartbeat", err, failures)
			if err := e.register(ctx); err != nil && ctx.Err() == nil {
				e.failed("register", err, failures)
			}
			continue
		}
		failures = 0
	}
}

// createSession makes a session bound to the agent's node health and to
// the replica's own check, with the configured TTL and lock-delay.
func (e *Elector) createSession(ctx context.Context) (string, error) {
	id, _, err := e.client.Session().Create(&api.SessionEntry{
		Name:          "podedge leader " + e.addr,
		TTL:           e.cfg.SessionTTL.String(),
		LockDelay:     e.cfg.LockDelay,
		Behavior:      api.SessionBehaviorRelease,
		NodeChecks:    []string{"serfHealth"},
		ServiceChecks: []api.ServiceCheck{{ID: e.checkID}},
	}, (&api.WriteOptions{}).WithContext(ctx))
	return id, err
}

// campaign competes for the lock with session sid and follows who holds
// it, until the session is gone or ctx ends.
func (e *Elector) campaign(ctx context.Context, sid string) {
	sctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait() // after cancel, which ends the renewal
	defer cancel()
	wg.Go(func() { e.renew(sctx, sid, cancel) })

	kv := e.client.KV()
	var index uint64
	for failures := 0; sctx.Err() == nil; {
		qctx, qcancel := context.WithCancel(sctx)
		e.mu.Lock()
		e.poke, e.poked = qcancel, false
		e.mu.Unlock()
		pair, meta, err := kv.Get(e.key, (&api.QueryOptions{WaitIndex: index, WaitTime: e.wait}).WithContext(qctx))
		qcancel()
		e.mu.Lock()
		poked := e.poked
		e.poke = nil
		e.mu.Unlock()
		if sctx.Err() != nil {
			return
		}
		if err != nil {
			index = 0
			if poked {
				continue
			}
			failures++
			e.failed("watch", err, failures)
			// Without Consul this replica cannot know it still holds the
			// lock; its writes would fail anyway.
			e.set(LeaderState{Leader: e.State().Leader})
			retry.Sleep(sctx, backoff(failures))
			continue
		}
		failures = 0
		// An index that went backwards (a restarted agent) or is 0 would
		// block for the whole wait; start again from 0.
		if meta.LastIndex < index {
			index = 0
		} else {
			index = meta.LastIndex
		}
		switch {
		case pair != nil && pair.Session == sid:
			e.set(LeaderState{Leader: e.addr, IsLeader: true, Session: sid})
		case pair != nil && pair.Session != "":
			e.set(LeaderState{Leader: string(pair.Value)})
		default:
			e.set(LeaderState{})
			ok, _, err := kv.Acquire(&api.KVPair{Key: e.key, Value: []byte(e.addr), Session: sid}, (&api.WriteOptions{}).WithContext(sctx))
			if err != nil {
				// Most often the session was invalidated; start again
				// with a new one.
				e.failed("acquire", err, 1)
				return
			}
			if !ok {
				// Another replica won, or the lock-delay of an
				// invalidated session is still running.
				retry.Sleep(sctx, max(e.cfg.LockDelay, 10*time.Millisecond))
			}
			index = 0
		}
	}
}

// renew renews the session at half its TTL and ends the campaign when
// Consul says the session is gone or when it could not be renewed for a
// whole TTL.
func (e *Elector) renew(ctx context.Context, sid string, gone context.CancelFunc) {
	t := time.NewTicker(e.cfg.SessionTTL / 2)
	defer t.Stop()
	lastOK := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		entry, _, err := e.client.Session().Renew(sid, (&api.WriteOptions{}).WithContext(ctx))
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			e.failed("renew", err, 1)
			if time.Since(lastOK) < e.cfg.SessionTTL {
				continue
			}
		case entry != nil:
			lastOK = time.Now()
			continue
		}
		e.log.Warn("session gone; starting a new one", "session", sid)
		gone()
		return
	}
}

// end leaves a session: it gives up the lock if this replica held it, then
// destroys the session. Both are best effort; Consul invalidates the session
// on its own when the replica's check fails.
func (e *Elector) end(sid string) {
	was := e.State()
	if was.IsLeader {
		e.set(LeaderState{})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	w := (&api.WriteOptions{}).WithContext(ctx)
	if was.IsLeader {
		if _, _, err := e.client.KV().Release(&api.KVPair{Key: e.key, Session: sid}, w); err != nil {
			e.log.Warn("could not release the leader lock", "error", err.Error())
		}
	}
	_, _ = e.client.Session().Destroy(sid, w)
}

// backoff is the wait after the n-th consecutive failure: 100ms doubling
// up to 5s, with jitter so that replicas do not retry in step.
func backoff(n int) time.Duration { return retry.Backoff(100*time.Millisecond, 5*time.Second, n) }
