package certs

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
)

// Lock timing. The session's TTL lets a crashed edge's lock go after at
// most twice the TTL (Consul's grace); the lock delay keeps it from being
// taken again at once after such a loss, so that the crashed holder cannot
// be mistaken for alive. A lock released normally has no delay.
const (
	lockTTL       = 15 * time.Second
	lockDelay     = time.Second
	lockRenew     = lockTTL / 3
	lockQueryWait = 30 * time.Second
)

// locker takes the per-name locks under <prefix>certs/locks/: a Consul
// session, renewed while held, acquiring the name's key. The edge that holds
// a name's lock is the only one ordering a certificate for it.
type locker struct {
	client *api.Client
	root   string // "<prefix>certs/locks/"
	holder string
}

// lockValue is stored in a held lock, for operators.
type lockValue struct {
	Holder string    `json:"edge"`
	Since  time.Time `json:"since"`
}

// lock takes the lock of name, waiting while another edge holds it, until
// ctx ends. The returned release gives it back and ends the session; it
// must be called once, and does not depend on ctx.
func (l *locker) lock(ctx context.Context, name string) (release func(), err error) {
	key := l.root + name
	session := l.client.Session()
	id, _, err := session.Create(&api.SessionEntry{
		Name:      "podedge certificate " + name,
		TTL:       lockTTL.String(),
		LockDelay: lockDelay,
		Behavior:  api.SessionBehaviorRelease,
	}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("consul: create lock session for %s: %w", name, err)
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go l.keepAlive(id, done, stopped)
	giveUp := func() {
		close(done)
		<-stopped
	}

	value, _ := json.Marshal(lockValue{Holder: l.holder, Since: time.Now().UTC().Truncate(time.Second)})
	kv := l.client.KV()
	var index uint64
	sawFree := false
	for {
		ok, _, err := kv.Acquire(&api.KVPair{Key: key, Value: value, Session: id}, (&api.WriteOptions{}).WithContext(ctx))
		if err != nil {
			giveUp()
			return nil, fmt.Errorf("consul: acquire %s: %w", key, err)
		}
		if ok {
			return func() {
				rctx, cancel := context.WithTimeout(context.Background(), opTimeout)
				// Released, not destroyed: a session destroyed while
				// holding the key would put the lock delay on it.
				_, _, _ = kv.Release(&api.KVPair{Key: key, Session: id}, (&api.WriteOptions{}).WithContext(rctx))
				cancel()
				giveUp()
			}, nil
		}
		if sawFree {
			// Refused although free: the key is within the lock delay of
			// a lost session, and will not change when it ends. Look
			// again shortly, without blocking.
			select {
			case <-ctx.Done():
				giveUp()
				return nil, ctx.Err()
			case <-time.After(lockDelay / 4):
			}
			index = 0
		}
		// Held by another edge: block until the key changes.
		p, meta, err := kv.Get(key, (&api.QueryOptions{WaitIndex: index, WaitTime: lockQueryWait}).WithContext(ctx))
		if err != nil {
			giveUp()
			return nil, fmt.Errorf("consul: wait for %s: %w", key, err)
		}
		if meta.LastIndex < index {
			index = 0
		} else {
			index = meta.LastIndex
		}
		sawFree = p == nil || p.Session == ""
	}
}

// keepAlive renews the session until done closes, then destroys it.
func (l *locker) keepAlive(id string, done <-chan struct{}, stopped chan<- struct{}) {
	defer close(stopped)
	session := l.client.Session()
	t := time.NewTicker(lockRenew)
	defer t.Stop()
	for {
		select {
		case <-done:
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			_, _ = session.Destroy(id, (&api.WriteOptions{}).WithContext(ctx))
			cancel()
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			_, _, _ = session.Renew(id, (&api.WriteOptions{}).WithContext(ctx))
			cancel()
		}
	}
}
