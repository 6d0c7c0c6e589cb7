// Package dnsload is a DNS load generator that counts every query left
// unanswered: paced UDP queries, each from a socket of its worker, waited
// for until a timeout and never sent again, beside TCP queries on a new
// connection each. Tests use it across upgrades of dnsd, where a resolver's
// retries would hide what was lost.
package dnsload

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// Config describes one run.
type Config struct {
	// Addr is the server, "host:port". Required.
	Addr string
	// Name and Type are what every query asks. Name is required; Type
	// zero means A.
	Name string
	Type uint16
	// UDPWorkers each send one UDP query at a time from a socket of
	// their own, so the server's SO_REUSEPORT sockets each get some.
	// Zero means 8.
	UDPWorkers int
	// UDPRate is the UDP queries per second across the workers; a worker
	// late on its schedule sends at once and does not catch up. Zero
	// means 2,000.
	UDPRate float64
	// TCPWorkers each send one query at a time, each on a new
	// connection (as dig +tcp does). Zero means 2; negative, none.
	TCPWorkers int
	// TCPRate is the TCP queries per second across those workers. Zero
	// means 100.
	TCPRate float64
	// Timeout is how long an answer is waited for (over TCP: the whole
	// exchange, connecting included). Zero means 2s.
	Timeout time.Duration
}

// Result is what a run measured. Only an answer with the query's ID,
// NOERROR and at least one answer record counts as answered.
type Result struct {
	UDPSent int64 `json:"udp_sent"`
	// UDPLost got no answer within the timeout.
	UDPLost int64 `json:"udp_lost"`
	// UDPBad got an answer of another rcode, with no record, or a read
	// error (ICMP port unreachable: nothing bound).
	UDPBad     int64 `json:"udp_bad"`
	TCPQueries int64 `json:"tcp_queries"`
	// TCPFailed got no good answer: refused or reset connections,
	// timeouts, bad answers. Failures counts them by kind.
	TCPFailed int64            `json:"tcp_failed"`
	Failures  map[string]int64 `json:"failures,omitempty"`
}

// Run sends queries until ctx ends and returns what it measured; queries
// still waiting for their answer then are waited for.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if cfg.Addr == "" || cfg.Name == "" {
		return Result{}, errors.New("dnsload: Addr and Name are required")
	}
	if cfg.Type == 0 {
		cfg.Type = dns.TypeA
	}
	if cfg.UDPWorkers == 0 {
		cfg.UDPWorkers = 8
	}
	if cfg.UDPRate == 0 {
		cfg.UDPRate = 2000
	}
	if cfg.TCPWorkers == 0 {
		cfg.TCPWorkers = 2
	}
	if cfg.TCPRate == 0 {
		cfg.TCPRate = 100
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Second
	}
	r := &run{cfg: cfg, failures: map[string]int64{}}
	var wg sync.WaitGroup
	for i := range cfg.UDPWorkers {
		conn, err := net.Dial("udp", cfg.Addr)
		if err != nil {
			return Result{}, fmt.Errorf("dnsload: %w", err)
		}
		defer conn.Close()
		every := time.Duration(float64(cfg.UDPWorkers) / cfg.UDPRate * float64(time.Second))
		wg.Go(func() { r.udp(ctx, conn.(*net.UDPConn), every, uint16(i)<<11) })
	}
	for range max(cfg.TCPWorkers, 0) {
		every := time.Duration(float64(cfg.TCPWorkers) / cfg.TCPRate * float64(time.Second))
		wg.Go(func() { r.tcp(ctx, every) })
	}
	wg.Wait()
	res := Result{UDPSent: r.udpSent.Load(), UDPLost: r.udpLost.Load(), UDPBad: r.udpBad.Load(),
		TCPQueries: r.tcpQueries.Load(), TCPFailed: r.tcpFailed.Load(), Failures: r.failures}
	return res, nil
}

type run struct {
	cfg                      Config
	udpSent, udpLost, udpBad atomic.Int64
	tcpQueries, tcpFailed    atomic.Int64
	mu                       sync.Mutex
	failures                 map[string]int64
}

func (r *run) fail(kind string) {
	r.mu.Lock()
	r.failures[kind]++
	r.mu.Unlock()
}

// pace calls fn every interval until ctx ends; a call that overruns its
// slot is followed at once by the next, without catching up.
func pace(ctx context.Context, every time.Duration, fn func()) {
	next := time.Now()
	for ctx.Err() == nil {
		fn()
		next = next.Add(every)
		if wait := time.Until(next); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		} else {
			next = time.Now()
		}
	}
}

// good reports whether m answers the query with id.
func good(m *dns.Msg, id uint16) bool {
	return m.Id == id && m.Response && m.Rcode == dns.RcodeSuccess && len(m.Answer) > 0
}

// udp is one UDP worker: IDs from base up, so that a late answer to an
// earlier query is told from the one waited for, and skipped.
func (r *run) udp(ctx context.Context, conn *net.UDPConn, every time.Duration, base uint16) {
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(r.cfg.Name), r.cfg.Type)
	id := base
	buf := make([]byte, 65535)
	pace(ctx, every, func() {
		id++
		q.Id = id
		out, err := q.Pack()
		if err != nil {
			r.udpBad.Add(1)
			r.fail("udp pack")
			return
		}
		r.udpSent.Add(1)
		if _, err := conn.Write(out); err != nil {
			r.udpBad.Add(1)
			r.fail("udp write")
			return
		}
		_ = conn.SetReadDeadline(time.Now().Add(r.cfg.Timeout))
		for {
			n, err := conn.Read(buf)
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				r.udpLost.Add(1)
				r.fail("udp lost")
				return
			case err != nil:
				r.udpBad.Add(1)
				r.fail("udp read")
				return
			}
			m := new(dns.Msg)
			if m.Unpack(buf[:n]) != nil || m.Id != id {
				continue // a late answer to an earlier query
			}
			if !good(m, id) {
				r.udpBad.Add(1)
				r.fail("udp rcode " + dns.RcodeToString[m.Rcode])
			}
			return
		}
	})
}

// tcp is one TCP worker: a connection per query, closed after its answer.
func (r *run) tcp(ctx context.Context, every time.Duration) {
	c := &dns.Client{Net: "tcp", Timeout: r.cfg.Timeout}
	pace(ctx, every, func() {
		q := new(dns.Msg)
		q.SetQuestion(dns.Fqdn(r.cfg.Name), r.cfg.Type)
		r.tcpQueries.Add(1)
		m, _, err := c.Exchange(q, r.cfg.Addr)
		switch {
		case err != nil:
			r.tcpFailed.Add(1)
			r.fail("tcp " + errorKind(err))
		case !good(m, q.Id):
			r.tcpFailed.Add(1)
			r.fail("tcp rcode " + dns.RcodeToString[m.Rcode])
		}
	})
}

// errorKind names a TCP failure.
func errorKind(err error) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "closed"
	}
	return "error"
}
