package router

import (
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

// KVList is the answer of a KVLister. Its entries may point into the
// lister's buffers: they are valid until Release is called.
type KVList struct {
	Entries []KVEntry
	// Release hands the buffers back; nil when there are none.
	Release func()
}

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
// in a fifth of that and leaves the values alone.
type KVLister interface {
	ListKV(folder string, q *api.QueryOptions) (*KVList, *api.QueryMeta, error)
}

// apiLister lists through consul/api: the router's default.
type apiLister struct{ kv *api.KV }

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
