package certs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

// Operators' certificates: pairs an operator gives, in files named in the
// configuration (one edge) or in Consul KV under <prefix>certs/operator/
// (every edge at once). They are served by SNI before anything from ACME:
// a name one of them holds exactly, then a name one of them covers with a
// wildcard. They are not renewed here: the operator replaces them, and the
// edges take the new pair without a restart (files are read again every
// CertificateCheck, KV is watched). A pair that does not parse, whose key
// does not match, that names no DNS name, or that is expired or not valid
// yet, is refused (logged once, counted) and what its source served before
// keeps serving.

// folderOperator holds operators' certificates in KV: operator/<id>, each
// value the PEM chain (leaf first) and the PEM private key, in any order.
const folderOperator = "operator/"

// Where an operator's certificate comes from: the source label of
// edge_tls_operator_certificate_errors_total.
const (
	sourceFile   = "file"
	sourceConsul = "consul"
)

// Why one is refused: the reason label.
const (
	opInvalid    = "invalid"    // does not parse, key does not match, no DNS name
	opExpired    = "expired"    // expired, or not valid yet
	opUnreadable = "unreadable" // a file that cannot be read
)

// operatorCert is a pair accepted from a source.
type operatorCert struct {
	source              string // "file:<cert file>" or "consul:<key>"
	cert                *tls.Certificate
	names               []string // the leaf's DNS names, lower case
	notBefore, notAfter time.Time
}

// operatorSet is the operators' certificates by the names they serve, as
// handshakes read them. Published sets are immutable.
type operatorSet struct {
	exact map[string]*operatorCert
	wild  map[string]*operatorCert // by what follows "*.": "example.com"
	n     int                      // pairs in the set
	// earliest is when the first of them expires (zero when none): the set
	// must be built again by then.
	earliest time.Time
}

// source is what one file pair or KV key gave, and what was refused from
// it last, not to log that again.
type source struct {
	id, kind string
	held     *operatorCert
	heldSum  [32]byte
	// refusedSum identifies what was refused last; timed is set when it
	// was refused for its dates, so that it is looked at again at every
	// check (it may become valid).
	refusedSum [32]byte
	timed      bool
}

// operators keeps the operators' certificates.
type operators struct {
	files   []CertFile
	kv      *api.KV
	folder  string // "<prefix>certs/operator/"
	check   time.Duration
	log     *slog.Logger
	metrics *metrics

	set atomic.Pointer[operatorSet]

	mu      sync.Mutex // serialises updates of sources and set
	sources map[string]*source
}

func newOperators(cfg *Config, cache *Cache, log *slog.Logger, m *metrics) *operators {
	o := &operators{
		files: cfg.Certificates, kv: cache.kv, folder: cache.root + folderOperator,
		check: cfg.CertificateCheck, log: log, metrics: m, sources: map[string]*source{},
	}
	o.set.Store(&operatorSet{exact: map[string]*operatorCert{}, wild: map[string]*operatorCert{}})
	return o
}

// lookup returns the operator's certificate for name (lower case, no
// trailing dot) valid at now: one that names it, else one whose wildcard
// covers it; nil when none. It does not allocate.
func (o *operators) lookup(name []byte, now time.Time) *tls.Certificate {
	s := o.set.Load()
	if s.n == 0 {
		return nil
	}
	if c := s.exact[string(name)]; c != nil && now.Before(c.notAfter) {
		return c.cert
	}
	if i := bytes.IndexByte(name, '.'); i > 0 {
		if c := s.wild[string(name[i+1:])]; c != nil && now.Before(c.notAfter) {
			return c.cert
		}
	}
	return nil
}

// count and earliest describe the set served, for the metrics.
func (o *operators) count() int { return o.set.Load().n }

func (o *operators) earliest() time.Time { return o.set.Load().earliest }

// run reads the files again every check and follows KV until ctx ends.
func (o *operators) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() {
		watchList(ctx, o.kv, o.folder, o.log, func(pairs api.KVPairs) { o.applyKV(time.Now(), pairs) })
	})
	t := time.NewTicker(o.check)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-t.C:
			o.checkFiles(time.Now())
		}
	}
}

// checkFiles reads every configured pair and takes those that changed.
func (o *operators) checkFiles(now time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	changed := false
	for _, f := range o.files {
		certPEM, err := os.ReadFile(f.Cert)
		var keyPEM []byte
		if err == nil {
			keyPEM, err = os.ReadFile(f.Key)
		}
		if o.consider(now, "file:"+f.Cert, sourceFile, certPEM, keyPEM, err) {
			changed = true
		}
	}
	if changed || o.expired(now) {
		o.publish(now)
	}
}

// applyKV takes the pairs under <prefix>certs/operator/: new and changed
// keys are considered, deleted ones dropped.
func (o *operators) applyKV(now time.Time, pairs api.KVPairs) {
	o.mu.Lock()
	defer o.mu.Unlock()
	changed := false
	seen := map[string]bool{}
	for _, p := range pairs {
		if rest := strings.TrimPrefix(p.Key, o.folder); rest == "" || strings.HasSuffix(rest, "/") {
			continue
		}
		id := "consul:" + p.Key
		seen[id] = true
		if o.consider(now, id, sourceConsul, p.Value, p.Value, nil) {
			changed = true
		}
	}
	for id, st := range o.sources {
		if st.kind != sourceConsul || seen[id] {
			continue
		}
		delete(o.sources, id)
		if st.held != nil {
			changed = true
			o.log.Info("operator certificate deleted from consul; no longer served", "source", id, "names", st.held.names)
		}
	}
	if changed || o.expired(now) {
		o.publish(now)
	}
}

// consider looks at what source id holds now (or the error reading it),
// and reports whether the pair it serves changed. Called with mu held.
func (o *operators) consider(now time.Time, id, kind string, certPEM, keyPEM []byte, readErr error) bool {
	st := o.sources[id]
	if st == nil {
		st = &source{id: id, kind: kind}
		o.sources[id] = st
	}
	if readErr != nil {
		o.refuse(st, opUnreadable, readErr, sha256.Sum256([]byte(readErr.Error())))
		return false
	}
	h := sha256.New()
	h.Write(certPEM)
	h.Write([]byte{0})
	h.Write(keyPEM)
	var sum [32]byte
	h.Sum(sum[:0])
	switch {
	case st.held != nil && sum == st.heldSum:
		st.refusedSum, st.timed = [32]byte{}, false
		return false
	case sum == st.refusedSum && !st.timed:
		return false // refused, and said so, already
	}
	c, reason, err := parseOperator(id, certPEM, keyPEM, now)
	if err != nil {
		o.refuse(st, reason, err, sum)
		return false
	}
	st.held, st.heldSum, st.refusedSum, st.timed = c, sum, [32]byte{}, false
	o.log.Info("operator certificate loaded", "source", id, "names", c.names,
		"not_after", c.notAfter.UTC().Format(time.RFC3339), "serial", c.cert.Leaf.SerialNumber.Text(16))
	return true
}

// refuse logs and counts a refusal, once for what sum identifies.
func (o *operators) refuse(st *source, reason string, err error, sum [32]byte) {
	if sum == st.refusedSum {
		return
	}
	st.refusedSum, st.timed = sum, reason == opExpired
	o.metrics.operatorError(st.kind, reason)
	if st.held != nil {
		o.log.Error("operator certificate refused; the previous one keeps serving", "source", st.id, "reason", reason,
			"error", err.Error(), "serving_not_after", st.held.notAfter.UTC().Format(time.RFC3339))
		return
	}
	o.log.Error("operator certificate refused", "source", st.id, "reason", reason, "error", err.Error())
}

// expired drops the pairs held that expired by now, logging and counting
// each, and reports whether there were any. Called with mu held.
func (o *operators) expired(now time.Time) bool {
	if e := o.set.Load().earliest; e.IsZero() || now.Before(e) {
		return false
	}
	found := false
	for _, st := range o.sources {
		if st.held == nil || now.Before(st.held.notAfter) {
			continue
		}
		found = true
		o.metrics.operatorError(st.kind, opExpired)
		o.log.Error("operator certificate expired; no longer served", "source", st.id, "names", st.held.names,
			"not_after", st.held.notAfter.UTC().Format(time.RFC3339))
		st.refusedSum, st.timed = st.heldSum, true
		st.held = nil
	}
	return found
}

// publish builds the set from the pairs held. When two serve the same name
// the same way, the one that expires last wins (then the first source by
// name), so that a renewed pair may be added before the old one goes.
// Called with mu held.
func (o *operators) publish(now time.Time) {
	s := &operatorSet{exact: map[string]*operatorCert{}, wild: map[string]*operatorCert{}}
	better := func(a, b *operatorCert) bool {
		return b == nil || a.notAfter.After(b.notAfter) || a.notAfter.Equal(b.notAfter) && a.source < b.source
	}
	for _, st := range o.sources {
		c := st.held
		if c == nil || !now.Before(c.notAfter) {
			continue
		}
		s.n++
		if s.earliest.IsZero() || c.notAfter.Before(s.earliest) {
			s.earliest = c.notAfter
		}
		for _, n := range c.names {
			m, key := s.exact, n
			if rest, ok := strings.CutPrefix(n, "*."); ok {
				m, key = s.wild, rest
			}
			if better(c, m[key]) {
				m[key] = c
			}
		}
	}
	o.set.Store(s)
}

// parseOperator checks a pair: the chain and the key in PEM (the same
// bytes may hold both), matching, naming at least one DNS name, valid at
// now. The error names what is wrong; reason is its label.
func parseOperator(id string, certPEM, keyPEM []byte, now time.Time) (*operatorCert, string, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, opInvalid, err
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, opInvalid, err
		}
		pair.Leaf = leaf
	}
	if len(leaf.DNSNames) == 0 {
		return nil, opInvalid, fmt.Errorf("the certificate (subject %q) names no DNS name (subjectAltName); clients would refuse it", leaf.Subject.CommonName)
	}
	switch {
	case now.Before(leaf.NotBefore):
		return nil, opExpired, fmt.Errorf("the certificate is not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	case !now.Before(leaf.NotAfter):
		return nil, opExpired, fmt.Errorf("the certificate expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	names := make([]string, 0, len(leaf.DNSNames))
	for _, n := range leaf.DNSNames {
		names = append(names, strings.ToLower(strings.TrimSuffix(n, ".")))
	}
	slices.Sort(names)
	return &operatorCert{source: id, cert: &pair, names: slices.Compact(names), notBefore: leaf.NotBefore, notAfter: leaf.NotAfter}, "", nil
}
