package dnsd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

// udpSocket is one UDP socket of the listen address with the loop that
// answers its queries.
type udpSocket interface {
	// serve answers queries until close; it is called once.
	serve(s *Server)
	// close stops serve and releases the socket; it waits for serve to
	// return if serve was started.
	close()
	// stop is close for a socket another process serves too (an
	// upgrade's hand-over): serve returns once it has answered what it
	// read, and only this process's descriptor is closed.
	stop()
	// file returns a duplicate of the socket, to hand over.
	file() (*os.File, error)
}

// listen binds addr over TCP and n UDP sockets sharing its port, all with
// SO_REUSEPORT (also when n is 1, so that another dnsd can join them). With port 0, the port the kernel picks for TCP is taken for
// UDP too, retrying when it is taken for UDP. portable selects the
// net.UDPConn sockets even where faster ones exist (tests).
func listen(addr string, n, rcvbuf int, portable bool) (udp []udpSocket, tcp net.Listener, err error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen: %w", err)
	}
	if !reusePortSupported {
		n = 1
	}
	open := openUDPSockets
	if portable {
		open = openConnSockets
	}
	// SO_REUSEPORT on TCP too, so that a new dnsd can bind the address
	// while the old one still serves it (a restart without a gap).
	lc := net.ListenConfig{Control: reusePort}
	for attempt := 0; ; attempt++ {
		tcp, err = lc.Listen(context.Background(), "tcp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("listen tcp %s: %w", addr, err)
		}
		udp, err = open(net.JoinHostPort(host, strconv.Itoa(tcp.Addr().(*net.TCPAddr).Port)), n, rcvbuf)
		if err == nil {
			return udp, tcp, nil
		}
		tcp.Close()
		if port != "0" || attempt == 10 {
			return nil, nil, err
		}
	}
}

// connSocket serves UDP through the net package: portable, but every read
// goes through the runtime's poller.
type connSocket struct {
	conn  *net.UDPConn
	state atomic.Int32  // idle, serving or closed
	done  chan struct{} // closed when serve returns
}

// The states of a socket: serve moves it from idle to serving, close to
// closed, waiting for serve only if it started; stop goes through stopping,
// in which serve answers what it read and returns.
const (
	stateIdle = iota
	stateServing
	stateStopping
	stateClosed
)

// openConnSockets opens n sockets on addr with the net package.
func openConnSockets(addr string, n, rcvbuf int) ([]udpSocket, error) {
	lc := net.ListenConfig{Control: reusePort}
	var socks []udpSocket
	for i := 0; i < n; i++ {
		pc, err := lc.ListenPacket(context.Background(), "udp", addr)
		if err != nil {
			for _, s := range socks {
				s.close()
			}
			return nil, fmt.Errorf("listen udp %s: %w", addr, err)
		}
		conn := pc.(*net.UDPConn)
		if rcvbuf > 0 {
			// Best effort: the kernel caps it at its maximum.
			conn.SetReadBuffer(rcvbuf)
		}
		socks = append(socks, &connSocket{conn: conn, done: make(chan struct{})})
	}
	return socks, nil
}

// adoptConnSocket serves a socket handed over by a previous process.
func adoptConnSocket(f *os.File) (udpSocket, error) {
	pc, err := net.FilePacketConn(f)
	if err != nil {
		return nil, err
	}
	conn, ok := pc.(*net.UDPConn)
	if !ok {
		pc.Close()
		return nil, fmt.Errorf("not a UDP socket: %s", pc.LocalAddr())
	}
	return &connSocket{conn: conn, done: make(chan struct{})}, nil
}

func (c *connSocket) file() (*os.File, error) { return c.conn.File() }

func (c *connSocket) close() {
	prev := c.state.Swap(stateClosed)
	c.conn.Close()
	if prev == stateServing || prev == stateStopping {
		<-c.done
	}
}

// stop wakes serve with a read deadline, which concerns this process's
// descriptor only, and closes the socket once serve has returned.
func (c *connSocket) stop() {
	if c.state.CompareAndSwap(stateServing, stateStopping) {
		c.conn.SetReadDeadline(time.Now())
		<-c.done
	}
	c.close()
}

// latencySample is how often an answer's latency is observed: one read in
// latencySample+1. Sampling keeps the clock reads and the histogram off the
// path of most queries; the distribution stays the same.
const latencySample = 15

// serve answers the queries arriving on the socket until it is closed. It
// allocates nothing per query: one read buffer and one answer buffer serve
// every query of the socket.
func (c *connSocket) serve(s *Server) {
	if !c.state.CompareAndSwap(stateIdle, stateServing) {
		return
	}
	defer close(c.done)
	in := make([]byte, 65535)
	out := make([]byte, s.handler.data.Load().maxUDP)
	var seq uint32
	for {
		n, from, err := c.conn.ReadFromUDPAddrPort(in)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || c.state.Load() != stateServing {
				return
			}
			// ICMP errors of earlier writes surface here on some
			// systems; they concern one client, not the socket.
			s.m.readErrors.Inc()
			continue
		}
		seq++
		var start time.Time
		if seq&latencySample == 0 {
			start = time.Now()
		}
		if resp := s.handler.respond(in[:n], out, true, from.Addr().Unmap()); resp != nil {
			if _, err := c.conn.WriteToUDPAddrPort(resp, from); err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				s.m.readErrors.Inc()
			}
		}
		if !start.IsZero() {
			s.m.latency[0].Observe(time.Since(start).Seconds())
		}
	}
}
