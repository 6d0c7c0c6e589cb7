package leader

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
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
//
// Consul's own failures (no leader while it elects one, quorum lost, the
// local agent restarted, a server that stops answering) never make the
// replica give up a session Consul still holds: a session is left only
// when Consul says it is gone, and one that is left is destroyed as soon as
// Consul answers again, so that no orphaned session keeps the lock. Every
// call is bounded and ended once Consul has a leader again (boundCall), and
// every failed step is retried within a quarter of a second (retryWait),
// so that the replica leads or follows again as soon as Consul can tell it
// which.
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
	// keepRegistered leaves the service registered when Run ends: another
	// process of this replica (an upgrade's) uses it, and deregistering
	// would drop the check its session is bound to.
	keepRegistered atomic.Bool
	// wait is the blocking query's wait. A query whose server stopped
	// answering is given up after it and a margin, and asked again.
	wait time.Duration

	mu    sync.Mutex
	st    LeaderState
	poke  context.CancelFunc // ends the current blocking query on the lock
	poked bool
	fresh bool // the next read of the lock must not block: Consul was in trouble
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
		wait:      time.Minute,
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
	e.rewatch()
}

// rewatch ends the blocking query on the lock, if one is open, so that the
// lock is read again at once, without blocking.
func (e *Elector) rewatch() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.fresh = true
	if e.poke != nil {
		e.poked = true
		e.poke()
	}
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
			retry.Sleep(ctx, retryWait(err, failures))
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
			retry.Sleep(ctx, retryWait(err, failures))
			continue
		}
		failures = 0
		e.campaign(ctx, sid)
		e.end(ctx, sid)
	}
	if !e.keepRegistered.Load() {
		e.deregister()
	}
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
	cctx, cancel := withCallTimeout(ctx)
	defer cancel()
	return e.client.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(cctx))
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
		cctx, cancel := withCallTimeout(ctx)
		err := e.client.Agent().UpdateTTLOpts(e.checkID, "", api.HealthPassing, (&api.QueryOptions{}).WithContext(cctx))
		cancel()
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
	ctx, stop := e.bound(ctx)
	defer stop()
	id, _, err := e.client.Session().Create(&api.SessionEntry{
		Name:          "podedge leader " + e.addr,
		TTL:           e.cfg.SessionTTL.String(),
		LockDelay:     e.cfg.LockDelay,
		Behavior:      api.SessionBehaviorRelease,
		NodeChecks:    []string{"serfHealth"},
		ServiceChecks: []api.ServiceCheck{{ID: e.checkID}},
	}, (&api.WriteOptions{}).WithContext(ctx))
	return id, callErr(ctx, err)
}

// bound bounds one call to the Consul servers: by callTimeout, and by
// boundCall.
func (e *Elector) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := withCallTimeout(ctx)
	ctx, stop := boundCall(ctx, e.client)
	return ctx, func() { stop(); cancel() }
}

// campaign competes for the lock with session sid and follows who holds
// it, until Consul says the session is gone or ctx ends.
func (e *Elector) campaign(ctx context.Context, sid string) {
	sctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait() // after cancel, which ends the renewal
	defer cancel()
	wg.Go(func() { e.renew(sctx, sid, cancel) })

	var index uint64
	for failures := 0; sctx.Err() == nil; {
		pair, meta, poked, err := e.readLock(sctx, index)
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
			// lock; its writes would fail anyway. It keeps its session,
			// which Consul keeps too, and leads again with it as soon as
			// Consul answers that it holds the lock.
			e.set(LeaderState{Leader: e.State().Leader})
			retry.Sleep(sctx, retryWait(err, failures))
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
			was := e.State().IsLeader
			e.set(LeaderState{Leader: string(pair.Value)})
			if was && e.gone(sctx, sid) {
				// Deposed because Consul invalidated the session (its
				// check failed): compete again with a new one now, not
				// at the next renewal.
				e.log.Warn("session gone; starting a new one", "session", sid)
				return
			}
		default:
			e.set(LeaderState{})
			ok, err := e.acquire(sctx, sid)
			switch {
			case sctx.Err() != nil:
				return
			case err != nil && e.gone(sctx, sid):
				// Acquire refuses a session Consul invalidated: start
				// again with a new one.
				e.log.Warn("session gone; starting a new one", "session", sid)
				return
			case err != nil:
				failures++
				e.failed("acquire", err, failures)
				retry.Sleep(sctx, retryWait(err, failures))
			case !ok:
				// Another replica won, or the lock-delay of an
				// invalidated session is still running.
				retry.Sleep(sctx, max(e.cfg.LockDelay, 10*time.Millisecond))
			}
			index = 0
		}
	}
}

// readLock reads the lock key, blocking until it changes past index (0,
// or after rewatch: at once). poked reports that rewatch ended the query
// early.
func (e *Elector) readLock(ctx context.Context, index uint64) (pair *api.KVPair, meta *api.QueryMeta, poked bool, err error) {
	e.mu.Lock()
	if e.fresh {
		index, e.fresh = 0, false
	}
	e.mu.Unlock()
	var qctx context.Context
	var qcancel context.CancelFunc
	if index == 0 {
		qctx, qcancel = e.bound(ctx)
	} else {
		// Consul adds up to wait/16 to a blocking query; past that and a
		// call's bound, the server it waits on has stopped answering.
		qctx, qcancel = context.WithTimeout(ctx, e.wait+e.wait/16+callTimeout)
	}
	defer qcancel()
	e.mu.Lock()
	e.poke, e.poked = qcancel, false
	e.mu.Unlock()
	pair, meta, err = e.client.KV().Get(e.key, (&api.QueryOptions{WaitIndex: index, WaitTime: e.wait}).WithContext(qctx))
	e.mu.Lock()
	poked = e.poked
	e.poke = nil
	e.mu.Unlock()
	return pair, meta, poked, callErr(qctx, err)
}

// acquire tries to take the lock with session sid.
func (e *Elector) acquire(ctx context.Context, sid string) (bool, error) {
	ctx, stop := e.bound(ctx)
	defer stop()
	ok, _, err := e.client.KV().Acquire(&api.KVPair{Key: e.key, Value: []byte(e.addr), Session: sid}, (&api.WriteOptions{}).WithContext(ctx))
	return ok, callErr(ctx, err)
}

// gone reports whether Consul says session sid no longer exists; false
// when Consul cannot be asked.
func (e *Elector) gone(ctx context.Context, sid string) bool {
	ctx, stop := e.bound(ctx)
	defer stop()
	entry, _, err := e.client.Session().Info(sid, (&api.QueryOptions{}).WithContext(ctx))
	return err == nil && entry == nil
}

// renew renews the session at half its TTL and ends the campaign when
// Consul says the session is gone: a renewal answered 404. Renewals that
// fail (no Consul leader, the agent down, a server that does not answer)
// are only retried, within a quarter of a second, for as long as it takes:
// the session lives on in Consul meanwhile (a new Consul leader gives every
// session a full TTL again), and giving it up would leave the lock held by
// a session no replica renews. After such failures the lock is read again
// at once, since its blocking query may have hung on the same server.
func (e *Elector) renew(ctx context.Context, sid string, gone context.CancelFunc) {
	wait := e.cfg.SessionTTL / 2
	failures := 0
	for retry.Sleep(ctx, wait) {
		cctx, stop := e.bound(ctx)
		entry, _, err := e.client.Session().Renew(sid, (&api.WriteOptions{}).WithContext(cctx))
		err = callErr(cctx, err)
		stop()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			failures++
			e.failed("renew", err, failures)
			if failures == 1 {
				e.rewatch()
			}
			wait = retryWait(err, failures)
			continue
		case entry == nil:
			e.log.Warn("consul says the session is gone; starting a new one", "session", sid)
			gone()
			return
		}
		if failures > 0 {
			e.log.Info("session renewed again", "session", sid, "after_failures", failures)
			e.rewatch()
		}
		failures, wait = 0, e.cfg.SessionTTL/2
	}
}

// endGrace bounds the last attempt to leave a session when the replica
// stops: a replica stopping while Consul has no leader cannot wait for one.
// Its service, deregistered next, takes the check the session is bound to
// with it, and Consul then invalidates the session on its own.
const endGrace = 5 * time.Second

// end leaves a session: it stops leading, gives up the lock if the session
// holds it (a replica that stepped down because Consul did not answer may
// still hold it), then destroys the session. While ctx lives it retries
// until Consul has done both, before any new session competes: a session
// left alive would keep the lock, and every write would fail, until Consul
// expired it. Once ctx has ended (the replica stops) it tries for endGrace
// more.
func (e *Elector) end(ctx context.Context, sid string) {
	if e.State().IsLeader {
		e.set(LeaderState{})
	}
	// Retry for as long as ctx lives, and endGrace after it has ended.
	actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	defer context.AfterFunc(ctx, func() { time.AfterFunc(endGrace, cancel) })()
	for failures := 0; ; {
		err := e.leave(actx, sid)
		if err == nil {
			if failures > 0 {
				e.log.Info("left the session once consul answered", "session", sid, "after_failures", failures)
			}
			return
		}
		failures++
		e.failed("end", err, failures)
		if !retry.Sleep(actx, retryWait(err, failures)) {
			e.log.Warn("could not destroy the session; consul invalidates it once the replica's check is gone", "session", sid, "error", err.Error())
			return
		}
	}
}

// leave releases the lock if sid holds it and destroys sid. Both are
// idempotent: releasing a lock sid does not hold changes nothing, and
// destroying a session that is gone succeeds.
func (e *Elector) leave(ctx context.Context, sid string) error {
	cctx, stop := e.bound(ctx)
	defer stop()
	w := (&api.WriteOptions{}).WithContext(cctx)
	if _, _, err := e.client.KV().Release(&api.KVPair{Key: e.key, Session: sid}, w); err != nil {
		return fmt.Errorf("release the lock: %w", callErr(cctx, err))
	}
	if _, err := e.client.Session().Destroy(sid, w); err != nil {
		return fmt.Errorf("destroy the session: %w", callErr(cctx, err))
	}
	return nil
}
