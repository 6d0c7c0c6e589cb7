package consulkv

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/router"
)

// txnOp is one operation of a read-only transaction, as /v1/txn takes it.
type txnOp struct {
	KV struct {
		Verb string
		Key  string
	}
}

// ReadKV reads keys and, recursively, folders in one read-only transaction,
// so that all of them are seen at the same Raft index. A key that does not
// exist comes back with ModifyIndex 0. q's AllowStale lets any server
// answer, as for a list.
func (l *Lister) ReadKV(keys, folders []string, q *api.QueryOptions) (*router.KVList, *api.QueryMeta, error) {
	resp, meta, err := l.txnRequest(keys, folders, q)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b := l.get()
	b.body.Reset()
	if _, err := b.body.ReadFrom(resp.Body); err != nil {
		l.put(b)
		return nil, nil, fmt.Errorf("read transaction: read answer: %w", err)
	}
	list, err := parseTxn(b.body.Bytes(), b.list[:0])
	if err != nil {
		l.put(b)
		return nil, nil, fmt.Errorf("read transaction: %w", err)
	}
	b.list = list
	return &router.KVList{Entries: list, Release: func() { l.put(b) }}, meta, nil
}

// StreamKV is ReadKV handing each entry to fn as it reads the answer,
// holding no more of it than its largest entry. The entry is valid only
// during the call; an error of fn ends the read and is returned.
func (l *Lister) StreamKV(keys, folders []string, q *api.QueryOptions, fn func(*router.KVEntry) error) (*api.QueryMeta, error) {
	resp, meta, err := l.txnRequest(keys, folders, q)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if err := streamTxn(newStream(resp.Body, streamWindow), fn); err != nil {
		return nil, fmt.Errorf("read transaction: %w", err)
	}
	return meta, nil
}

// txnRequest sends the transaction and returns Consul's answer, whose body
// the caller reads and closes, when it is a success.
func (l *Lister) txnRequest(keys, folders []string, q *api.QueryOptions) (*http.Response, *api.QueryMeta, error) {
	if q == nil {
		q = &api.QueryOptions{}
	}
	ops := make([]txnOp, 0, len(keys)+len(folders))
	for _, k := range keys {
		var op txnOp
		op.KV.Verb, op.KV.Key = string(api.KVGetOrEmpty), k
		ops = append(ops, op)
	}
	for _, f := range folders {
		var op txnOp
		op.KV.Verb, op.KV.Key = string(api.KVGetTree), f
		ops = append(ops, op)
	}
	body, err := json.Marshal(ops)
	if err != nil {
		return nil, nil, err
	}
	u := l.base
	u.Path = "/v1/txn"
	params := u.Query()
	if q.AllowStale {
		params.Set("stale", "")
	}
	if q.RequireConsistent {
		params.Set("consistent", "")
	}
	if dc := cmp.Or(q.Datacenter, l.dc); dc != "" {
		params.Set("dc", dc)
	}
	u.RawQuery = params.Encode()
	req, err := http.NewRequestWithContext(q.Context(), http.MethodPut, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, nil, fmt.Errorf("read transaction: %w", err)
	}
	if token := cmp.Or(q.Token, l.token); token != "" {
		req.Header.Set("X-Consul-Token", token)
	}
	start := time.Now()
	resp, err := l.client.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("read transaction: %w", err)
	}
	meta := &api.QueryMeta{RequestTime: time.Since(start)}
	if s := resp.Header.Get("X-Consul-Index"); s != "" {
		meta.LastIndex, _ = strconv.ParseUint(s, 10, 64)
	}
	meta.KnownLeader = resp.Header.Get("X-Consul-KnownLeader") == "true"
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		return nil, nil, fmt.Errorf("read transaction: Consul answered %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	return resp, meta, nil
}

// parseTxn reads Consul's answer to a read-only transaction,
// {"Results":[{"KV":{...}},...],"Errors":null}, appending one entry per
// KV result, in the order of the results. It reads in place, as parseList.
func parseTxn(body []byte, entries []router.KVEntry) ([]router.KVEntry, error) {
	s := scanner{b: body}
	entries, err := s.txn(entries)
	if err != nil {
		return nil, fmt.Errorf("answer is not a transaction's: at byte %d: %w", s.i, err)
	}
	return entries, nil
}

func (s *scanner) txn(entries []router.KVEntry) ([]router.KVEntry, error) {
	s.space()
	err := s.object(func(name []byte) error {
		if !bytes.EqualFold(name, []byte("Results")) {
			return s.txnField(name)
		}
		var e router.KVEntry
		return s.array(func() error {
			return s.result(&e, func(e *router.KVEntry) error {
				entries = append(entries, *e)
				return nil
			})
		})
	})
	if err != nil {
		return nil, err
	}
	s.space()
	if s.i != len(s.b) {
		return nil, fmt.Errorf("%s after the answer", show(s.b[s.i]))
	}
	return entries, nil
}

// result reads one of the transaction's results, {"KV":{...}}, into e
// and calls fn with it; results of other kinds are skipped.
func (s *scanner) result(e *router.KVEntry, fn func(*router.KVEntry) error) error {
	return s.object(func(name []byte) error {
		if !bytes.EqualFold(name, []byte("KV")) || s.peek() == 'n' {
			return s.skip()
		}
		var err error
		if *e, err = s.entry(); err != nil {
			return err
		}
		return fn(e)
	})
}

// txnField reads a field of the transaction's answer other than Results:
// Errors must be null or empty; others are skipped.
func (s *scanner) txnField(name []byte) error {
	if !bytes.EqualFold(name, []byte("Errors")) {
		return s.skip()
	}
	if s.word("null") {
		return nil
	}
	start := s.i
	if err := s.skip(); err != nil {
		return err
	}
	if string(s.b[start:s.i]) != "[]" {
		return fmt.Errorf("the transaction failed: %s", s.b[start:s.i])
	}
	return nil
}

// object reads an object, calling field with each field's name once s.i
// is at its value (which field must read).
func (s *scanner) object(field func(name []byte) error) error {
	if s.word("null") {
		return nil
	}
	if err := s.expect('{'); err != nil {
		return err
	}
	s.space()
	if s.peek() == '}' {
		s.i++
		return nil
	}
	for {
		s.space()
		if s.peek() != '"' {
			return fmt.Errorf("want a field name, found %s", show(s.peek()))
		}
		name, err := s.str()
		if err != nil {
			return err
		}
		s.space()
		if err := s.expect(':'); err != nil {
			return err
		}
		s.space()
		if err := field(name); err != nil {
			return err
		}
		s.space()
		c := s.peek()
		s.i++
		if c == '}' {
			return nil
		}
		if c != ',' {
			return fmt.Errorf("want , or } in an object, found %s", show(c))
		}
	}
}

// array reads an array, calling item with s.i at each element.
func (s *scanner) array(item func() error) error {
	if s.word("null") {
		return nil
	}
	if err := s.expect('['); err != nil {
		return err
	}
	s.space()
	if s.peek() == ']' {
		s.i++
		return nil
	}
	for {
		s.space()
		if err := item(); err != nil {
			return err
		}
		s.space()
		c := s.peek()
		s.i++
		if c == ']' {
			return nil
		}
		if c != ',' {
			return fmt.Errorf("want , or ] in an array, found %s", show(c))
		}
	}
}

// skip reads any value.
func (s *scanner) skip() error {
	switch s.peek() {
	case '{':
		return s.object(func([]byte) error { return s.skip() })
	case '[':
		return s.array(s.skip)
	default:
		_, _, err := s.value()
		return err
	}
}
