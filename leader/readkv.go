package leader

import (
	"context"
	"fmt"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/router"
)

// Whole folders (the tenants at 100,000 of them: 30 MB of JSON) are read
// an entry at a time, through the replica's KV reader when it streams
// Consul's answer: consul/api decodes the whole answer into []*KVPair,
// about 200 MB of the leader's memory at once at 100,000 tenants, the
// peak of its resident set.

// readEach reads keys and, recursively, folders in one read-only
// transaction (one Raft index) and calls fn with each entry; the entry is
// valid only during the call.
func (s *Store) readEach(ctx context.Context, keys, folders []string, fn func(*router.KVEntry) error) error {
	cctx, stop := boundCall(ctx, s.client)
	defer stop()
	q := (&api.QueryOptions{}).WithContext(cctx)
	seen := func(e *router.KVEntry) error {
		s.seen = max(s.seen, e.ModifyIndex)
		return fn(e)
	}
	_, err := router.ReadEach(s.kv, keys, folders, q, seen)
	if err = callErr(cctx, err); err != nil {
		return fmt.Errorf("consul read: %w", err)
	}
	return nil
}

// entryValues decodes entries' values, reusing one buffer.
type entryValues struct{ raw []byte }

// of returns e's value, valid until the next call and only while e is;
// ok is false when it does not decode.
func (v *entryValues) of(e *router.KVEntry) ([]byte, bool) {
	value, err := e.ValueIn(&v.raw)
	return value, err == nil
}

// name returns the name of e directly under dir, or false.
func name(e *router.KVEntry, dir string) (string, bool) {
	if len(e.Key) <= len(dir) || string(e.Key[:len(dir)]) != dir {
		return "", false
	}
	return string(e.Key[len(dir):]), true
}

// pair copies e out of the reader's buffers.
func (v *entryValues) pair(e *router.KVEntry) *api.KVPair {
	value, _ := v.of(e)
	return &api.KVPair{Key: string(e.Key), ModifyIndex: e.ModifyIndex, Value: append([]byte(nil), value...)}
}
