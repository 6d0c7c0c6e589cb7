package edge

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
	"golang.org/x/net/http2"
)

// h2Server is HTTP/2 on the TLS listener. golang.org/x/net/http2 speaks the
// protocol (framing, HPACK, flow control, stream limits, and the defences
// against rapid reset and CONTINUATION floods); every stream it hands over
// becomes a fasthttp.RequestCtx served by the very handler that serves
// HTTP/1.1 (h2Stream), so that routing, retries, header rules, limits,
// metrics and the access log are the proxy's, whatever the protocol.
//
// fasthttp's server accepts the connections and completes their handshake;
// those that chose h2 by ALPN come to serveConn (fasthttp.Server.NextProto),
// the others stay with fasthttp.
type h2Server struct {
	srv *http2.Server
	// base carries the settings x/net takes from an http.Server (the header
	// list size, the error log), and its Shutdown sends every connection a
	// GOAWAY (http2.ConfigureServer registers that).
	base    *http.Server
	handler fasthttp.RequestHandler
	p       *Proxy
	flog    fasthttp.Logger
	streams sync.Pool // *h2Stream
	fields  sync.Pool // *h2Fields

	conns            prometheus.Gauge
	complete, resets prometheus.Counter

	mu      sync.Mutex
	open    map[net.Conn]struct{}
	closing bool
}

func newH2Server(cfg HTTP2, p *Proxy, h fasthttp.RequestHandler, log *slog.Logger) (*h2Server, error) {
	p.init()
	m := p.metrics
	idle := cfg.IdleTimeout
	if idle == 0 {
		idle = p.Timeouts.ClientIdle
	}
	headers := cfg.MaxHeaderListSize
	if headers == 0 {
		headers = p.Limits.MaxHeaderBytes
	}
	log = log.With("component", "http2")
	s := &h2Server{
		handler:  h,
		p:        p,
		flog:     fasthttpLogger{log},
		conns:    m.h2Conns,
		complete: m.h2Streams.WithLabelValues("complete"),
		resets:   m.h2Streams.WithLabelValues("reset"),
		open:     map[net.Conn]struct{}{},
	}
	s.srv = &http2.Server{
		MaxConcurrentStreams:         uint32(cfg.MaxConcurrentStreams),
		MaxUploadBufferPerStream:     int32(cfg.StreamWindow),
		MaxUploadBufferPerConnection: int32(cfg.ConnectionWindow),
		IdleTimeout:                  idle,
		// No WriteByteTimeout: batchConn bounds each write to the client
		// by timeouts.client_write, so that one that stops reading is cut
		// off as on HTTP/1.1; each stream's writes have their own
		// deadline too (h2Stream).
		// The types are x/net's own constants: a bounded label.
		CountError: func(errType string) { m.h2Errors.WithLabelValues(errType).Inc() },
	}
	s.base = &http.Server{
		MaxHeaderBytes: headers,
		IdleTimeout:    idle,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	if err := http2.ConfigureServer(s.base, s.srv); err != nil {
		return nil, err
	}
	s.streams.New = func() any { return new(h2Stream) }
	s.fields.New = func() any { return new(h2Fields) }
	return s, nil
}

// register makes srv hand its TLS connections that chose h2 to s, and tc
// offer h2 first.
func (s *h2Server) register(srv *fasthttp.Server, tc *tls.Config) {
	srv.NextProto(http2.NextProtoTLS, s.serveConn)
	setALPN(tc, true)
}

// setALPN puts h2 first in tc's protocols when on, and takes it out
// otherwise; the list is copied, never changed in place.
func setALPN(tc *tls.Config, on bool) {
	if tc == nil {
		return
	}
	protos := slices.DeleteFunc(slices.Clone(tc.NextProtos), func(p string) bool { return p == http2.NextProtoTLS })
	if on {
		protos = append([]string{http2.NextProtoTLS}, protos...)
	}
	tc.NextProtos = protos
}

// serveConn serves one h2 connection until it ends; fasthttp closes it
// then.
func (s *h2Server) serveConn(c net.Conn) error {
	if !s.track(c) {
		return nil
	}
	defer s.untrack(c)
	s.conns.Inc()
	defer s.conns.Dec()
	bc := newBatchConn(c, s.p.cur().Timeouts.ClientWrite)
	s.srv.ServeConn(bc, &http2.ServeConnOpts{BaseConfig: s.base, Handler: &h2Conn{s: s, c: c}})
	// x/net has closed bc; its last frames (a GOAWAY) may still be on the
	// way, and fasthttp closes c as soon as this returns.
	bc.wait()
	return nil
}

func (s *h2Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.open[c] = struct{}{}
	return true
}

func (s *h2Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.open, c)
	s.mu.Unlock()
}

// shutdown sends every connection a GOAWAY: each then ends once its open
// streams have, and connections that arrive later are closed at once.
func (s *h2Server) shutdown(ctx context.Context) {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	_ = s.base.Shutdown(ctx)
}

// closeAll closes the connections still open (after shutdown_timeout) and
// reports how many there were.
func (s *h2Server) closeAll() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.open {
		_ = c.Close()
	}
	return len(s.open)
}

// h2Conn is the http.Handler of one connection: it knows the connection,
// whose addresses and TLS state each stream's RequestCtx reports.
type h2Conn struct {
	s *h2Server
	c net.Conn
}

func (hc *h2Conn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := hc.s
	st := s.streams.Get().(*h2Stream)
	abort := st.serve(s, hc.c, w, r)
	if abort || r.Context().Err() != nil {
		s.resets.Inc()
	} else {
		s.complete.Inc()
	}
	st.reset()
	s.streams.Put(st)
	if abort {
		// x/net resets the stream (RST_STREAM) without logging.
		panic(http.ErrAbortHandler)
	}
}
