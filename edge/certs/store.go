package certs

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/crypto/acme/autocert"
)

// Folders under <prefix>certs/. autocert's names map onto them (Cache.key),
// so that each folder can be listed or watched on its own: the challenges
// of orders in flight are few and watched by every edge; certificates are
// many and read one by one.
const (
	folderAccount    = "account/"    // acme_account+key
	folderLive       = "live/"       // <domain>, <domain>+rsa: key and chain, PEM
	folderIndex      = "index/"      // <domain>: certMeta, written with live/ in one transaction
	folderChallenges = "challenges/" // <token>+http-01, <domain>+token
	folderLocks      = "locks/"      // <domain>: held by the edge ordering it
	folderFailures   = "failures/"   // <domain>: failure record, shared backoff
)

// opTimeout bounds a Consul call made without a deadline of its own.
const opTimeout = 10 * time.Second

// Cache is an autocert.Cache on Consul KV, under <prefix>certs/. It keeps
// autocert's names and value format (PEM private key, then the chain), so
// an autocert.Manager given this Cache shares certificates, the account key
// and challenges with podedge's edges.
//
// A certificate's Put also writes its index entry (expiry, serial, issuer)
// in the same transaction: edges watch the small index values instead of
// the certificates themselves.
type Cache struct {
	kv     *api.KV
	root   string // "<prefix>certs/"
	holder string
}

var _ autocert.Cache = (*Cache)(nil)

// NewCache returns the Cache of client under prefix ("podedge/"). holder
// names the writer in index entries; it may be empty.
func NewCache(client *api.Client, prefix, holder string) *Cache {
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return &Cache{kv: client.KV(), root: prefix + "certs/", holder: holder}
}

// key maps an autocert cache name to its KV key.
func (c *Cache) key(name string) string {
	switch {
	case strings.HasSuffix(name, "+http-01") || strings.HasSuffix(name, "+token"):
		return c.root + folderChallenges + name
	case strings.HasPrefix(name, "acme_account"):
		return c.root + folderAccount + name
	}
	return c.root + folderLive + name
}

// isLive reports whether name is a certificate (not a challenge or an
// account key).
func (c *Cache) isLive(name string) bool {
	return strings.HasPrefix(c.key(name), c.root+folderLive)
}

// Get returns the value of name, or autocert.ErrCacheMiss.
func (c *Cache) Get(ctx context.Context, name string) ([]byte, error) {
	p, err := c.get(ctx, c.key(name), false)
	if err != nil {
		return nil, err
	}
	if p == nil {
		return nil, autocert.ErrCacheMiss
	}
	return p.Value, nil
}

// Put stores data under name; a certificate's index entry is written in
// the same transaction.
func (c *Cache) Put(ctx context.Context, name string, data []byte) error {
	if c.isLive(name) {
		_, err := c.putLive(ctx, name, data)
		return err
	}
	ctx, cancel := bounded(ctx)
	defer cancel()
	if _, err := c.kv.Put(&api.KVPair{Key: c.key(name), Value: data}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("consul: put %s: %w", c.key(name), err)
	}
	return nil
}

// Delete removes name (and a certificate's index entry); a missing name is
// not an error.
func (c *Cache) Delete(ctx context.Context, name string) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	ops := api.KVTxnOps{{Verb: api.KVDelete, Key: c.key(name)}}
	if c.isLive(name) {
		ops = append(ops, &api.KVTxnOp{Verb: api.KVDelete, Key: c.root + folderIndex + name})
	}
	ok, resp, _, err := c.kv.Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("consul: delete %s: %w", c.key(name), err)
	}
	if !ok {
		return fmt.Errorf("consul: delete %s: %s", c.key(name), txnErrors(resp))
	}
	return nil
}

// putLive writes a certificate and its index entry in one transaction and
// returns the index they were written at.
func (c *Cache) putLive(ctx context.Context, name string, data []byte) (uint64, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	meta := certMeta{Holder: c.holder, Stored: time.Now().UTC().Truncate(time.Second)}
	if leaf, err := leafOf(data); err == nil {
		meta.NotBefore, meta.NotAfter = leaf.NotBefore.UTC(), leaf.NotAfter.UTC()
		meta.Serial = leaf.SerialNumber.Text(16)
		meta.Issuer = leaf.Issuer.CommonName
	}
	mj, _ := json.Marshal(meta)
	ops := api.KVTxnOps{
		{Verb: api.KVSet, Key: c.key(name), Value: data},
		{Verb: api.KVSet, Key: c.root + folderIndex + name, Value: mj},
	}
	ok, resp, _, err := c.kv.Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return 0, fmt.Errorf("consul: store %s: %w", c.key(name), err)
	}
	if !ok || len(resp.Results) == 0 {
		return 0, fmt.Errorf("consul: store %s: %s", c.key(name), txnErrors(resp))
	}
	return resp.Results[0].ModifyIndex, nil
}

// get reads one key; consistent reads go through the Consul leader with a
// barrier (after taking a lock, to see what the previous holder wrote).
func (c *Cache) get(ctx context.Context, key string, consistent bool) (*api.KVPair, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	p, _, err := c.kv.Get(key, (&api.QueryOptions{RequireConsistent: consistent}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("consul: get %s: %w", key, err)
	}
	return p, nil
}

// loadLive reads the certificate of name. It returns (nil, nil) when there
// is none, a *badValue when the value is not a usable certificate for name
// (expired, corrupt), and another error when Consul cannot be read.
func (c *Cache) loadLive(ctx context.Context, name string, consistent bool, now time.Time) (*stored, error) {
	p, err := c.get(ctx, c.key(name), consistent)
	if err != nil || p == nil {
		return nil, err
	}
	cert, err := parseCert(name, p.Value, now)
	if err != nil {
		return nil, &badValue{fmt.Errorf("%s: %w", p.Key, err)}
	}
	return &stored{cert: cert, index: p.ModifyIndex}, nil
}

// badValue is a value in KV that is not what its key should hold.
type badValue struct{ err error }

func (b *badValue) Error() string { return b.err.Error() }
func (b *badValue) Unwrap() error { return b.err }

// stored is a certificate read from or written to KV.
type stored struct {
	cert  *tls.Certificate // Leaf set
	index uint64           // ModifyIndex of its live/ key
}

// certMeta is the value of index/<domain>: what operators and edges need
// to know of a certificate without reading it.
type certMeta struct {
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	Serial    string    `json:"serial"`
	Issuer    string    `json:"issuer"`
	Holder    string    `json:"stored_by,omitempty"`
	Stored    time.Time `json:"stored"`
}

// failure is the value of failures/<domain>: the last failed issuance and
// when the next may be tried, by any edge.
type failure struct {
	Failures int       `json:"failures"`
	RetryAt  time.Time `json:"retry_at"`
	Error    string    `json:"error"`
	CA       string    `json:"ca"`
	Holder   string    `json:"edge"`
	At       time.Time `json:"at"`
}

// loadFailure reads the failure record of name; nil when there is none or
// it does not parse (a bad record must not block issuance).
func (c *Cache) loadFailure(ctx context.Context, name string, consistent bool) (*failure, error) {
	p, err := c.get(ctx, c.root+folderFailures+name, consistent)
	if err != nil || p == nil {
		return nil, err
	}
	var f failure
	if json.Unmarshal(p.Value, &f) != nil {
		return nil, nil
	}
	return &f, nil
}

// putFailure records a failed issuance of name.
func (c *Cache) putFailure(ctx context.Context, name string, f failure) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	raw, _ := json.Marshal(f)
	if _, err := c.kv.Put(&api.KVPair{Key: c.root + folderFailures + name, Value: raw}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("consul: record failure of %s: %w", name, err)
	}
	return nil
}

// clearFailure removes the failure record of name.
func (c *Cache) clearFailure(ctx context.Context, name string) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	if _, err := c.kv.Delete(c.root+folderFailures+name, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("consul: clear failure of %s: %w", name, err)
	}
	return nil
}

// bounded gives ctx a deadline of opTimeout unless it has one.
func bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, opTimeout)
}

func txnErrors(resp *api.KVTxnResponse) string {
	if resp == nil || len(resp.Errors) == 0 {
		return "transaction rolled back"
	}
	msgs := make([]string, len(resp.Errors))
	for i, e := range resp.Errors {
		msgs[i] = e.What
	}
	return strings.Join(msgs, "; ")
}

// encodeCert is autocert's value format: the private key, then the chain,
// in PEM. EC keys are written in SEC 1 form and RSA keys in PKCS #1, as
// autocert writes them, for readers that expect those.
func encodeCert(cert *tls.Certificate) ([]byte, error) {
	var block *pem.Block
	switch k := cert.PrivateKey.(type) {
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return nil, fmt.Errorf("encoding private key: %w", err)
		}
		block = &pem.Block{Type: "EC PRIVATE KEY", Bytes: der}
	case *rsa.PrivateKey:
		block = &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}
	default:
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return nil, fmt.Errorf("encoding private key: %w", err)
		}
		block = &pem.Block{Type: "PRIVATE KEY", Bytes: der}
	}
	var buf bytes.Buffer
	_ = pem.Encode(&buf, block)
	for _, b := range cert.Certificate {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: b})
	}
	return buf.Bytes(), nil
}

// parseCert turns a value in autocert's format into a certificate for name
// that is valid at now.
func parseCert(name string, data []byte, now time.Time) (*tls.Certificate, error) {
	cert, err := parsePair(data)
	if err != nil {
		return nil, err
	}
	leaf := cert.Leaf
	switch {
	case now.Before(leaf.NotBefore):
		return nil, fmt.Errorf("certificate is not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	case !now.Before(leaf.NotAfter):
		return nil, fmt.Errorf("certificate expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if err := leaf.VerifyHostname(name); err != nil {
		return nil, err
	}
	return cert, nil
}

// parsePair splits a value in autocert's format into its key and chain and
// checks that they match.
func parsePair(data []byte) (*tls.Certificate, error) {
	block, rest := pem.Decode(data)
	if block == nil || !strings.Contains(block.Type, "PRIVATE KEY") {
		return nil, errors.New("value does not start with a PEM private key")
	}
	cert, err := tls.X509KeyPair(rest, pem.EncodeToMemory(block))
	if err != nil {
		return nil, err
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, err
		}
	}
	return &cert, nil
}

// leafOf parses the first certificate of a value in autocert's format.
func leafOf(data []byte) (*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no certificate")
		}
		if b.Type == "CERTIFICATE" {
			return x509.ParseCertificate(b.Bytes)
		}
	}
}
