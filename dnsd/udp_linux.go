//go:build linux

package dnsd

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// On Linux, dnsd reads UDP with blocking sockets of its own and batches:
// recvmmsg returns every datagram waiting (up to batchSize) and one
// sendmmsg writes their answers. Go's net package would instead make every
// read non-blocking and go through the runtime's poller: under load that is
// about one epoll_pwait, one EAGAIN read and one spinning thread's
// nanosleep for every query, on top of the read and the write, which took
// more CPU than answering (see README, "Performance").

const (
	// batchSize is how many datagrams one recvmmsg may return.
	batchSize = 32
	// readSize bounds a query. Larger datagrams are cut by the kernel
	// (MSG_TRUNC) and dropped; DNS queries are far smaller.
	readSize = 4096
	// pollInterval is how often a worker blocked on an idle socket wakes
	// to see whether the server is closing (SO_RCVTIMEO), in case
	// shutdown(2) did not wake it.
	pollInterval = 500 * time.Millisecond
)

// blockingWorkers reports that the UDP workers of this system spend their
// life in blocking system calls, each holding one of the runtime's Ps.
const blockingWorkers = true

// batchSocket is one blocking UDP socket of the listen address.
type batchSocket struct {
	fd    int
	state atomic.Int32  // idle, serving, stopping or closed
	done  chan struct{} // closed when serve returns
	// shared: another process may serve the socket too (upgrades), so
	// close must not shut it down (shutdown(2) acts on the socket, not
	// on this process's descriptor): the worker sees the close within
	// pollInterval instead.
	shared bool
}

// openUDPSockets opens n blocking UDP sockets on addr, sharing the port
// with SO_REUSEPORT when n > 1, each with a receive buffer of rcvbuf bytes.
func openUDPSockets(addr string, n, rcvbuf int) ([]udpSocket, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen udp %s: %w", addr, err)
	}
	var socks []udpSocket
	for i := 0; i < n; i++ {
		fd, err := openUDP(ua, true, rcvbuf)
		if err != nil {
			for _, s := range socks {
				s.close()
			}
			return nil, fmt.Errorf("listen udp %s: %w", addr, err)
		}
		socks = append(socks, &batchSocket{fd: fd, done: make(chan struct{})})
	}
	return socks, nil
}

// openUDP opens one blocking UDP socket bound to ua. A wildcard address is
// served over IPv6 and IPv4 by one dual-stack socket, as the net package
// does, falling back to IPv4 alone on a host without IPv6.
func openUDP(ua *net.UDPAddr, reuse bool, rcvbuf int) (int, error) {
	var sa unix.Sockaddr
	family, dual := unix.AF_INET, false
	switch ip4 := ua.IP.To4(); {
	case ua.IP == nil || ua.IP.IsUnspecified() && ip4 == nil:
		family, dual = unix.AF_INET6, true
		sa = &unix.SockaddrInet6{Port: ua.Port}
	case ip4 != nil:
		s := &unix.SockaddrInet4{Port: ua.Port}
		copy(s.Addr[:], ip4)
		sa = s
	default:
		family = unix.AF_INET6
		s := &unix.SockaddrInet6{Port: ua.Port}
		copy(s.Addr[:], ua.IP.To16())
		sa = s
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil && dual {
		family, dual, sa = unix.AF_INET, false, &unix.SockaddrInet4{Port: ua.Port}
		fd, err = unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	}
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	fail := func(what string, err error) (int, error) {
		unix.Close(fd)
		return -1, fmt.Errorf("%s: %w", what, err)
	}
	if dual {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
			return fail("IPV6_V6ONLY", err)
		}
	}
	if reuse {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fail("SO_REUSEPORT", err)
		}
	}
	if rcvbuf > 0 {
		// The kernel caps it at net.core.rmem_max.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf); err != nil {
			return fail("SO_RCVBUF", err)
		}
	}
	tv := unix.NsecToTimeval(pollInterval.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fail("SO_RCVTIMEO", err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fail("bind", err)
	}
	return fd, nil
}

// adoptUDPSocket serves a socket handed over by a previous process: a
// descriptor of its own, blocking (the previous one's options, such as
// SO_RCVTIMEO, are the socket's and stay).
func adoptUDPSocket(f *os.File) (udpSocket, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &batchSocket{fd: fd, done: make(chan struct{}), shared: true}, nil
}

// file returns a duplicate of the socket; from then on it is shared.
func (b *batchSocket) file() (*os.File, error) {
	fd, err := unix.FcntlInt(uintptr(b.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	b.shared = true
	return os.NewFile(uintptr(fd), "udp"), nil
}

// close stops the socket's worker and closes the socket once the worker
// has returned, so that its descriptor cannot be reused under it.
func (b *batchSocket) close() {
	if b.state.CompareAndSwap(stateIdle, stateClosed) {
		unix.Close(b.fd)
		return
	}
	if b.state.CompareAndSwap(stateServing, stateClosed) || b.state.CompareAndSwap(stateStopping, stateClosed) {
		if !b.shared {
			// Wakes a worker blocked in recvmmsg even though the
			// socket is not connected (shutdown itself then fails
			// with ENOTCONN).
			unix.Shutdown(b.fd, unix.SHUT_RD)
		}
		<-b.done
		unix.Close(b.fd)
	}
}

// stop lets the worker answer the batch it read and return, within
// pollInterval (SO_RCVTIMEO), then closes this process's descriptor.
func (b *batchSocket) stop() {
	if b.state.CompareAndSwap(stateServing, stateStopping) {
		<-b.done
		if b.state.CompareAndSwap(stateStopping, stateClosed) {
			unix.Close(b.fd)
		}
		return
	}
	if b.state.CompareAndSwap(stateIdle, stateClosed) {
		unix.Close(b.fd)
	}
}

func (b *batchSocket) closing() bool { return b.state.Load() == stateClosed }

// serve answers the datagrams of the socket until close. Every buffer is
// allocated here, once; nothing is allocated per query.
func (b *batchSocket) serve(s *Server) {
	if !b.state.CompareAndSwap(stateIdle, stateServing) {
		return
	}
	defer close(b.done)
	var (
		msgs  [batchSize]unix.Mmsghdr
		iovs  [batchSize]unix.Iovec
		names [batchSize]unix.RawSockaddrInet6 // big enough for IPv4 too
		in    = make([]byte, batchSize*readSize)
		outs  [batchSize]unix.Mmsghdr
		oiovs [batchSize]unix.Iovec
		out   = make([]byte, batchSize*s.handler.data.Load().maxUDP)
	)
	maxUDP := s.handler.data.Load().maxUDP
	for i := range msgs {
		iovs[i].Base = &in[i*readSize]
		msgs[i].Hdr.Iov = &iovs[i]
		msgs[i].Hdr.Iovlen = 1
		msgs[i].Hdr.Name = (*byte)(unsafe.Pointer(&names[i]))
		outs[i].Hdr.Iov = &oiovs[i]
		outs[i].Hdr.Iovlen = 1
	}
	var seq uint32
	for b.state.Load() == stateServing {
		for i := range msgs {
			iovs[i].SetLen(readSize)
			msgs[i].Hdr.Namelen = unix.SizeofSockaddrInet6
			msgs[i].Hdr.Flags = 0
		}
		r, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(b.fd), uintptr(unsafe.Pointer(&msgs[0])), batchSize, unix.MSG_WAITFORONE, 0, 0)
		if errno != 0 {
			if errno != unix.EAGAIN && errno != unix.EINTR && !b.closing() {
				s.m.readErrors.Inc()
			}
			continue
		}
		seq++
		var start time.Time
		if seq&latencySample == 0 {
			start = time.Now()
		}
		k := 0
		for i := 0; i < int(r); i++ {
			if msgs[i].Hdr.Flags&unix.MSG_TRUNC != 0 {
				s.m.dropped.Inc()
				continue
			}
			query := in[i*readSize : i*readSize+int(msgs[i].Len)]
			resp := s.handler.respond(query, out[k*maxUDP:k*maxUDP:(k+1)*maxUDP], true, sockaddrAddr(&names[i]))
			if resp == nil {
				continue
			}
			outs[k].Hdr.Name = msgs[i].Hdr.Name
			outs[k].Hdr.Namelen = msgs[i].Hdr.Namelen
			oiovs[k].Base = &resp[0]
			oiovs[k].SetLen(len(resp))
			k++
		}
		b.send(s, outs[:k])
		if !start.IsZero() {
			s.m.latency[0].Observe(time.Since(start).Seconds())
		}
	}
}

// sockaddrAddr returns the address of a sockaddr recvmmsg filled in, IPv4
// clients of a dual-stack socket as IPv4.
func sockaddrAddr(sa *unix.RawSockaddrInet6) netip.Addr {
	if sa.Family == unix.AF_INET {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrFrom4(sa4.Addr)
	}
	return netip.AddrFrom16(sa.Addr).Unmap()
}

// send writes the answers of msgs with as few sendmmsg calls as the
// kernel allows. An answer that fails (its client's address unreachable,
// say) is counted and skipped.
func (b *batchSocket) send(s *Server, msgs []unix.Mmsghdr) {
	for len(msgs) > 0 {
		r, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(b.fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), 0, 0, 0)
		switch {
		case errno == unix.EINTR:
			continue
		case errno != 0:
			if errors.Is(errno, unix.EBADF) || b.closing() {
				return
			}
			s.m.readErrors.Inc()
			r = 1
		case r == 0:
			return // cannot happen for a blocking socket; never spin
		}
		msgs = msgs[r:]
	}
}
