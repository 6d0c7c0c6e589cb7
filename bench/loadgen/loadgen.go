// Package loadgen is the HTTP/1.1 load generator of the bench for what wrk
// cannot do: open a new connection for every request (also over TLS: a
// full handshake per request), and count every failed request, by kind,
// while an app server dies. It speaks just enough HTTP/1.1 (Content-Length,
// chunked and close-delimited bodies) and never retries: a failure is
// counted where it happens.
package loadgen

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Config describes one run.
type Config struct {
	// Addrs are the servers, "host:port"; connection i goes to
	// Addrs[i%len(Addrs)]. Required.
	Addrs []string
	// Host is the Host header. Empty means the address.
	Host string
	// Path is the request target. Empty means "/".
	Path string
	// Conns is the number of connections (or, with NewConnPerRequest, of
	// requests in flight). Zero means 64.
	Conns int
	// Duration is how long requests are sent. Required.
	Duration time.Duration
	// NewConnPerRequest opens a connection for each request, sends
	// "Connection: close" and resets the connection after the response,
	// so that neither side keeps a TIME_WAIT socket.
	NewConnPerRequest bool
	// Timeout bounds each request, connecting included. Zero means 5s.
	Timeout time.Duration
	// Rate, if positive, paces the requests: Rate per second across all
	// connections, each connection sending on its own schedule (an open
	// loop while the server keeps up; a connection that falls behind
	// sends at once and does not catch up). Zero sends as fast as the
	// server answers.
	Rate float64
	// TLS, if set, speaks HTTPS with it: each connection's handshake is
	// part of the first request it carries. Set ServerName (SNI), and
	// leave ClientSessionCache nil so that every handshake is a full one.
	TLS *tls.Config
	// Answered, if set, counts the requests answered with 2xx as they
	// come, for a caller watching a run in progress.
	Answered *atomic.Int64
	// Started, if set, is called once every connection's loop is running.
	Started func()
}

// Result is what a run measured. Latencies are of successful requests.
type Result struct {
	// Requests were answered with a 2xx status.
	Requests int64 `json:"requests"`
	// Failed requests got another status or none at all; Failures counts
	// them by kind: "dial", "timeout", "reset", "closed" (the server closed
	// the connection before the whole answer), "protocol", "status 502"...
	Failed   int64            `json:"failed"`
	Failures map[string]int64 `json:"failures,omitempty"`
	Seconds  float64          `json:"seconds"`
	RPS      float64          `json:"rps"`
	P50      time.Duration    `json:"p50_ns"`
	P99      time.Duration    `json:"p99_ns"`
	Max      time.Duration    `json:"max_ns"`
}

// Run sends requests until cfg.Duration has passed or ctx ends, and
// returns what it measured.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if len(cfg.Addrs) == 0 {
		return Result{}, errors.New("loadgen: no address")
	}
	if cfg.Duration <= 0 {
		return Result{}, errors.New("loadgen: duration must be positive")
	}
	if cfg.Conns == 0 {
		cfg.Conns = 64
	}
	if cfg.Path == "" {
		cfg.Path = "/"
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	workers := make([]*worker, cfg.Conns)
	for i := range workers {
		addr := cfg.Addrs[i%len(cfg.Addrs)]
		host := cfg.Host
		if host == "" {
			host = addr
		}
		req := "GET " + cfg.Path + " HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: podedge-loadgen\r\n"
		if cfg.NewConnPerRequest {
			req += "Connection: close\r\n"
		}
		w := &worker{
			addr:     addr,
			tls:      cfg.TLS,
			answered: cfg.Answered,
			req:      []byte(req + "\r\n"),
			fresh:    cfg.NewConnPerRequest,
			timeout:  cfg.Timeout,
			lat:      make([]time.Duration, 0, 1<<14),
			failures: map[string]int64{},
		}
		if cfg.Rate > 0 {
			w.interval = time.Duration(float64(cfg.Conns) / cfg.Rate * float64(time.Second))
			// Connections start spread over one interval.
			w.offset = w.interval * time.Duration(i) / time.Duration(cfg.Conns)
		}
		workers[i] = w
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Go(func() { w.run(ctx) })
	}
	if cfg.Started != nil {
		cfg.Started()
	}
	wg.Wait()
	elapsed := time.Since(start)

	res := Result{Failures: map[string]int64{}, Seconds: elapsed.Seconds()}
	var lat []time.Duration
	for _, w := range workers {
		lat = append(lat, w.lat...)
		for k, v := range w.failures {
			res.Failures[k] += v
			res.Failed += v
		}
	}
	res.Requests = int64(len(lat))
	res.RPS = float64(res.Requests) / elapsed.Seconds()
	if len(lat) > 0 {
		slices.Sort(lat)
		res.P50 = lat[len(lat)*50/100]
		res.P99 = lat[len(lat)*99/100]
		res.Max = lat[len(lat)-1]
	}
	return res, nil
}

// worker is one connection's loop. Nothing in it is shared.
type worker struct {
	addr    string
	tls     *tls.Config
	req     []byte
	fresh   bool
	timeout time.Duration
	// conn is what requests are written to; raw is the TCP connection
	// under it (the same without TLS).
	conn, raw net.Conn
	br        *bufio.Reader
	lat       []time.Duration
	failures  map[string]int64
	answered  *atomic.Int64
	// interval paces a run with a Rate; offset is this connection's
	// place in it.
	interval, offset time.Duration
}

func (w *worker) run(ctx context.Context) {
	defer w.drop(false)
	next := time.Now().Add(w.offset)
	for ctx.Err() == nil {
		if w.interval > 0 {
			if wait := time.Until(next); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
			}
			// Behind by more than an interval: no catching up in a burst.
			next = next.Add(w.interval)
			if floor := time.Now().Add(-w.interval); next.Before(floor) {
				next = floor
			}
		}
		start := time.Now()
		status, err := w.do(ctx, start)
		switch {
		case errors.Is(err, errStopped):
			return
		case err != nil:
			w.failures[kind(err)]++
			w.drop(true)
			if errors.Is(err, errDial) {
				// Do not spin on a refused address.
				select {
				case <-ctx.Done():
				case <-time.After(10 * time.Millisecond):
				}
			}
		case status < 200 || status > 299:
			w.failures["status "+strconv.Itoa(status)]++
		default:
			w.lat = append(w.lat, time.Since(start))
			if w.answered != nil {
				w.answered.Add(1)
			}
		}
	}
}

var (
	errDial = errors.New("dial")
	errTLS  = errors.New("tls handshake")
	// errStopped is a connection cut short by the end of the run: neither
	// a success nor a failure.
	errStopped = errors.New("run ended")
)

// do sends one request and reads its response, connecting first when
// needed.
func (w *worker) do(ctx context.Context, start time.Time) (int, error) {
	if w.conn == nil {
		d := net.Dialer{Timeout: w.timeout}
		c, err := d.DialContext(ctx, "tcp", w.addr)
		if err != nil {
			// A dial cut short by the end of the run may fail with a
			// timeout an instant before ctx reports it is done.
			if deadline, ok := ctx.Deadline(); ctx.Err() != nil || ok && !time.Now().Before(deadline) {
				return 0, errStopped
			}
			return 0, fmt.Errorf("%w: %w", errDial, err)
		}
		w.conn, w.raw = c, c
		if err := c.SetDeadline(start.Add(w.timeout)); err != nil {
			return 0, err
		}
		if w.tls != nil {
			tc := tls.Client(c, w.tls)
			w.conn = tc
			if err := tc.HandshakeContext(ctx); err != nil {
				if ctx.Err() != nil {
					return 0, errStopped
				}
				return 0, fmt.Errorf("%w: %w", errTLS, err)
			}
		}
		if w.br == nil {
			w.br = bufio.NewReaderSize(w.conn, 16<<10)
		} else {
			w.br.Reset(w.conn)
		}
	}
	if err := w.raw.SetDeadline(start.Add(w.timeout)); err != nil {
		return 0, err
	}
	if _, err := w.conn.Write(w.req); err != nil {
		return 0, err
	}
	status, closeConn, err := readResponse(w.br)
	if err != nil {
		return 0, err
	}
	if closeConn || w.fresh {
		w.drop(w.fresh)
	}
	return status, nil
}

// drop closes the connection; with reset, as a TCP reset (SO_LINGER 0), so
// that no TIME_WAIT socket is left behind.
func (w *worker) drop(reset bool) {
	if w.conn == nil {
		return
	}
	if tc, ok := w.raw.(*net.TCPConn); ok && reset {
		_ = tc.SetLinger(0)
	}
	// Closing the TCP connection, not the TLS one: no close_notify alert,
	// as for a reset.
	_ = w.raw.Close()
	w.conn, w.raw = nil, nil
}

// kind names the failure err is.
func kind(err error) string {
	var ne net.Error
	var se *os.SyscallError
	switch {
	case errors.Is(err, errDial) && errors.As(err, &se):
		return "dial: " + se.Err.Error()
	case errors.Is(err, errDial) && errors.As(err, &ne) && ne.Timeout():
		return "dial: timeout"
	case errors.Is(err, errDial):
		return "dial"
	case errors.Is(err, errTLS) && errors.As(err, &ne) && ne.Timeout():
		return "tls: timeout"
	case errors.Is(err, errTLS):
		return "tls"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return "closed"
	default:
		return "protocol"
	}
}
