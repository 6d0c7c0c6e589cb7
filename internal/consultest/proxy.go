package consultest

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Proxy is an HTTP proxy in front of a real agent that fails, to whoever
// talks through it, the ways a Consul cluster does, for the calls that need
// the servers (KV, sessions, transactions, catalog, health). The agent's
// own endpoints (/v1/agent/...: services, checks) keep working, as they do
// on a real agent whatever its servers do.
//
// The agent behind it keeps running session TTLs meanwhile, where a real
// cluster without a leader would not; an outage shorter than twice a
// session's TTL leaves the session alive, as a real new leader would.
type Proxy struct {
	// HTTPAddr is the proxy's address, to use in place of the agent's.
	HTTPAddr string

	mu     sync.Mutex
	mode   proxyMode
	delays map[string]time.Duration // by path prefix
	// txnDelays delays transactions whose body holds the key; txnSeen
	// counts them.
	txnDelays map[string]time.Duration
	txnSeen   map[string]int
	inFlight  map[*http.Request]context.CancelFunc
	hung      chan struct{} // closed when the test ends: releases hung calls
}

type proxyMode int

const (
	proxyPass     proxyMode = iota
	proxyNoLeader           // answer 500 "No cluster leader"
	proxyHang               // never answer
)

// NewProxy serves a proxy to agent on a free loopback port until the test
// ends.
func NewProxy(t testing.TB, agent *Agent) *Proxy {
	t.Helper()
	target, err := url.Parse("http://" + agent.HTTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{
		HTTPAddr:  ln.Addr().String(),
		delays:    map[string]time.Duration{},
		txnDelays: map[string]time.Duration{},
		txnSeen:   map[string]int{},
		inFlight:  map[*http.Request]context.CancelFunc{},
		hung:      make(chan struct{}),
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		p.mu.Lock()
		hang := p.mode == proxyHang
		p.mu.Unlock()
		if hang {
			p.hang(r)
			return
		}
		noLeader(w)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/agent/") {
			proxy.ServeHTTP(w, r)
			return
		}
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		var body []byte
		if r.URL.Path == "/v1/txn" && r.Body != nil {
			var err error
			if body, err = io.ReadAll(r.Body); err != nil {
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		p.mu.Lock()
		mode := p.mode
		var delay time.Duration
		for prefix, d := range p.delays {
			if strings.HasPrefix(r.URL.Path, prefix) {
				delay = d
			}
		}
		for key, d := range p.txnDelays {
			if bytes.Contains(body, []byte(strconv.Quote(key))) {
				delay = max(delay, d)
				p.txnSeen[key]++
			}
		}
		if mode == proxyPass {
			p.inFlight[r] = cancel
		}
		p.mu.Unlock()
		switch mode {
		case proxyNoLeader:
			if r.URL.Path == "/v1/status/leader" {
				// A server without a leader names none.
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte(`""`))
				return
			}
			noLeader(w)
			return
		case proxyHang:
			p.hang(r)
			return
		}
		defer func() {
			p.mu.Lock()
			delete(p.inFlight, r)
			p.mu.Unlock()
		}()
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return
			}
		}
		proxy.ServeHTTP(w, r.WithContext(ctx))
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		close(p.hung)
		_ = srv.Close()
	})
	return p
}

// hang leaves r unanswered, as a call to a server that stopped answering:
// even once the cluster heals, until the caller gives up.
func (p *Proxy) hang(r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-p.hung:
	}
}

func noLeader(w http.ResponseWriter) {
	http.Error(w, "No cluster leader", http.StatusInternalServerError)
}

// LoseLeader makes every call that needs the servers answer 500 "No cluster
// leader", as Consul does once its hold of a call runs out, and
// /v1/status/leader name none; calls already waiting (blocking queries) are
// answered so too.
func (p *Proxy) LoseLeader() { p.set(proxyNoLeader) }

// Hang leaves every call that needs the servers unanswered, as a server
// that stopped answering mid-call does (SIGSTOP, a partition), those
// already waiting included; they stay unanswered after Heal too.
func (p *Proxy) Hang() { p.set(proxyHang) }

// Heal lets calls through again.
func (p *Proxy) Heal() { p.set(proxyPass) }

// Delay answers calls whose path starts with prefix d late, as a slow but
// working cluster would (a slow disk under its Raft log); 0 removes it.
func (p *Proxy) Delay(prefix string, d time.Duration) { p.setDelay(p.delays, prefix, d) }

// DelayTxnsOn answers the transactions that name key (a read of a folder
// names the folder) d late, and counts them (TxnsOn); 0 removes the delay.
func (p *Proxy) DelayTxnsOn(key string, d time.Duration) { p.setDelay(p.txnDelays, key, d) }

// setDelay sets the delay of key in m (one of the proxy's), 0 removing it.
func (p *Proxy) setDelay(m map[string]time.Duration, key string, d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if d == 0 {
		delete(m, key)
		return
	}
	m[key] = d
}

// TxnsOn is how many transactions that name key, delayed by DelayTxnsOn,
// came through.
func (p *Proxy) TxnsOn(key string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.txnSeen[key]
}

func (p *Proxy) set(m proxyMode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = m
	if m == proxyPass {
		return
	}
	for _, cancel := range p.inFlight {
		cancel()
	}
}
