package leader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/router"
)

// Fence tells the store which Consul session holds the leader lock for this
// replica. The Elector implements it.
type Fence interface {
	// Session returns the session that holds the lock, and false while this
	// replica is not the leader.
	Session() (string, bool)
	// Lost reports that a write fenced by session was refused because the
	// session no longer holds the lock: the replica must stop writing.
	Lost(session string)
}

// Store performs the leader's writes: each one Consul transaction, fenced by
// the leader's session, guarded by check-and-set on everything it read, and
// retried from a fresh read when a concurrent change rolled it back.
//
// Writes on one replica run one at a time: placement reads every pod, and
// serialising them makes conflicts on this replica impossible, so the
// guards fire only across replicas (a deposed leader) or against changes
// made outside the leader. The guards, not this turn-taking, make writes
// safe.
type Store struct {
	client *api.Client
	kv     router.KVTxnReader // reads whole folders (readEach)
	keys   keys
	fence  Fence
	view   func() *router.Snapshot
	// waitViewFn is StoreConfig.WaitView.
	waitViewFn func(ctx context.Context, index uint64) (*router.Snapshot, error)
	val        *validator
	nearKm     float64
	retries    int
	zone       string // without the trailing dot
	m          *metrics
	log        *slog.Logger
	clock      func() time.Time

	turn    chan struct{} // holds a token while a write runs: one at a time
	queueMu sync.Mutex
	queue   []*signupReq  // sign-ups waiting to be written together
	queued  chan struct{} // signalled when a sign-up joins the queue
	// inFlight is how many sign-ups the last sign-up transaction wrote
	// or had waiting, and lastCommit how long it took (gather).
	inFlight   int
	lastCommit time.Duration
	pods       podCache     // nil: read again before the next write
	logHead    *logHead     // nil: read again before the next write
	written    writtenNames // what the log got, for the auditor
	ring       uint64       // the change log's ring slots
	podsFor    string       // the session pods and logHead were read under
	reconciled string       // the session the internal keys were last reconciled under
	once       reconciledOnce
	platformMu sync.Mutex
	platform   *platformRead // a read of the platform for a reconciliation, in flight or not yet taken
	// seen is the highest ModifyIndex the current write attempt read or
	// committed: the index it answers with (X-Podedge-Index). A write
	// that changes nothing answers with the index of the state it found.
	seen uint64
}

// StoreConfig configures a Store. View and Fence are required.
type StoreConfig struct {
	Client *api.Client
	// KV reads whole folders (the reconciliation's) if it streams them
	// (router.KVStreamer); otherwise, and when nil, they are read through
	// consul/api, whose answer is garbage once read: a reader that parses
	// in place keeps its buffers for the next read, and a reconciliation
	// beside the auditor's and the view's reads would keep one more of
	// 64 MB for good.
	KV     router.KVTxnReader
	Prefix string // with the trailing slash
	Zone   string // with or without the trailing dot
	Fence  Fence
	View   func() *router.Snapshot
	// WaitView returns the view once it holds every change logged at
	// the index given or before (router.Router.WaitIndex); nil means
	// View is always current, as a view a test publishes is.
	WaitView func(ctx context.Context, index uint64) (*router.Snapshot, error)
	NearKm   float64
	Retries  int
	// Reserved and MaxDomains as in Config.
	Reserved   []string
	MaxDomains int
	// LogRing is the number of the change log's ring slots; 0 means
	// DefaultLogRing.
	LogRing uint64
	Logger  *slog.Logger
	// Clock stamps tenants' creation; nil means time.Now.
	Clock func() time.Time
}

func newStore(c StoreConfig, m *metrics) *Store {
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.LogRing == 0 {
		c.LogRing = DefaultLogRing
	}
	if _, streams := c.KV.(router.KVStreamer); !streams {
		c.KV = router.NewAPILister(c.Client).(router.KVTxnReader)
	}
	return &Store{
		ring:       c.LogRing,
		client:     c.Client,
		kv:         c.KV,
		keys:       keys{prefix: c.Prefix},
		fence:      c.Fence,
		view:       c.View,
		waitViewFn: c.WaitView,
		val:        newValidator(c.Zone, c.Reserved, c.MaxDomains),
		nearKm:     c.NearKm,
		retries:    c.Retries,
		zone:       strings.TrimSuffix(c.Zone, "."),
		m:          m,
		log:        c.Logger,
		clock:      c.Clock,
		turn:       make(chan struct{}, 1),
		queued:     make(chan struct{}, 1),
	}
}

// acquire waits for this replica's turn to write, or for ctx to end: a
// write stuck on a slow Consul must not hold up the others past their own
// deadlines.
func (s *Store) acquire(ctx context.Context) error {
	select {
	case s.turn <- struct{}{}:
		return nil
	case <-ctx.Done():
		return &Error{Kind: KindUnavailable, Msg: "timed out waiting for earlier writes to finish; retry"}
	}
}

func (s *Store) release() { <-s.turn }

// podEntry is a pod as the leader last read or wrote it.
type podEntry struct {
	pod      router.Pod
	valid    bool   // the value decoded and validated; invalid pods take no tenants
	podIndex uint64 // ModifyIndex of pods/<name>; 0 when the pod is not registered
	seats    int    // tenants placed in the pod
	seatsIdx uint64 // ModifyIndex of leader/seats/<name>; 0 when absent
}

// podCache is every pod with its seat count. The leader is the only writer
// of these keys, so after one consistent read it stays exact by applying
// its own committed writes; any rolled-back write drops it, and the next
// write reads it again. The guards on every write make a stale cache cost a
// retry, never a wrong write.
type podCache map[string]*podEntry

// unknownSeats marks a seat count that does not parse: the pod takes no
// tenant until reconciliation repairs it.
const unknownSeats = math.MaxInt32

// loadPods returns the pod cache, reading pods/ and leader/seats/ together
// when it is not current.
func (s *Store) loadPods(ctx context.Context) (podCache, error) {
	if s.pods != nil {
		return s.pods, nil
	}
	trees, err := s.readTrees(ctx, s.keys.podsDir(), s.keys.seatsDir())
	if err != nil {
		return nil, err
	}
	c := podCache{}
	entry := func(name string) *podEntry {
		e := c[name]
		if e == nil {
			e = &podEntry{pod: router.Pod{Name: name}}
			c[name] = e
		}
		return e
	}
	for _, kv := range trees[s.keys.podsDir()] {
		name := strings.TrimPrefix(kv.Key, s.keys.podsDir())
		if strings.Contains(name, "/") {
			continue
		}
		e := entry(name)
		e.podIndex = kv.ModifyIndex
		p, err := decodePod(name, kv.Value)
		if err != nil {
			continue // the router logs it; the pod takes no tenants
		}
		e.pod, e.valid = p, true
	}
	for _, kv := range trees[s.keys.seatsDir()] {
		name := strings.TrimPrefix(kv.Key, s.keys.seatsDir())
		e := entry(name)
		e.seatsIdx = kv.ModifyIndex
		n, err := strconv.Atoi(string(kv.Value))
		if err != nil || n < 0 {
			s.log.Warn("seat count does not parse; the pod takes no tenant until it is reconciled", "key", kv.Key, "value", string(kv.Value))
			n = unknownSeats
		}
		e.seats = n
	}
	s.pods = c
	return c, nil
}

// decodePod parses and validates a stored pod value.
func decodePod(name string, raw []byte) (router.Pod, error) {
	var p router.Pod
	if err := json.Unmarshal(raw, &p); err != nil {
		return router.Pod{}, err
	}
	if p.Name == "" {
		p.Name = name
	}
	switch {
	case p.Name != name:
		return router.Pod{}, fmt.Errorf("value names pod %q", p.Name)
	case !router.ValidLabel(name):
		return router.Pod{}, fmt.Errorf("invalid pod name %q", name)
	case p.Capacity < 0:
		return router.Pod{}, fmt.Errorf("negative capacity")
	}
	if err := router.CheckCoordinates(p.Lat, p.Lon); err != nil {
		return router.Pod{}, err
	}
	return p, nil
}

// decodeTenant parses a stored tenant value, with domains never nil.
func decodeTenant(name string, raw []byte) (router.Tenant, error) {
	var t router.Tenant
	if err := json.Unmarshal(raw, &t); err != nil {
		return router.Tenant{}, fmt.Errorf("tenant %q: %w", name, err)
	}
	if t.Name == "" {
		t.Name = name
	}
	if t.Domains == nil {
		t.Domains = []string{}
	}
	return t, nil
}

// write runs one API write: attempt builds and commits a transaction from a
// fresh read under session; when the transaction rolls back on a concurrent
// change (errRetry) the cached reads are dropped and it runs again, up to
// the configured number of times. It returns the Consul index the write
// committed at, or for a write that had nothing to change the highest
// index of what it read.
func (s *Store) write(ctx context.Context, op string, attempt func(session string) error) (uint64, error) {
	if err := s.acquire(ctx); err != nil {
		return 0, err
	}
	defer s.release()
	return s.writeLocked(ctx, op, attempt)
}

// writeLocked is write for a caller that holds the turn.
func (s *Store) writeLocked(ctx context.Context, op string, attempt func(session string) error) (uint64, error) {
	for try := 1; ; try++ {
		session, ok := s.fence.Session()
		if !ok {
			return 0, errNotLeader
		}
		if s.podsFor != session {
			// A new leadership reads everything afresh.
			s.pods, s.logHead, s.podsFor = nil, nil, session
		}
		if err := s.reconcileLocked(ctx, session); err != nil {
			return 0, err
		}
		s.seen = 0
		err := attempt(session)
		if !errors.Is(err, errRetry) {
			if err != nil && !isOutcome(err) {
				// Consul failed us; what we cached may be out of date.
				s.pods, s.logHead = nil, nil
			}
			if err != nil {
				return 0, err
			}
			return s.seen, nil
		}
		s.pods, s.logHead = nil, nil
		if try >= s.retries {
			return 0, &Error{Kind: KindUnavailable, Msg: fmt.Sprintf("%s kept conflicting with concurrent changes after %d attempts; retry", op, try)}
		}
		s.m.retries.WithLabelValues(op).Inc()
		if ctx.Err() != nil {
			return 0, fmt.Errorf("%s: %w", op, ctx.Err())
		}
	}
}

// isOutcome reports whether err is an answer for the client rather than a
// failure to reach Consul.
func isOutcome(err error) bool {
	_, ok := errors.AsType[*Error](err)
	return ok
}

// PutPod registers a pod or updates it, and reports whether it was new.
func (s *Store) PutPod(ctx context.Context, p router.Pod) (created bool, index uint64, err error) {
	value, err := json.Marshal(p)
	if err != nil {
		return false, 0, err
	}
	index, err = s.write(ctx, "put_pod", func(session string) error {
		pods, err := s.loadPods(ctx)
		if err != nil {
			return err
		}
		e := pods[p.Name]
		var index uint64
		if e != nil {
			index = e.podIndex
		}
		lh, err := s.loadLog(ctx)
		if err != nil {
			return err
		}
		t := newTxn("put_pod", s.keys, session)
		t.cas(s.keys.pod(p.Name), index, value, nil)
		res, err := s.commitLogged(ctx, session, t, lh, podChange(p.Name, value))
		if err != nil {
			return err
		}
		created = index == 0
		if e == nil {
			e = &podEntry{}
			pods[p.Name] = e
		}
		e.pod, e.valid, e.podIndex = p, true, res[s.keys.pod(p.Name)]
		return nil
	})
	return created, index, err
}

// DeletePod removes a pod that holds no tenants.
func (s *Store) DeletePod(ctx context.Context, name string) (uint64, error) {
	return s.write(ctx, "delete_pod", func(session string) error {
		pods, err := s.loadPods(ctx)
		if err != nil {
			return err
		}
		e := pods[name]
		if e == nil || e.podIndex == 0 {
			return notFound("pod %q not found", name)
		}
		n := e.seats
		if vp := s.view().Pod(name); vp != nil {
			// A tenant written to KV outside the leader is not counted
			// in seats until reconciliation; the view sees it.
			n = max(n, vp.Tenants)
		}
		if n > 0 {
			return conflict("pod %q still has %d tenants; move or delete them first", name, n)
		}
		lh, err := s.loadLog(ctx)
		if err != nil {
			return err
		}
		t := newTxn("delete_pod", s.keys, session)
		t.deleteCAS(s.keys.pod(name), e.podIndex, nil)
		if e.seatsIdx != 0 {
			t.deleteCAS(s.keys.seats(name), e.seatsIdx, nil)
		} else {
			t.checkIndex(s.keys.seats(name), 0, nil)
		}
		// No tenant may be placed in the pod meanwhile: the seat count
		// guards that, as it is part of every placement.
		if _, err := s.commitLogged(ctx, session, t, lh, podChange(name, nil)); err != nil {
			return err
		}
		delete(pods, name)
		return nil
	})
}

// DefaultLogRing is the change log's ring size: a reader that falls
// further behind than this many changes reads the folders again.
const DefaultLogRing = 4096

// seatsValue is the stored form of a seat count.
func seatsValue(n int) []byte { return strconv.AppendInt(nil, int64(n), 10) }
