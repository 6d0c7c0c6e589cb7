package router

import (
	"encoding/base64"
	"fmt"

	"github.com/hashicorp/consul/api"
)

// KVEntry is one key of a listed KV folder.
type KVEntry struct {
	Key         []byte
	ModifyIndex uint64
	// Value is the value itself, or, when Base64 is set, the value encoded
	// as Consul's HTTP API sends it: the router decodes it only when the
	// key's ModifyIndex changed.
	Value  []byte
	Base64 bool
}

// ValueIn returns e's value: Value itself or, when it is still in base64,
// its decoding into *scratch, which grows as needed. It is valid while e
// is and until scratch is used again.
func (e *KVEntry) ValueIn(scratch *[]byte) ([]byte, error) {
	if !e.Base64 {
		return e.Value, nil
	}
	var err error
	*scratch, err = base64.StdEncoding.AppendDecode((*scratch)[:0], e.Value)
	return *scratch, err
}

// KVList is the answer of a KVLister. Its entries may point into the
// lister's buffers: they are valid until Release is called.
type KVList struct {
	Entries []KVEntry
	// Release hands the buffers back; nil when there are none.
	Release func()
}

// Free hands the buffers back, if any; the entries are invalid after it.
func (l *KVList) Free() { l.release() }

func (l *KVList) release() {
	if l != nil && l.Release != nil {
		l.Release()
	}
}

// KVLister lists a KV folder recursively with a blocking query, as
// consul/api's KV().List does, entries sorted by key. The router calls one
// lister from several goroutines at once.
//
// consul/api decodes every key and value of the answer into structs: with
// 100,000 tenants, 30 MB of JSON and 0.6 s of CPU at every change of any of
// them. A lister that reads the JSON in place (internal/consulkv) does it
// in a fifth of that and leaves the values alone; one that also streams
// (KVStreamer) holds one entry at a time.
type KVLister interface {
	ListKV(folder string, q *api.QueryOptions) (*KVList, *api.QueryMeta, error)
}

// NewAPILister lists and reads through consul/api, as the router does
// when Config.KV is nil.
func NewAPILister(client *api.Client) KVLister { return apiLister{kv: client.KV(), txn: client.Txn()} }

// apiLister lists through consul/api: the router's default.
type apiLister struct {
	kv  *api.KV
	txn *api.Txn
}

func (a apiLister) ListKV(folder string, q *api.QueryOptions) (*KVList, *api.QueryMeta, error) {
	pairs, meta, err := a.kv.List(folder, q)
	if err != nil {
		return nil, nil, err
	}
	return &KVList{Entries: entriesOf(pairs)}, meta, nil
}

// entriesOf turns consul/api's pairs into entries.
func entriesOf(pairs api.KVPairs) []KVEntry {
	entries := make([]KVEntry, 0, len(pairs))
	for _, p := range pairs {
		if p != nil {
			entries = append(entries, KVEntry{Key: []byte(p.Key), ModifyIndex: p.ModifyIndex, Value: p.Value})
		}
	}
	return entries
}

// KVTxnReader reads keys and, recursively, folders in one read-only
// transaction (Consul's /v1/txn), so that all of them are seen at the same
// Raft index; a missing key comes back with ModifyIndex 0. The change log's
// follower resyncs and catches up through it. A KVLister that implements
// it (internal/consulkv) is used for both; otherwise consul/api is.
type KVTxnReader interface {
	ReadKV(keys, folders []string, q *api.QueryOptions) (*KVList, *api.QueryMeta, error)
}

func (a apiLister) ReadKV(keys, folders []string, q *api.QueryOptions) (*KVList, *api.QueryMeta, error) {
	ops := make(api.TxnOps, 0, len(keys)+len(folders))
	for _, k := range keys {
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVGetOrEmpty, Key: k}})
	}
	for _, f := range folders {
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVGetTree, Key: f}})
	}
	ok, resp, meta, err := a.txn.Txn(ops, q)
	if err != nil {
		return nil, nil, fmt.Errorf("read transaction: %w", err)
	}
	if !ok {
		what := "no reason given"
		if len(resp.Errors) > 0 {
			what = resp.Errors[0].What
		}
		return nil, nil, fmt.Errorf("read transaction failed: %s", what)
	}
	list := &KVList{}
	for _, r := range resp.Results {
		if r != nil && r.KV != nil {
			list.Entries = append(list.Entries, KVEntry{Key: []byte(r.KV.Key), ModifyIndex: r.KV.ModifyIndex, Value: r.KV.Value})
		}
	}
	return list, meta, nil
}

// KVGetter reads one key as consul/api's KV().Get does, with a blocking
// query; the pair it returns needs only Key, Value and ModifyIndex. The
// change log's follower reads the log's head through it, at every change,
// on every reader: a KVLister that implements it (internal/consulkv asks
// Consul for the value as stored, without JSON or base64 around it) is
// used; otherwise consul/api is.
type KVGetter interface {
	GetKV(key string, q *api.QueryOptions) (*api.KVPair, *api.QueryMeta, error)
}

func (a apiLister) GetKV(key string, q *api.QueryOptions) (*api.KVPair, *api.QueryMeta, error) {
	return a.kv.Get(key, q)
}

// KVStreamer reads as KVLister and KVTxnReader do, but hands each entry to
// fn as it reads Consul's answer, holding no more of it than one entry:
// with 1,000,000 tenants the tenants/ folder is 300 MB of JSON, which a
// reader would otherwise hold whole, with its entries, while it decodes
// them. The entry and its slices are valid only during the call; an error
// of fn ends the read and is returned. A KVLister that implements it
// (internal/consulkv) is used for resyncs and the tenants/ folder.
type KVStreamer interface {
	StreamList(folder string, q *api.QueryOptions, fn func(*KVEntry) error) (*api.QueryMeta, error)
	StreamKV(keys, folders []string, q *api.QueryOptions, fn func(*KVEntry) error) (*api.QueryMeta, error)
}

// ReadEach reads as txn.ReadKV does and calls fn with each entry, as it
// reads them when txn streams (KVStreamer).
func ReadEach(txn KVTxnReader, keys, folders []string, q *api.QueryOptions, fn func(*KVEntry) error) (*api.QueryMeta, error) {
	if s, ok := txn.(KVStreamer); ok {
		return s.StreamKV(keys, folders, q, fn)
	}
	list, meta, err := txn.ReadKV(keys, folders, q)
	if err != nil {
		return nil, err
	}
	defer list.release()
	return meta, eachEntry(list, fn)
}

// ListEach lists as l.ListKV does and calls fn with each entry, as it
// reads them when l streams (KVStreamer).
func ListEach(l KVLister, folder string, q *api.QueryOptions, fn func(*KVEntry) error) (*api.QueryMeta, error) {
	if s, ok := l.(KVStreamer); ok {
		return s.StreamList(folder, q, fn)
	}
	list, meta, err := l.ListKV(folder, q)
	if err != nil {
		return nil, err
	}
	defer list.release()
	return meta, eachEntry(list, fn)
}

func eachEntry(list *KVList, fn func(*KVEntry) error) error {
	for i := range list.Entries {
		if err := fn(&list.Entries[i]); err != nil {
			return err
		}
	}
	return nil
}
