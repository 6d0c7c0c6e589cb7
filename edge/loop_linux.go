package edge

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/podedge/podedge/internal/evloop"
	"github.com/podedge/podedge/internal/h1"
	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"
)

// defaultEngine is the plain-HTTP data path on Linux.
const defaultEngine = EngineLoop

// loopServer is the plain-HTTP listener on event loops, as nginx and HAProxy
// run theirs: one goroutine per CPU runs an epoll loop (internal/evloop) over
// its own listening socket (SO_REUSEPORT) and every connection it accepted,
// client and endpoint alike. No goroutine parks per request, and timeouts are
// timers on the loop's wheel rather than deadlines on each connection.
//
// The proxy's logic is the fasthttp path's own: the loop parses each request
// head into a fasthttp.RequestCtx and hands it to the same routing, header
// rules, passive health, retry policy, error path, metrics and access log.
// What the loop does itself is the I/O: it buffers request bodies of up to
// limits.buffer_bytes, sends the request to a pooled or new connection of
// its own to the endpoint, and relays the response, buffered when small and
// streamed (with flow control) when large, chunked or ended by the
// connection's close.
//
// A connection whose request the loop does not take (a chunked or larger
// body, Expect: 100-continue, an Upgrade, HTTP/1.0) leaves the loop at that
// request, with the bytes already read, for the fasthttp server, which serves
// it for the rest of its life.
type loopServer struct {
	p       *Proxy
	hook    func(*fasthttp.RequestCtx) bool
	handoff *handoffListener
	log     *slog.Logger
	fastLog fasthttp.Logger
	loops   []*edgeLoop
	addr    *net.TCPAddr
	wg      sync.WaitGroup
	// clients counts the client connections the loops hold, for the drain.
	clients atomic.Int64
}

// listenLoops opens one listening socket and loop per CPU on addr.
func listenLoops(addr string, p *Proxy, hook func(*fasthttp.RequestCtx) bool, log *slog.Logger, sockets Sockets) (*loopServer, error) {
	p.init()
	tcp, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return nil, err
	}
	ip, _ := netip.AddrFromSlice(tcp.IP)
	if !ip.IsValid() {
		ip = netip.IPv6Unspecified() // every address, IPv4 included
	}
	ap := netip.AddrPortFrom(ip.Unmap(), uint16(tcp.Port))
	s := &loopServer{p: p, hook: hook, log: log.With("component", "loop")}
	s.fastLog = fasthttpLogger{s.log}
	for i := 0; i < runtime.GOMAXPROCS(0); i++ {
		l, err := s.newLoop(ap, sockets, fmt.Sprintf("loop %s #%d", addr, i))
		if err != nil {
			s.closeLoops()
			return nil, err
		}
		s.loops = append(s.loops, l)
		if i == 0 {
			// Port 0 picked a port: the other loops listen on the same.
			if ap, err = evloop.LocalAddr(l.ln.Fd()); err != nil {
				s.closeLoops()
				return nil, err
			}
			s.addr = net.TCPAddrFromAddrPort(ap)
		}
	}
	s.handoff = newHandoffListener(s.addr)
	p.reclaimIdle = s.reclaimIdle
	return s, nil
}

// reclaimIdle closes every loop's idle connections to u, and waits for
// them to be closed, up to timeouts.dial: fasthttp's path needs one of
// the connections limits.max_conns_per_endpoint allows, and the loops
// hold them idle.
func (s *loopServer) reclaimIdle(u *upstream) {
	var wg sync.WaitGroup
	for _, l := range s.loops {
		wg.Add(1)
		l.ev.Post(func() {
			l.closeIdle(u)
			wg.Done()
		})
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	t := time.NewTimer(s.p.cur().Timeouts.Dial)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C: // a loop that has ended runs no more posts
	}
}

// opened and closed count a client connection in and out, for the drain and
// the metrics.
func (s *loopServer) opened() {
	s.clients.Add(1)
	s.p.metrics.loopConns.Inc()
}
func (s *loopServer) closed() {
	s.clients.Add(-1)
	s.p.metrics.loopConns.Dec()
}

// Handoff is the listener that yields the connections the loops hand over,
// for the fasthttp server to Serve.
func (s *loopServer) Handoff() net.Listener { return s.handoff }

// Addr is the address the loops listen on.
func (s *loopServer) Addr() net.Addr { return s.addr }

// close releases a server whose loops never ran.
func (s *loopServer) close() {
	s.closeLoops()
	s.handoff.Close()
}

// closeLoops releases loops whose run never started.
func (s *loopServer) closeLoops() {
	for _, l := range s.loops {
		l.ev.Close()
		l.ln.Close()
	}
}

// run starts the loops.
func (s *loopServer) run() {
	for _, l := range s.loops {
		s.wg.Go(l.run)
	}
}

// shutdown stops accepting, closes idle connections, lets the exchanges in
// flight finish (their responses carry Connection: close, the proxy is
// draining) until ctx ends, then closes whatever is left and stops the loops.
func (s *loopServer) shutdown(ctx context.Context) error {
	for _, l := range s.loops {
		l.ev.Post(l.stopAccepting)
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var err error
wait:
	for s.clients.Load() > 0 {
		select {
		case <-ctx.Done():
			err = fmt.Errorf("%d connections still open: %w", s.clients.Load(), ctx.Err())
			break wait
		case <-tick.C:
		}
	}
	for _, l := range s.loops {
		l.ev.Close()
	}
	s.wg.Wait()
	return err
}

// edgeLoop is one event loop and what only its goroutine touches.
type edgeLoop struct {
	s      *loopServer
	p      *Proxy
	ev     *evloop.Loop
	ln     *evloop.Listener
	parser *h1.Parser
	// lineHeader and lineBuf check a request line before its head is
	// whole (checkStartLine).
	lineHeader fasthttp.RequestHeader
	lineBuf    []byte
	// uriCheck parses each request's Host and target as fasthttp's
	// server does, to refuse what it refuses.
	uriCheck fasthttp.URI
	idle     map[*upstream][]*upConn // most recently used last
	free     []*loopExchange
	draining bool
	// Buffers client connections give back between requests, so that an
	// idle keep-alive connection holds none; bufBytes is their total size.
	bufs     [][]byte
	bufBytes int
	// Connections whose writes wait for the end of the round (flushRound).
	clientWrites []*clientConn
	upWrites     []*upConn
}

// Client connection buffers: borrowed with this room, and kept between
// requests only up to maxPooledBufBytes per loop.
const (
	clientBufSize     = 16 << 10
	maxPooledBufBytes = 16 << 20
)

// borrow returns an empty buffer, from the pool when it has one.
func (l *edgeLoop) borrow() []byte {
	if n := len(l.bufs); n > 0 {
		b := l.bufs[n-1]
		l.bufs[n-1] = nil
		l.bufs = l.bufs[:n-1]
		l.bufBytes -= cap(b)
		return b
	}
	return make([]byte, 0, clientBufSize)
}

// giveBack pools b, unless the pool is full.
func (l *edgeLoop) giveBack(b []byte) {
	if cap(b) == 0 || l.bufBytes+cap(b) > maxPooledBufBytes {
		return
	}
	l.bufs = append(l.bufs, b[:0])
	l.bufBytes += cap(b)
}
func (s *loopServer) newLoop(ap netip.AddrPort, sockets Sockets, name string) (*edgeLoop, error) {
	p := s.p
	l := &edgeLoop{s: s, p: p, idle: map[*upstream][]*upConn{}}
	l.parser = h1.NewParser(max(p.cur().Limits.MaxHeaderBytes, 4096))
	lfd, err := loopSocket(sockets, name, ap)
	if err != nil {
		return nil, err
	}
	if l.ev, err = evloop.NewOnListener(lfd, l.accept); err != nil {
		return nil, err // lfd closed
	}
	l.ln = l.ev.Listener()
	l.ev.AtRoundEnd(l.flushRound)
	return l, nil
}
func (l *edgeLoop) run() {
	if err := l.ev.Run(); err != nil {
		l.s.log.Error("event loop failed; its connections are closed", "error", err.Error())
	}
	for fd := range l.ev.Descriptors() {
		switch h := l.ev.Handler(fd).(type) {
		case *clientConn:
			l.s.closed()
		case *upConn:
			l.dropUpstream(h) // out of the endpoint's count too
		}
	}
	l.ev.CloseAll()
}

// stopAccepting closes the listening socket; the client connections close
// after their exchange, answered with Connection: close. One between two
// requests is not closed at once: its client may be sending the next one
// (a kept-alive client that finds the connection closed under a request
// it sent counts a failure), and one accepted moments ago may have its
// first in flight (an upgrade hands the socket on while clients connect).
// Each gets freshGrace to send it.
func (l *edgeLoop) stopAccepting() {
	l.draining = true
	l.ln.Close()
	for _, c := range l.clientsIdle() {
		c.Schedule(freshGrace)
	}
}

// freshGrace is how long a drain waits for the next request of a
// connection between two, or the first of one accepted just before it.
const freshGrace = time.Second

// clientsIdle lists the client connections between requests.
func (l *edgeLoop) clientsIdle() []*clientConn {
	var idle []*clientConn
	for fd := range l.ev.Descriptors() {
		if c, ok := l.ev.Handler(fd).(*clientConn); ok && c.ex == nil && len(c.out) == 0 && len(c.in) == 0 {
			idle = append(idle, c)
		}
	}
	return idle
}
func (l *edgeLoop) accept() {
	for l.ln.Accepting() {
		fd, peer, err := evloop.Accept(l.ln.Fd())
		switch err {
		case nil:
		case unix.EAGAIN, unix.EINTR, unix.ECONNABORTED:
			return
		default:
			// Out of descriptors or memory: the listening socket stays
			// readable, and accepting again at once would spin. Pause,
			// as nginx does, and let connections end meanwhile.
			l.pauseAccept(err)
			return
		}
		c := &clientConn{l: l}
		local, _ := evloop.LocalAddr(fd)
		c.addrs.remote = net.TCPAddrFromAddrPort(peer)
		c.addrs.local = net.TCPAddrFromAddrPort(local)
		if err := l.ev.Open(&c.Conn, fd, c, c.timedOut); err != nil {
			continue // closed by Open
		}
		l.s.opened()
		c.state = clientIdle
		c.Schedule(l.p.cur().Timeouts.ClientIdle)
	}
}

// acceptPause is how long a loop stops accepting after accept(2) failed
// for want of descriptors or memory.
const acceptPause = 100 * time.Millisecond

func (l *edgeLoop) pauseAccept(err error) {
	if err := l.ln.Pause(acceptPause, l.resumeFailed); err != nil {
		l.s.log.Error("cannot pause accepting; closed the listening socket", "error", err.Error())
		return
	}
	l.p.metrics.acceptPauses.Inc()
	l.s.log.Warn("accept failed; not accepting for a while", "error", err.Error(), "pause", acceptPause)
}

func (l *edgeLoop) resumeFailed(err error) {
	l.s.log.Error("cannot accept again; closed the listening socket", "error", err.Error())
}

// flushRound sends the writes the round's events left. Responses go first,
// then requests: an endpoint woken by its request may take the CPU, and
// the clients' answers should not wait for it. Each flush may start more
// work (a pipelined request, a retry), whose writes join the lists.
func (l *edgeLoop) flushRound() {
	for len(l.clientWrites) > 0 || len(l.upWrites) > 0 {
		for i := 0; i < len(l.clientWrites); i++ {
			c := l.clientWrites[i]
			l.clientWrites[i] = nil
			c.queued = false
			if !c.Closed() {
				l.flushClient(c)
			}
		}
		l.clientWrites = l.clientWrites[:0]
		for i := 0; i < len(l.upWrites); i++ {
			up := l.upWrites[i]
			l.upWrites[i] = nil
			up.queued = false
			if !up.Closed() && up.ex != nil && len(up.out) > 0 && up.state != upConnecting {
				l.writeUpstream(up)
			}
		}
		l.upWrites = l.upWrites[:0]
	}
}
