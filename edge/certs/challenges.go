package certs

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/crypto/acme"
)

// fallbackPerSecond caps the challenge lookups that go to Consul because
// the answer is not in memory. A CA asks for a challenge right after the
// edge that ordered wrote it; the watcher normally brings it within
// milliseconds, and the fallback covers the gap. Anyone can ask for any
// token, so the fallback is rate-limited rather than open.
const fallbackPerSecond = 20

// challenges holds the answers to the ACME challenges in flight on every
// edge, by autocert name ("<token>+http-01", "<domain>+token"): those this
// edge provisioned, at once, and those of every edge, from a watch of
// <prefix>certs/challenges/.
type challenges struct {
	cache *Cache
	log   *slog.Logger

	mu  sync.Mutex
	own map[string][]byte

	seen     atomic.Pointer[map[string][]byte]
	fallback limiter
}

func newChallenges(cache *Cache, log *slog.Logger) *challenges {
	c := &challenges{cache: cache, log: log, own: map[string][]byte{}, fallback: limiter{per: fallbackPerSecond}}
	empty := map[string][]byte{}
	c.seen.Store(&empty)
	return c
}

// watch keeps the challenges of every edge in memory until ctx ends.
func (c *challenges) watch(ctx context.Context) {
	folder := c.cache.root + folderChallenges
	watchList(ctx, c.cache.kv, folder, c.log, func(pairs api.KVPairs) {
		m := make(map[string][]byte, len(pairs))
		for _, p := range pairs {
			if name := strings.TrimPrefix(p.Key, folder); name != "" {
				m[name] = p.Value
			}
		}
		c.seen.Store(&m)
	})
}

// provision stores the answer to chal for name, here and in KV, and
// returns the function that removes it once the CA has decided.
func (c *challenges) provision(ctx context.Context, client *acme.Client, chal *acme.Challenge, name string) (func(), error) {
	var key string
	var data []byte
	switch chal.Type {
	case ChallengeHTTP:
		resp, err := client.HTTP01ChallengeResponse(chal.Token)
		if err != nil {
			return nil, err
		}
		key, data = chal.Token+"+http-01", []byte(resp)
	case ChallengeTLSALPN:
		cert, err := client.TLSALPN01ChallengeCert(chal.Token, name)
		if err != nil {
			return nil, err
		}
		if data, err = encodeCert(&cert); err != nil {
			return nil, err
		}
		key = name + "+token"
	default:
		return nil, fmt.Errorf("unsupported challenge type %q", chal.Type)
	}
	c.mu.Lock()
	c.own[key] = data
	c.mu.Unlock()
	remove := func() {
		c.mu.Lock()
		delete(c.own, key)
		c.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		_ = c.cache.Delete(ctx, key)
	}
	if err := c.cache.Put(ctx, key, data); err != nil {
		remove()
		return nil, err
	}
	return remove, nil
}

// lookup returns the answer stored under an autocert name: from memory, or
// else (rate-limited) from KV.
func (c *challenges) lookup(name string) ([]byte, bool) {
	c.mu.Lock()
	v, ok := c.own[name]
	c.mu.Unlock()
	if ok {
		return v, true
	}
	if v, ok := (*c.seen.Load())[name]; ok {
		return v, true
	}
	if !c.fallback.allow(time.Now()) {
		return nil, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	v, err := c.cache.Get(ctx, name)
	return v, err == nil
}

// httpToken returns the key authorization of an HTTP-01 token.
func (c *challenges) httpToken(token string) ([]byte, bool) {
	if !validToken(token) {
		return nil, false
	}
	return c.lookup(token + "+http-01")
}

// tokenCert returns the TLS-ALPN-01 certificate for domain.
func (c *challenges) tokenCert(domain string) (*tls.Certificate, error) {
	data, ok := c.lookup(strings.ToLower(domain) + "+token")
	if !ok {
		return nil, fmt.Errorf("no tls-alpn-01 challenge in flight for %q", domain)
	}
	return parsePair(data)
}

// validToken reports whether s can be an ACME token: base64url, as RFC 8555
// section 8.1 requires, of a sane length.
func validToken(s string) bool {
	if len(s) == 0 || len(s) > 256 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// limiter allows per events a second.
type limiter struct {
	per    int
	mu     sync.Mutex
	second int64
	n      int
}

func (l *limiter) allow(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s := now.Unix(); s != l.second {
		l.second, l.n = s, 0
	}
	if l.n >= l.per {
		return false
	}
	l.n++
	return true
}
