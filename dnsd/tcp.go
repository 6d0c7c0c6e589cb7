package dnsd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// tcpServer answers DNS over TCP (RFC 7766): length-prefixed messages,
// several per connection, answered in order, with the same Handler as UDP
// so that both transports give the same answers.
type tcpServer struct {
	s *Server

	bufs sync.Pool // *[]byte of 2+65535: a length prefix and an answer

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup

	// accepting is closed when serve returns.
	accepting chan struct{}
	// drainBy, once set (Unix nanoseconds), is when every connection's
	// wait for its next query ends; each closes after its answer.
	drainBy atomic.Int64
}

func newTCPServer(s *Server) *tcpServer {
	t := &tcpServer{s: s, conns: map[net.Conn]struct{}{}, accepting: make(chan struct{})}
	t.bufs.New = func() any {
		b := make([]byte, 2+maxTCPSize)
		return &b
	}
	return t
}

// serve accepts connections on l until it is closed.
func (t *tcpServer) serve(l net.Listener) {
	defer close(t.accepting)
	delay := 5 * time.Millisecond
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors, say: wait a little and go on,
			// as net/http does.
			t.s.m.readErrors.Inc()
			t.s.log.Warn("tcp accept failed", "error", err.Error(), "retry_in", delay.String())
			time.Sleep(delay)
			delay = min(2*delay, time.Second)
			continue
		}
		delay = 5 * time.Millisecond
		if !t.track(c) {
			t.s.m.tcpRejected.Inc()
			c.Close()
			continue
		}
		go t.serveConn(c)
	}
}

// track registers c, or returns false when too many connections are open
// or the server is closing.
func (t *tcpServer) track(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || len(t.conns) >= t.s.tcpLimits.Load().MaxConnections {
		return false
	}
	t.conns[c] = struct{}{}
	t.wg.Add(1)
	t.s.m.tcpConns.Set(float64(len(t.conns)))
	return true
}

func (t *tcpServer) untrack(c net.Conn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.s.m.tcpConns.Set(float64(len(t.conns)))
	t.mu.Unlock()
	t.wg.Done()
}

// serveConn answers the queries of one connection until the client closes
// it, stays idle for the idle timeout, or sends a message that cannot be
// parsed (after which the stream cannot be trusted).
func (t *tcpServer) serveConn(c net.Conn) {
	defer t.untrack(c)
	defer c.Close()
	var from netip.Addr
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		from = a.AddrPort().Addr().Unmap()
	}
	r := bufio.NewReaderSize(c, 1024)
	msg := make([]byte, 512)
	var prefix [2]byte
	for {
		c.SetReadDeadline(time.Now().Add(t.s.tcpLimits.Load().IdleTimeout))
		// After the deadline is set: a drain that began before sees it
		// here, one that begins after sets its own over it.
		if by := t.drainBy.Load(); by != 0 {
			c.SetReadDeadline(time.Unix(0, by))
		}
		if _, err := io.ReadFull(r, prefix[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(prefix[:]))
		if n > len(msg) {
			msg = make([]byte, n)
		}
		if _, err := io.ReadFull(r, msg[:n]); err != nil {
			return
		}
		start := time.Now()
		bp := t.bufs.Get().(*[]byte)
		out := *bp
		resp, slow := t.s.handler.respondTCP(msg[:n], out[2:2], from)
		if slow {
			// A zone transfer or a signed query: as many messages as
			// it takes, each with its length.
			t.bufs.Put(bp)
			err := t.s.handler.xfr.serve(msg[:n], from, true, maxTCPSize, func(m []byte) error {
				c.SetWriteDeadline(time.Now().Add(t.s.tcpLimits.Load().IdleTimeout))
				var head [2]byte
				binary.BigEndian.PutUint16(head[:], uint16(len(m)))
				bufs := net.Buffers{head[:], m}
				_, err := bufs.WriteTo(c)
				return err
			})
			if err != nil {
				return
			}
			continue
		}
		if resp == nil {
			t.bufs.Put(bp)
			return
		}
		binary.BigEndian.PutUint16(out, uint16(len(resp)))
		c.SetWriteDeadline(time.Now().Add(t.s.tcpLimits.Load().IdleTimeout))
		_, err := c.Write(out[:2+len(resp)])
		t.bufs.Put(bp)
		t.s.m.latency[1].Observe(time.Since(start).Seconds())
		if err != nil || t.drainBy.Load() != 0 {
			return
		}
	}
}

// drain is close for an upgrade's hand-over, once the listener is closed:
// it waits for serve to return, so that no accepted connection is missed,
// then gives every connection until grace from now for the query it may
// be sending, answers it, and closes it. A client connected moments ago
// gets its answer from this process; the next ones connect to the new.
func (t *tcpServer) drain(grace time.Duration) {
	<-t.accepting
	by := time.Now().Add(grace)
	t.drainBy.Store(by.UnixNano())
	t.mu.Lock()
	t.closed = true
	for c := range t.conns {
		c.SetReadDeadline(by)
	}
	t.mu.Unlock()
	t.wg.Wait()
}

// close stops every connection: reads blocked waiting for a next query
// return at once, an answer being written is finished. It waits for the
// connections' goroutines.
func (t *tcpServer) close() {
	t.mu.Lock()
	t.closed = true
	for c := range t.conns {
		c.SetReadDeadline(time.Now())
	}
	t.mu.Unlock()
	t.wg.Wait()
}
