package certs

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/retry"
)

// ticketKeys is the value of <prefix>tls/ticket-keys: the session ticket
// keys every edge uses, newest first. The newest encrypts new tickets; all
// decrypt, so a client resumes on any edge with a ticket from any other.
type ticketKeys struct {
	Keys []ticketKey `json:"keys"`
}

type ticketKey struct {
	Key     []byte    `json:"key"` // 32 random bytes (base64 in JSON)
	Created time.Time `json:"created"`
}

// tickets keeps the TLS configuration's session ticket keys those of KV,
// and rotates them there: when the newest is TicketRotation old, every edge
// tries to add a new one with a check-and-set on the index it read, so
// exactly one succeeds and the others pick its key up through their
// blocking query.
type tickets struct {
	kv       *api.KV
	key      string
	conf     *tls.Config
	rotation time.Duration
	keep     int
	log      *slog.Logger
	metrics  *metrics

	created atomic.Int64 // Unix nanoseconds of the newest key in use; 0 until one is read
}

// age is the age of the key in use, in seconds; -1 before one is read.
func (t *tickets) age(now time.Time) float64 {
	c := t.created.Load()
	if c == 0 {
		return -1
	}
	return now.Sub(time.Unix(0, c)).Seconds()
}

// run follows and rotates the keys until ctx ends. While Consul is
// unreachable the keys in use stay (before the first read, they are the
// edge's own, and tickets resume only on it).
func (t *tickets) run(ctx context.Context) {
	var index uint64
	var applied []byte
	failures := 0
	jitter := mrand.N(min(t.rotation/20, 10*time.Second) + 1)
	for ctx.Err() == nil {
		wait := watchWait
		if c := t.created.Load(); c != 0 {
			wait = min(max(time.Until(time.Unix(0, c).Add(t.rotation+jitter)), 10*time.Millisecond), watchWait)
		}
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx)
		p, meta, err := t.kv.Get(t.key, q)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			if failures == 1 {
				t.log.Warn("consul: reading session ticket keys failed; keeping the keys in use", "error", err.Error())
			}
			index = 0
			if !retry.Sleep(ctx, retry.Backoff(watchRetryBase, watchRetryMax, failures)) {
				return
			}
			continue
		}
		failures = 0
		if meta.LastIndex < index || meta.LastIndex == 0 {
			index = 0
		} else {
			index = meta.LastIndex
		}
		var cur *ticketKeys
		var modify uint64
		if p != nil {
			modify = p.ModifyIndex
			if !bytes.Equal(p.Value, applied) {
				if cur, err = t.apply(p.Value); err != nil {
					t.log.Warn("session ticket keys in consul do not parse; replacing them", "key", t.key, "error", err.Error())
				} else {
					applied = p.Value
				}
			} else {
				cur, _ = decodeTicketKeys(p.Value)
			}
		}
		if cur == nil || time.Since(cur.Keys[0].Created) >= t.rotation+jitter {
			if err := t.rotate(ctx, cur, modify); err != nil {
				failures++
				if !retry.Sleep(ctx, retry.Backoff(watchRetryBase, watchRetryMax, failures)) {
					return
				}
			}
		}
	}
}

// apply decodes raw and installs its keys.
func (t *tickets) apply(raw []byte) (*ticketKeys, error) {
	tk, err := decodeTicketKeys(raw)
	if err != nil {
		return nil, err
	}
	keys := make([][32]byte, len(tk.Keys))
	for i, k := range tk.Keys {
		copy(keys[i][:], k.Key)
	}
	t.conf.SetSessionTicketKeys(keys)
	t.created.Store(tk.Keys[0].Created.UnixNano())
	return tk, nil
}

func decodeTicketKeys(raw []byte) (*ticketKeys, error) {
	var tk ticketKeys
	if err := json.Unmarshal(raw, &tk); err != nil {
		return nil, err
	}
	if len(tk.Keys) == 0 {
		return nil, errors.New("no keys")
	}
	for i, k := range tk.Keys {
		if len(k.Key) != 32 {
			return nil, fmt.Errorf("key %d has %d bytes, not 32", i, len(k.Key))
		}
	}
	return &tk, nil
}

// rotate writes a new key in front of cur's newest keep-1, if the value is
// still at index modify (0: absent). Losing the race is normal: another
// edge rotated. An error is Consul's (or the system's) and is logged.
func (t *tickets) rotate(ctx context.Context, cur *ticketKeys, modify uint64) error {
	next := ticketKeys{Keys: []ticketKey{{Key: make([]byte, 32), Created: time.Now().UTC()}}}
	if _, err := rand.Read(next.Keys[0].Key); err != nil {
		t.log.Error("no randomness for a session ticket key", "error", err.Error())
		return err
	}
	if cur != nil {
		next.Keys = append(next.Keys, cur.Keys[:min(len(cur.Keys), t.keep-1)]...)
	}
	raw, _ := json.Marshal(next)
	cctx, cancel := bounded(ctx)
	defer cancel()
	ok, _, err := t.kv.CAS(&api.KVPair{Key: t.key, Value: raw, ModifyIndex: modify}, (&api.WriteOptions{}).WithContext(cctx))
	switch {
	case err != nil:
		t.metrics.storeErrors.Inc()
		t.log.Warn("consul: rotating the session ticket key failed; keeping the keys in use", "error", err.Error())
		return err
	case ok:
		t.metrics.rotations.Inc()
		t.log.Info("session ticket key rotated", "keys", len(next.Keys))
	}
	return nil
}
