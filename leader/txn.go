package leader

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/consul/api"
)

// maxTxnOps is Consul's limit of operations in one transaction.
const maxTxnOps = 128

// errRetry means a guard of a transaction failed because something changed
// since it was read: the write re-reads and tries again.
var errRetry = errors.New("transaction rolled back by a concurrent change")

// txn is one fenced write being built: its operations and, for each, what a
// failure of that operation means.
type txn struct {
	name   string // the API operation, for metrics and logs
	ops    api.TxnOps
	onFail []error // nil: re-read and retry; else the final outcome
}

// newTxn starts a write fenced by session: its first operation fails the
// whole transaction unless session still holds the leader lock. This is
// what makes a deposed leader's write fail, however late it arrives.
func newTxn(name string, k keys, session string) *txn {
	t := &txn{name: name}
	t.add(&api.KVTxnOp{Verb: api.KVCheckSession, Key: k.lock(), Session: session}, errNotLeader)
	return t
}

func (t *txn) add(op *api.KVTxnOp, onFail error) {
	t.ops = append(t.ops, &api.TxnOp{KV: op})
	t.onFail = append(t.onFail, onFail)
}

// checkIndex guards key: the write fails unless key still has the
// ModifyIndex it was read at (0: it must not exist).
func (t *txn) checkIndex(key string, index uint64, onFail error) {
	if index == 0 {
		t.add(&api.KVTxnOp{Verb: api.KVCheckNotExists, Key: key}, onFail)
		return
	}
	t.add(&api.KVTxnOp{Verb: api.KVCheckIndex, Key: key, Index: index}, onFail)
}

// cas sets key to value if it still has ModifyIndex index (0: if absent).
func (t *txn) cas(key string, index uint64, value []byte, onFail error) {
	t.add(&api.KVTxnOp{Verb: api.KVCAS, Key: key, Index: index, Value: value}, onFail)
}

// set sets key to value, whatever it holds.
func (t *txn) set(key string, value []byte) {
	t.add(&api.KVTxnOp{Verb: api.KVSet, Key: key, Value: value}, nil)
}

// deleteCAS deletes key if it still has ModifyIndex index.
func (t *txn) deleteCAS(key string, index uint64, onFail error) {
	t.add(&api.KVTxnOp{Verb: api.KVDeleteCAS, Key: key, Index: index}, onFail)
}

// committed maps each key a committed transaction set to its new
// ModifyIndex.
type committed map[string]uint64

// sets reports whether the transaction sets a key: only then does Consul's
// answer carry the index it committed at.
func (t *txn) sets() bool {
	for _, op := range t.ops {
		switch op.KV.Verb {
		case api.KVSet, api.KVCAS, api.KVLock, api.KVUnlock:
			return true
		}
	}
	return false
}

// commit runs t. It returns the new indexes when it committed; errNotLeader
// (after telling fence) when the session no longer holds the lock; errRetry
// or the operation's own outcome when another guard failed; and any other
// error when Consul could not be asked.
func (s *Store) commit(ctx context.Context, session string, t *txn) (committed, error) {
	if !t.sets() {
		// A write's answer names the index it committed at; Consul's
		// answer to a transaction holds none (no X-Consul-Index) but in
		// the keys it set.
		t.add(&api.KVTxnOp{Verb: api.KVSet, Key: s.keys.written()}, nil)
	}
	if len(t.ops) > maxTxnOps {
		return nil, fmt.Errorf("%s: %d operations exceed Consul's limit of %d", t.name, len(t.ops), maxTxnOps)
	}
	// Bounded: a call stuck behind a failure of Consul must not hold the
	// write turn, and every write behind it, for the whole write_timeout.
	cctx, stop := boundCall(ctx, s.client)
	defer stop()
	ok, resp, _, err := s.client.Txn().Txn(t.ops, (&api.QueryOptions{}).WithContext(cctx))
	err = callErr(cctx, err)
	if err != nil {
		s.m.txns.WithLabelValues(t.name, "error").Inc()
		return nil, fmt.Errorf("%s transaction: %w", t.name, err)
	}
	if ok {
		s.m.txns.WithLabelValues(t.name, "committed").Inc()
		out := make(committed, len(resp.Results))
		for _, r := range resp.Results {
			if r != nil && r.KV != nil {
				out[r.KV.Key] = r.KV.ModifyIndex
				s.seen = max(s.seen, r.KV.ModifyIndex)
			}
		}
		return out, nil
	}
	if len(resp.Errors) == 0 {
		s.m.txns.WithLabelValues(t.name, "error").Inc()
		return nil, fmt.Errorf("%s transaction rolled back without a reason", t.name)
	}
	first := resp.Errors[0]
	if first.OpIndex < 0 || first.OpIndex >= len(t.onFail) {
		s.m.txns.WithLabelValues(t.name, "error").Inc()
		return nil, fmt.Errorf("%s transaction rolled back at unknown operation %d: %s", t.name, first.OpIndex, first.What)
	}
	if first.OpIndex == 0 {
		s.m.txns.WithLabelValues(t.name, "fenced").Inc()
		s.log.Warn("write fenced off: this replica no longer holds the leader lock", "op", t.name, "reason", first.What)
		s.fence.Lost(session)
		return nil, errNotLeader
	}
	s.m.txns.WithLabelValues(t.name, "conflict").Inc()
	s.log.Debug("transaction rolled back", "op", t.name, "reason", first.What)
	if e := t.onFail[first.OpIndex]; e != nil {
		return nil, e
	}
	return nil, errRetry
}

// readKeys reads keys in one consistent read-only transaction. Missing keys
// are absent from the result.
func (s *Store) readKeys(ctx context.Context, keys ...string) (map[string]*api.KVPair, error) {
	ops := make(api.TxnOps, 0, len(keys))
	for _, k := range keys {
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVGetOrEmpty, Key: k}})
	}
	res, err := s.readTxn(ctx, ops)
	if err != nil {
		return nil, err
	}
	out := make(map[string]*api.KVPair, len(keys))
	for _, r := range res {
		if r != nil && r.KV != nil && r.KV.ModifyIndex != 0 {
			out[r.KV.Key] = r.KV
		}
	}
	return out, nil
}

// readTrees reads every key under each prefix in one consistent read-only
// transaction, so that they are all seen at the same Raft index.
func (s *Store) readTrees(ctx context.Context, prefixes ...string) (map[string]api.KVPairs, error) {
	ops := make(api.TxnOps, 0, len(prefixes))
	for _, p := range prefixes {
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVGetTree, Key: p}})
	}
	res, err := s.readTxn(ctx, ops)
	if err != nil {
		return nil, err
	}
	out := make(map[string]api.KVPairs, len(prefixes))
	for _, r := range res {
		if r == nil || r.KV == nil {
			continue
		}
		for _, p := range prefixes {
			if len(r.KV.Key) > len(p) && r.KV.Key[:len(p)] == p {
				out[p] = append(out[p], r.KV)
				break
			}
		}
	}
	return out, nil
}

func (s *Store) readTxn(ctx context.Context, ops api.TxnOps) (api.TxnResults, error) {
	cctx, stop := boundCall(ctx, s.client)
	defer stop()
	ok, resp, _, err := s.client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(cctx))
	err = callErr(cctx, err)
	if err != nil {
		return nil, fmt.Errorf("consul read: %w", err)
	}
	if !ok {
		what := "unknown reason"
		if len(resp.Errors) > 0 {
			what = resp.Errors[0].What
		}
		return nil, fmt.Errorf("consul read failed: %s", what)
	}
	for _, r := range resp.Results {
		if r != nil && r.KV != nil {
			s.seen = max(s.seen, r.KV.ModifyIndex)
		}
	}
	return resp.Results, nil
}
