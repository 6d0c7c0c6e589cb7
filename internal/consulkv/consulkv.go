// Package consulkv lists a folder of Consul's KV store straight from the
// HTTP API's JSON, for the router.
//
// consul/api decodes every key and value of an answer into structs; with
// 100,000 tenants that is 30 MB of JSON and about 0.6 s of CPU on every edge,
// dnsd and leader replica at each change of any tenant. Reading the JSON in
// place, in one pass that keeps only what the router needs, takes a small
// part of that, and the values stay in base64 until the router finds their
// ModifyIndex changed. StreamList and StreamKV read the answer a window at
// a time and hand each entry over as it is read, so that a read of the
// whole platform (300 MB of JSON at 1,000,000 tenants) holds a quarter of
// a megabyte of it, not all of it.
package consulkv

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/router"
)

// Lister is a router.KVLister over Consul's HTTP API. It is safe for
// concurrent use.
type Lister struct {
	client *http.Client
	base   url.URL // scheme and host of the agent
	token  string
	dc     string

	// free holds the buffers of answers released. Not a sync.Pool: a
	// 30 MB buffer dropped at every GC would make each answer grow it
	// again. The router reads two folders at a time, so there are two.
	mu   sync.Mutex
	free []*buffers
}

// buffers hold one answer while the router reads it.
type buffers struct {
	body bytes.Buffer
	list []router.KVEntry
}

// New returns a Lister for the agent cfg names, with cfg's scheme, TLS
// settings, token and datacenter. An agent on a unix socket is not
// supported: the router then lists through consul/api (New returns nil and
// no error).
func New(cfg *api.Config) (*Lister, error) {
	// The address may carry its scheme, as consul/api allows.
	address, scheme := cfg.Address, cfg.Scheme
	if s, rest, ok := strings.Cut(address, "://"); ok {
		address, scheme = rest, s
	}
	if scheme == "unix" {
		return nil, nil
	}
	client := cfg.HttpClient
	if client == nil {
		transport := cfg.Transport
		if transport == nil {
			transport = http.DefaultTransport.(*http.Transport).Clone()
		}
		var err error
		if client, err = api.NewHttpClient(transport, cfg.TLSConfig); err != nil {
			return nil, fmt.Errorf("consul TLS settings: %w", err)
		}
	}
	if scheme == "" {
		scheme = "http"
	}
	if scheme != "http" && scheme != "https" {
		return nil, fmt.Errorf("consul scheme %q: want http or https", scheme)
	}
	token := cfg.Token
	if token == "" && cfg.TokenFile != "" {
		// As consul/api does with CONSUL_HTTP_TOKEN_FILE.
		raw, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("consul token file: %w", err)
		}
		token = strings.TrimSpace(string(raw))
	}
	return &Lister{client: client, base: url.URL{Scheme: scheme, Host: address}, token: token, dc: cfg.Datacenter}, nil
}

// ListKV lists folder recursively with the blocking query q.
func (l *Lister) ListKV(folder string, q *api.QueryOptions) (*router.KVList, *api.QueryMeta, error) {
	resp, meta, err := l.kvRequest("list", folder, "recurse", q)
	if err != nil {
		return nil, nil, err
	}
	if resp == nil {
		return &router.KVList{}, meta, nil
	}
	defer resp.Body.Close()
	b := l.get()
	list, err := b.read(resp.Body)
	if err != nil {
		l.put(b)
		return nil, nil, fmt.Errorf("list %s: %w", folder, err)
	}
	return &router.KVList{Entries: list, Release: func() { l.put(b) }}, meta, nil
}

// StreamList is ListKV handing each entry to fn as it reads the answer,
// holding no more of it than its largest entry. The entry is valid only
// during the call; an error of fn ends the read and is returned.
func (l *Lister) StreamList(folder string, q *api.QueryOptions, fn func(*router.KVEntry) error) (*api.QueryMeta, error) {
	resp, meta, err := l.kvRequest("list", folder, "recurse", q)
	if err != nil {
		return nil, err
	}
	if resp == nil {
		return meta, nil
	}
	defer resp.Body.Close()
	if err := streamList(newStream(resp.Body, streamWindow), fn); err != nil {
		return nil, fmt.Errorf("list %s: %w", folder, err)
	}
	return meta, nil
}

// maxValue bounds a value GetKV reads: Consul's own limit is 512 KiB by
// default (kv_max_value_size).
const maxValue = 16 << 20

// GetKV reads key as consul/api's KV().Get does, with the blocking query
// q, but asks for the value as stored (Consul's ?raw): no JSON around it
// and no base64 in it, on Consul's side or here. The pair has Key, Value
// and ModifyIndex only (Consul gives a key's ModifyIndex as the index of
// its read); nil when the key does not exist.
func (l *Lister) GetKV(key string, q *api.QueryOptions) (*api.KVPair, *api.QueryMeta, error) {
	resp, meta, err := l.kvRequest("get", key, "raw", q)
	if err != nil || resp == nil {
		return nil, meta, err
	}
	defer resp.Body.Close()
	value, err := io.ReadAll(io.LimitReader(resp.Body, maxValue+1))
	switch {
	case err != nil:
		return nil, nil, fmt.Errorf("get %s: %w", key, err)
	case len(value) > maxValue:
		return nil, nil, fmt.Errorf("get %s: value over %d bytes", key, maxValue)
	case resp.ContentLength >= 0 && int64(len(value)) != resp.ContentLength:
		return nil, nil, fmt.Errorf("get %s: %d bytes of a value of %d", key, len(value), resp.ContentLength)
	}
	return &api.KVPair{Key: key, Value: value, ModifyIndex: meta.LastIndex}, meta, nil
}

// kvRequest sends a query of key with the parameter mode (recurse, raw)
// and returns Consul's answer, whose body the caller reads and closes; no
// answer and no error when Consul has no such key or folder. what names
// the read in errors.
func (l *Lister) kvRequest(what, key, mode string, q *api.QueryOptions) (*http.Response, *api.QueryMeta, error) {
	if q == nil {
		q = &api.QueryOptions{}
	}
	u := l.base
	u.Path = "/v1/kv/" + key
	params := url.Values{mode: {""}}
	if q.AllowStale {
		params.Set("stale", "")
	}
	if q.RequireConsistent {
		params.Set("consistent", "")
	}
	if q.WaitIndex > 0 {
		params.Set("index", strconv.FormatUint(q.WaitIndex, 10))
	}
	if q.WaitTime > 0 {
		params.Set("wait", strconv.FormatInt(max(q.WaitTime.Milliseconds(), 1), 10)+"ms")
	}
	if dc := cmp.Or(q.Datacenter, l.dc); dc != "" {
		params.Set("dc", dc)
	}
	u.RawQuery = params.Encode()
	req, err := http.NewRequestWithContext(q.Context(), http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: %w", what, key, err)
	}
	if token := cmp.Or(q.Token, l.token); token != "" {
		req.Header.Set("X-Consul-Token", token)
	}

	start := time.Now()
	resp, err := l.client.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: %w", what, key, err)
	}
	meta := &api.QueryMeta{RequestTime: time.Since(start)}
	fail := func(err error) (*http.Response, *api.QueryMeta, error) {
		resp.Body.Close()
		return nil, nil, err
	}
	if s := resp.Header.Get("X-Consul-Index"); s != "" {
		if meta.LastIndex, err = strconv.ParseUint(s, 10, 64); err != nil {
			return fail(fmt.Errorf("%s %s: X-Consul-Index %q: %w", what, key, s, err))
		}
	}
	meta.KnownLeader = resp.Header.Get("X-Consul-KnownLeader") == "true"
	switch resp.StatusCode {
	case http.StatusOK:
		return resp, meta, nil
	case http.StatusNotFound: // no such key, or an empty folder
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, meta, nil
	default:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fail(fmt.Errorf("%s %s: Consul answered %s: %s", what, key, resp.Status, bytes.TrimSpace(msg)))
	}
}

func (l *Lister) get() *buffers {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := len(l.free); n > 0 {
		b := l.free[n-1]
		l.free = l.free[:n-1]
		return b
	}
	return new(buffers)
}

func (l *Lister) put(b *buffers) {
	l.mu.Lock()
	l.free = append(l.free, b)
	l.mu.Unlock()
}

// read parses an answer into b's entries, which point into b's buffer.
func (b *buffers) read(body io.Reader) ([]router.KVEntry, error) {
	b.body.Reset()
	if _, err := b.body.ReadFrom(body); err != nil {
		return nil, fmt.Errorf("read answer: %w", err)
	}
	list, err := parseList(b.body.Bytes(), b.list[:0])
	if err != nil {
		return nil, err
	}
	b.list = list
	return list, nil
}

var _ router.KVLister = (*Lister)(nil)
