package leader

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"
)

// ForwardedHeader marks a write a standby forwarded; its value is the
// standby's address. A replica that is not the leader answers such a write
// with 503 instead of forwarding it again, so a write never loops between
// replicas while leadership changes hands.
const ForwardedHeader = "X-Podedge-Forwarded-By"

// LeaderHeader, on a forwarded answer, names the leader that ran the write.
const LeaderHeader = "X-Podedge-Leader"

type targetKey struct{}

// forwarder sends writes that reach a standby to the leader.
type forwarder struct {
	self      string
	proxy     *httputil.ReverseProxy
	transport *http.Transport
	m         *metrics
	log       *slog.Logger
	// wrote is told the index of every write the leader answered.
	wrote func(index uint64)

	mu       sync.Mutex
	failing  string // the leader whose failures were already logged
	failedAt time.Time
}

func newForwarder(self string, log *slog.Logger, m *metrics, wrote func(uint64)) *forwarder {
	f := &forwarder{self: self, m: m, log: log, wrote: wrote}
	f.transport = &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	f.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(&url.URL{Scheme: "http", Host: pr.In.Context().Value(targetKey{}).(string)})
			pr.Out.Header.Set(ForwardedHeader, self)
		},
		Transport: f.transport,
		ModifyResponse: func(resp *http.Response) error {
			m.forwarded.WithLabelValues("ok").Inc()
			resp.Header.Set(LeaderHeader, resp.Request.URL.Host)
			if n, ok := parseIndex(resp.Header.Get(IndexHeader)); ok && f.wrote != nil {
				f.wrote(n)
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			m.forwarded.WithLabelValues("error").Inc()
			target, _ := r.Context().Value(targetKey{}).(string)
			f.logFailure(target, err)
			writeError(w, &Error{Kind: KindNotLeader, Msg: fmt.Sprintf("leader %s did not answer: %v; retry", target, err)})
		},
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return f
}

// close closes the idle connections to the leader.
func (f *forwarder) close() { f.transport.CloseIdleConnections() }

// logFailure logs the first failure to reach a leader at warn and the ones
// that follow within a minute at debug: a dead leader fails every write
// until Consul frees its lock.
func (f *forwarder) logFailure(target string, err error) {
	f.mu.Lock()
	repeat := f.failing == target && time.Since(f.failedAt) < time.Minute
	if !repeat {
		f.failing, f.failedAt = target, time.Now()
	}
	f.mu.Unlock()
	level := slog.LevelWarn
	if repeat {
		level = slog.LevelDebug
	}
	f.log.Log(context.Background(), level, "could not forward a write to the leader", "leader", target, "error", err.Error())
}

// forward sends r, whose body was already read into body, to leader.
func (f *forwarder) forward(w http.ResponseWriter, r *http.Request, body []byte, leader string) {
	switch {
	case r.Header.Get(ForwardedHeader) != "":
		f.m.forwarded.WithLabelValues("no_leader").Inc()
		writeError(w, &Error{Kind: KindNotLeader, Msg: fmt.Sprintf("forwarded by %s, but this replica is not the leader (any more); retry", r.Header.Get(ForwardedHeader))})
		return
	case leader == "" || leader == f.self:
		f.m.forwarded.WithLabelValues("no_leader").Inc()
		writeError(w, &Error{Kind: KindNotLeader, Msg: "no leader is elected at the moment; retry"})
		return
	}
	out := r.WithContext(context.WithValue(r.Context(), targetKey{}, leader))
	out.Body = io.NopCloser(bytes.NewReader(body))
	out.ContentLength = int64(len(body))
	f.proxy.ServeHTTP(w, out)
}
