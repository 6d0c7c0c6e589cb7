package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"math/big"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podedge/podedge/internal/consultest"
	"golang.org/x/crypto/acme/autocert"
)

// selfSigned makes a certificate for name valid from nb to na.
func selfSigned(t testing.TB, name string, nb, na time.Time) *tls.Certificate {
	t.Helper()
	return selfSignedNames(t, []string{name}, nb, na)
}

// selfSignedNames makes a certificate for names valid from nb to na.
func selfSignedNames(t testing.TB, names []string, nb, na time.Time) *tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    nb,
		NotAfter:     na,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// TestCacheLayout: the autocert names land in their folders; a
// certificate's Put writes its index entry in the same transaction and
// Delete removes both; a missing name is autocert.ErrCacheMiss.
func TestCacheLayout(t *testing.T) {
	agent := consultest.Start(t)
	c := NewCache(agent.Client, "podedge", "edge-1")
	ctx := t.Context()
	cert := selfSigned(t, "acme.example.test", time.Now().Add(-time.Hour), time.Now().Add(90*24*time.Hour))
	data, err := encodeCert(cert)
	if err != nil {
		t.Fatal(err)
	}
	for name, key := range map[string]string{
		"acme.example.test":       "podedge/certs/live/acme.example.test",
		"acme_account+key":        "podedge/certs/account/acme_account+key",
		"tok+http-01":             "podedge/certs/challenges/tok+http-01",
		"acme.example.test+token": "podedge/certs/challenges/acme.example.test+token",
	} {
		if _, err := c.Get(ctx, name); !errors.Is(err, autocert.ErrCacheMiss) {
			t.Errorf("Get(%q) before Put: %v, want ErrCacheMiss", name, err)
		}
		if err := c.Put(ctx, name, data); err != nil {
			t.Fatal(err)
		}
		p, _, err := agent.Client.KV().Get(key, nil)
		if err != nil || p == nil || string(p.Value) != string(data) {
			t.Errorf("%s: not stored at %s (%v)", name, key, err)
		}
		if got, err := c.Get(ctx, name); err != nil || string(got) != string(data) {
			t.Errorf("Get(%q) = %v", name, err)
		}
	}
	idx, _, _ := agent.Client.KV().Get("podedge/certs/index/acme.example.test", nil)
	live, _, _ := agent.Client.KV().Get("podedge/certs/live/acme.example.test", nil)
	var meta certMeta
	if idx == nil || json.Unmarshal(idx.Value, &meta) != nil {
		t.Fatalf("no index entry: %v", idx)
	}
	if meta.Serial != cert.Leaf.SerialNumber.Text(16) || !meta.NotAfter.Equal(cert.Leaf.NotAfter.Truncate(time.Second)) ||
		meta.Holder != "edge-1" || idx.ModifyIndex != live.ModifyIndex {
		t.Errorf("index entry %+v (index %d, certificate at %d)", meta, idx.ModifyIndex, live.ModifyIndex)
	}
	if p, _, _ := agent.Client.KV().Get("podedge/certs/index/acme_account+key", nil); p != nil {
		t.Error("the account key got an index entry")
	}
	st, err := c.loadLive(ctx, "acme.example.test", true, time.Now())
	if err != nil || st == nil || st.index != live.ModifyIndex {
		t.Fatalf("loadLive: %v %v", st, err)
	}
	if _, err := c.loadLive(ctx, "acme.example.test", false, time.Now().Add(100*24*time.Hour)); err == nil {
		t.Error("an expired certificate loaded")
	}
	if err := c.Delete(ctx, "acme.example.test"); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"podedge/certs/live/acme.example.test", "podedge/certs/index/acme.example.test"} {
		if p, _, _ := agent.Client.KV().Get(k, nil); p != nil {
			t.Errorf("%s left after Delete", k)
		}
	}
	if err := c.Delete(ctx, "never.example.test"); err != nil {
		t.Errorf("Delete of a missing name: %v", err)
	}
}

// TestLockExcludes: while one edge holds a name's lock another waits, and
// gets it as soon as it is released; a wait ends with its context.
func TestLockExcludes(t *testing.T) {
	agent := consultest.Start(t)
	l1 := &locker{client: agent.Client, root: "podedge/certs/locks/", holder: "edge-1"}
	l2 := &locker{client: agent.Client, root: "podedge/certs/locks/", holder: "edge-2"}
	release, err := l1.lock(t.Context(), "acme.example.test")
	if err != nil {
		t.Fatal(err)
	}
	var released atomic.Bool
	got := make(chan error, 1)
	go func() {
		r2, err := l2.lock(t.Context(), "acme.example.test")
		if err == nil {
			if !released.Load() {
				err = errors.New("second edge took the lock while the first held it")
			}
			r2()
		}
		got <- err
	}()
	// The second edge is waiting: the key names the first as holder.
	consultest.WaitFor(t, 5*time.Second, "the lock key to name edge-1", func() bool {
		p, _, err := agent.Client.KV().Get("podedge/certs/locks/acme.example.test", nil)
		var v lockValue
		return err == nil && p != nil && p.Session != "" && json.Unmarshal(p.Value, &v) == nil && v.Holder == "edge-1"
	})
	released.Store(true)
	release()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("second edge did not get the lock 10s after its release")
	}

	// A wait bounded by its context.
	release, err = l1.lock(t.Context(), "other.example.test")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if _, err := l2.lock(ctx, "other.example.test"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("lock with an ended context: %v, want deadline exceeded", err)
	}
	sessions, _, err := agent.Client.Session().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(sessions) != 1 {
		t.Errorf("%d sessions left, want 1 (the lock still held)", len(sessions))
	}
}

// TestAccountKeyShared: edges creating the account key at the same moment
// all end up with the same one.
func TestAccountKeyShared(t *testing.T) {
	agent := consultest.Start(t)
	const n = 4
	keys := make([]*ecdsa.PublicKey, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		cfg := Config{Consul: agent.Client}
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		o, err := newOrderer(&cfg, NewCache(agent.Client, cfg.Prefix, ""), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			<-start
			k, err := o.accountKey(t.Context())
			if err != nil {
				t.Error(err)
				return
			}
			keys[i] = k.Public().(*ecdsa.PublicKey)
		})
	}
	close(start)
	wg.Wait()
	for i := 1; i < n; i++ {
		if keys[i] == nil || !keys[i].Equal(keys[0]) {
			t.Fatalf("edge %d has another account key", i)
		}
	}
}
