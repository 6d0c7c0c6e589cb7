package dnsd

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

// Sockets opens dnsd's sockets, or finds the ones a previous process
// handed over in an in-place upgrade: tableflip's Fds is one. The TCP and
// admin listeners go by address; the UDP sockets, several on one address,
// by name through File and AddFile.
type Sockets interface {
	Listen(network, addr string) (net.Listener, error)
	ListenWithCallback(network, addr string, callback func(network, addr string) (net.Listener, error)) (net.Listener, error)
	// File returns the inherited file of that name, or nil.
	File(name string) (*os.File, error)
	// AddFile hands a duplicate of f over to the next process.
	AddFile(name string, f *os.File) error
}

// Upgrade is how a Server takes part in in-place upgrades (SIGUSR2).
type Upgrade struct {
	// Sockets opens the sockets, or inherits them from the process this
	// one upgrades; nil opens them.
	Sockets Sockets
	// ServeAfterSync makes Run read queries only once the first zone is
	// built from Consul: a process taking over live sockets must not
	// answer SERVFAIL for want of one.
	ServeAfterSync bool
	// OnServing, if set, is called once Run serves every socket.
	OnServing func()
}

// SetUpgrade sets how the server takes part in upgrades; before Listen.
func (s *Server) SetUpgrade(u Upgrade) { s.upgrade = u }

// HandOver makes the coming stop (Run's ctx ending) an in-place
// upgrade's: another process serves the same sockets. UDP workers stop
// reading once they have answered what they read, without closing the
// sockets for that process; TCP stops accepting and each connection gets
// handOverGrace to finish the query it is sending before it is closed.
func (s *Server) HandOver() { s.handover.Store(true) }

// handOverGrace is how long a hand-over waits for a TCP connection's next
// query: one accepted moments before it may have its query in flight.
const handOverGrace = time.Second

// udpSocketName names UDP socket i of addr among the handed-over files.
func udpSocketName(addr string, i int) string { return fmt.Sprintf("udp %s #%d", addr, i) }

// listenInherited is listen through sockets: the TCP listener and the UDP
// sockets a previous process handed over are taken as they are (every
// one of them, even beyond n: a socket left unread would lose what the
// kernel queues on it); the missing ones are opened and handed on.
func listenInherited(sockets Sockets, addr string, n, rcvbuf int, portable bool) (udp []udpSocket, tcp net.Listener, err error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen: %w", err)
	}
	if !reusePortSupported {
		n = 1
	}
	lc := net.ListenConfig{Control: reusePort}
	tcp, err = sockets.ListenWithCallback("tcp", addr, func(network, addr string) (net.Listener, error) {
		return lc.Listen(context.Background(), network, addr)
	})
	if err != nil {
		return nil, nil, fmt.Errorf("listen tcp %s: %w", addr, err)
	}
	fail := func(err error) ([]udpSocket, net.Listener, error) {
		tcp.Close()
		for _, c := range udp {
			c.close()
		}
		return nil, nil, err
	}
	open, adopt := openUDPSockets, adoptUDPSocket
	if portable {
		open, adopt = openConnSockets, adoptConnSocket
	}
	bound := net.JoinHostPort(host, strconv.Itoa(tcp.Addr().(*net.TCPAddr).Port))
	for i := 0; ; i++ {
		name := udpSocketName(addr, i)
		f, err := sockets.File(name)
		if err != nil {
			return fail(fmt.Errorf("inherited socket %s: %w", name, err))
		}
		if f != nil {
			c, err := adopt(f)
			f.Close()
			if err != nil {
				return fail(fmt.Errorf("inherited socket %s: %w", name, err))
			}
			udp = append(udp, c)
			continue
		}
		if i >= n {
			return udp, tcp, nil
		}
		socks, err := open(bound, 1, rcvbuf)
		if err != nil {
			return fail(err)
		}
		udp = append(udp, socks[0])
		if err := handOn(sockets, name, socks[0]); err != nil {
			return fail(fmt.Errorf("hand over socket %s: %w", name, err))
		}
	}
}

// handOn registers c with sockets, for the next process.
func handOn(sockets Sockets, name string, c udpSocket) error {
	carrier, err := c.file()
	if err != nil {
		return err
	}
	defer carrier.Close()
	return sockets.AddFile(name, carrier)
}
