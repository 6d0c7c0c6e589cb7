package leader

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/podedge/podedge/internal/changelog"
	"github.com/podedge/podedge/router"
)

// Sign-ups are written together. Every write of a replica takes its turn
// and every write bumps the change log's head, so one at a time is all a
// replica can write, and one transaction costs a round trip and a Raft
// commit. Sign-ups that arrive while another is being written wait in a
// queue, and whoever takes the turn next writes all of them (as many as a
// transaction holds) in one transaction: placed one after the other in
// memory, each taking a seat, with one guard per pod touched and one entry
// each in the log. A sign-up refused by its own guard (a name or domain
// taken meanwhile) gets its answer, and the others are written without it.

// signupReq is one sign-up and, once done is closed, its answer.
type signupReq struct {
	su     Signup
	done   chan struct{}
	placed Placed
	index  uint64
	err    error
}

func (r *signupReq) finish(p Placed, index uint64, err error) {
	r.placed, r.index, r.err = p, index, err
	close(r.done)
}

// answered reports whether r has its answer.
func (r *signupReq) answered() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// SignUp places a new tenant in the pod the placement rule picks and
// stores it, with its custom domains, in a transaction that takes one of
// the pod's seats, together with the sign-ups that came meanwhile.
func (s *Store) SignUp(ctx context.Context, su Signup) (Placed, uint64, error) {
	req := &signupReq{su: su, done: make(chan struct{})}
	s.queueMu.Lock()
	s.queue = append(s.queue, req)
	s.queueMu.Unlock()
	select {
	case s.queued <- struct{}{}:
	default:
	}
	for {
		select {
		case <-req.done:
			return req.placed, req.index, req.err
		case s.turn <- struct{}{}:
			func() {
				defer s.release()
				s.flushSignups(ctx, req)
			}()
		case <-ctx.Done():
			if s.dequeue(req) {
				return Placed{}, 0, &Error{Kind: KindUnavailable, Msg: "timed out waiting for earlier writes to finish; retry"}
			}
			// Taken by the writer holding the turn: its answer comes.
			<-req.done
			return req.placed, req.index, req.err
		}
	}
}

// dequeue takes req out of the queue, and reports whether it was there.
func (s *Store) dequeue(req *signupReq) bool {
	s.queueMu.Lock()
	defer s.queueMu.Unlock()
	for i, r := range s.queue {
		if r == req {
			s.queue = append(s.queue[:i], s.queue[i+1:]...)
			return true
		}
	}
	return false
}

// maxBatch bounds the sign-ups taken from the queue at once; a transaction
// may hold fewer (Consul's 128 operations).
const maxBatch = 48

// flushSignups writes queued sign-ups, a batch at a time, until own is
// answered and every sign-up it took is: one taken from the queue is
// answered by the writer that took it, so that a caller that gave up
// waiting and found its sign-up gone from the queue gets its answer. The
// caller holds the turn.
func (s *Store) flushSignups(ctx context.Context, own *signupReq) {
	var left []*signupReq
	for {
		if own.answered() && len(left) == 0 {
			return
		}
		batch := left
		if len(batch) == 0 {
			s.gather(ctx)
		}
		s.queueMu.Lock()
		n := min(len(s.queue), maxBatch-len(batch))
		batch = append(batch, s.queue[:n]...)
		s.queue = s.queue[n:]
		s.queueMu.Unlock()
		if len(batch) == 0 {
			return // own was answered meanwhile
		}
		left = s.writeSignups(ctx, batch)
	}
}

// maxGather bounds how long a batch waits for sign-ups still to come.
const maxGather = 5 * time.Millisecond

// gather waits, briefly, for as many sign-ups as were in flight when the
// last transaction committed: those it wrote and those that waited for
// it. Clients answered by one transaction send their next sign-up within
// a round trip; without the wait, whoever comes first takes the turn
// alone and the others wait for the transaction after it, so a steady
// load of n clients alternates between batches of a few and batches of
// the rest: two transactions for n sign-ups, where one would do. Each
// costs a Raft commit and wakes every reader of the log, and it is
// Consul's time that bounds the rate. The wait ends as soon as the queue
// holds as many, and lasts at most half the last transaction's round
// trip and maxGather.
func (s *Store) gather(ctx context.Context) {
	want := min(s.inFlight, maxBatch)
	if want <= 1 {
		return
	}
	wait := min(maxGather, s.lastCommit/2)
	if wait <= 0 {
		return
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		s.queueMu.Lock()
		n := len(s.queue)
		s.queueMu.Unlock()
		if n >= want {
			return
		}
		select {
		case <-s.queued:
		case <-timer.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// refused is a guard of one sign-up of a batch that failed: that sign-up
// gets err, the others are tried again.
type refused struct {
	req *signupReq
	err error
}

func (r *refused) Error() string { return r.err.Error() }

// writeSignups writes as many of batch as one transaction holds, answers
// each of them, and returns those it had no room for.
func (s *Store) writeSignups(ctx context.Context, batch []*signupReq) (left []*signupReq) {
	var answered []*signupReq
	index, err := s.writeLocked(ctx, "signup", func(session string) error {
		for {
			var err error
			var committed []*signupReq
			committed, left, err = s.signupTxn(ctx, session, batch)
			if r, ok := errors.AsType[*refused](err); ok {
				r.req.finish(Placed{}, 0, r.err)
				batch = withoutReq(batch, r.req)
				continue
			}
			answered = committed
			return err
		}
	})
	for _, r := range answered {
		if !r.answered() {
			if err != nil {
				r.finish(Placed{}, 0, err)
			} else {
				r.finish(r.placed, index, nil)
			}
		}
	}
	if err != nil {
		// Not written: every sign-up not answered gets the error.
		for _, r := range batch {
			if !r.answered() && !containsReq(left, r) {
				r.finish(Placed{}, 0, err)
			}
		}
	}
	return left
}

func withoutReq(rs []*signupReq, r *signupReq) []*signupReq {
	out := make([]*signupReq, 0, len(rs))
	for _, o := range rs {
		if o != r {
			out = append(out, o)
		}
	}
	return out
}

func containsReq(rs []*signupReq, r *signupReq) bool {
	for _, o := range rs {
		if o == r {
			return true
		}
	}
	return false
}

// signupTxn places and writes batch in one transaction under session. It
// answers at once the sign-ups refused before any write (no capacity, a
// domain the view routes elsewhere), returns
// those it wrote (their Placed set) and those it had no room for or that
// clash with another of the batch, and, when one sign-up's own guard
// failed, a *refused.
func (s *Store) signupTxn(ctx context.Context, session string, batch []*signupReq) (written, left []*signupReq, err error) {
	pods, err := s.loadPods(ctx)
	if err != nil {
		return nil, nil, err
	}
	view := s.view()
	if !view.Synced {
		return batch, nil, &Error{Kind: KindUnavailable, Msg: "the leader has no view of edge health yet; retry"}
	}
	lh, err := s.loadLog(ctx)
	if err != nil {
		return nil, nil, err
	}
	tx := newTxn("signup", s.keys, session)
	taken := map[string]int{} // seats this batch takes, by pod
	names, domains := map[string]bool{}, map[string]bool{}
	var changes []changelog.Change
	now := s.clock().UTC().Truncate(time.Millisecond)
	for i, r := range batch {
		if r.answered() {
			continue // refused by an earlier attempt of this batch
		}
		su := r.su
		if clashes(su, names, domains) {
			// Another of this batch takes its name or a domain: whether
			// it may have them is known once that one is written.
			left = append(left, r)
			continue
		}
		if err := domainsFree(view, su.Name, su.Domains); err != nil {
			s.m.placementFailed.WithLabelValues("domain_taken").Inc()
			r.finish(Placed{}, 0, err)
			continue
		}
		cands := candidates(pods, view)
		for j := range cands {
			cands[j].Tenants += taken[cands[j].Name]
		}
		c, explained, ok := Explain(cands, su.Location(), s.nearKm)
		if !ok {
			s.m.placementFailed.WithLabelValues("no_capacity").Inc()
			r.finish(Placed{}, 0, &Error{Kind: KindNoCapacity, Msg: "no pod has a free seat and a passing edge"})
			continue
		}
		// The fence, the head and the pods' guards, then each sign-up's
		// tenant, ring slot and domains.
		need := 2 + len(su.Domains)
		if taken[c.Name] == 0 {
			need += 2
		}
		if len(tx.ops)+need+2*len(taken)+2 > maxTxnOps && len(written) > 0 {
			for _, r := range batch[i:] {
				if !r.answered() {
					left = append(left, r)
				}
			}
			break
		}
		t := router.Tenant{Name: su.Name, Pod: c.Name, Domains: su.Domains, Created: now}
		value, err := json.Marshal(t)
		if err != nil {
			return nil, nil, err
		}
		tx.cas(s.keys.tenant(su.Name), 0, value, &refused{r, conflict("tenant %q already exists", su.Name)})
		for _, d := range su.Domains {
			tx.cas(s.keys.domain(d), 0, []byte(su.Name), &refused{r, conflict("domain %q belongs to another tenant", d)})
		}
		names[su.Name] = true
		for _, d := range su.Domains {
			domains[d] = true
		}
		taken[c.Name]++
		changes = append(changes, tenantChange(su.Name, value))
		r.placed = Placed{Tenant: t, Placement: explained}
		written = append(written, r)
	}
	if len(written) == 0 {
		return nil, left, nil
	}
	for pod, n := range taken {
		e := pods[pod]
		tx.checkIndex(s.keys.pod(pod), e.podIndex, nil)
		tx.cas(s.keys.seats(pod), e.seatsIdx, seatsValue(e.seats+n), nil)
	}
	started := time.Now()
	res, err := s.commitLogged(ctx, session, tx, lh, changes...)
	if err != nil {
		if r, ok := errors.AsType[*refused](err); ok {
			if r.err.Error() == conflict("tenant %q already exists", r.req.su.Name).Error() {
				s.m.placementFailed.WithLabelValues("name_taken").Inc()
			} else {
				s.m.placementFailed.WithLabelValues("domain_taken").Inc()
			}
		}
		return nil, nil, err
	}
	for pod, n := range taken {
		e := pods[pod]
		e.seats += n
		e.seatsIdx = res[s.keys.seats(pod)]
	}
	s.queueMu.Lock()
	s.inFlight, s.lastCommit = len(written)+len(s.queue), time.Since(started)
	s.queueMu.Unlock()
	s.m.signups.Add(float64(len(written)))
	s.m.signupBatch.Observe(float64(len(written)))
	return written, left, nil
}

// clashes reports whether su takes a name or domain that another sign-up
// of the batch takes.
func clashes(su Signup, names, domains map[string]bool) bool {
	if names[su.Name] {
		return true
	}
	for _, d := range su.Domains {
		if domains[d] {
			return true
		}
	}
	return false
}
