package leader

import (
	"context"
	"encoding/base64"
	"fmt"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/router"
)

// folderRead is keys and folders read at one Raft index through the
// replica's KV reader, which parses Consul's answer in place
// (internal/consulkv): a read of the tenants folder is 30 MB of JSON at
// 100,000 tenants, and consul/api's decoding of it into []*KVPair took
// about 200 MB of the leader's memory at once, the peak of its resident
// set. The entries point into the reader's buffers until free.
type folderRead struct {
	list *router.KVList
	raw  []byte // scratch for base64 values
}

// readFolders reads keys and, recursively, folders in one read-only
// transaction.
func (s *Store) readFolders(ctx context.Context, keys, folders []string) (*folderRead, error) {
	cctx, stop := boundCall(ctx, s.client)
	defer stop()
	list, _, err := s.kv.ReadKV(keys, folders, (&api.QueryOptions{}).WithContext(cctx))
	err = callErr(cctx, err)
	if err != nil {
		return nil, fmt.Errorf("consul read: %w", err)
	}
	for i := range list.Entries {
		s.seen = max(s.seen, list.Entries[i].ModifyIndex)
	}
	return &folderRead{list: list}, nil
}

func (r *folderRead) free() { r.list.Free() }

// value returns e's value, valid until the next call; nil when it does not
// decode.
func (r *folderRead) value(e *router.KVEntry) []byte {
	if !e.Base64 {
		return e.Value
	}
	var err error
	if r.raw, err = base64.StdEncoding.AppendDecode(r.raw[:0], e.Value); err != nil {
		return nil
	}
	return r.raw
}

// key returns the entry of key, nil when it does not exist.
func (r *folderRead) key(key string) *router.KVEntry {
	for i := range r.list.Entries {
		e := &r.list.Entries[i]
		if string(e.Key) == key {
			if e.ModifyIndex == 0 {
				return nil
			}
			return e
		}
	}
	return nil
}

// each calls fn with the name and entry of every key directly under dir.
func (r *folderRead) each(dir string, fn func(name string, e *router.KVEntry)) {
	for i := range r.list.Entries {
		e := &r.list.Entries[i]
		if e.ModifyIndex == 0 || len(e.Key) <= len(dir) || string(e.Key[:len(dir)]) != dir {
			continue
		}
		fn(string(e.Key[len(dir):]), e)
	}
}

// pairs copies the keys directly under dir, by name, out of the reader's
// buffers: for the small folders a reconciliation keeps (pods, seats, the
// domain index).
func (r *folderRead) pairs(dir string) map[string]*api.KVPair {
	out := map[string]*api.KVPair{}
	r.each(dir, func(name string, e *router.KVEntry) {
		v := r.value(e)
		out[name] = &api.KVPair{Key: string(e.Key), ModifyIndex: e.ModifyIndex, Value: append([]byte{}, v...)}
	})
	return out
}
