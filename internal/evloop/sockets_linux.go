package evloop

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Listen opens a non-blocking TCP listening socket on ap with SO_REUSEPORT,
// so that each loop of a set can have its own socket on the same port and
// the kernel spreads new connections between them. Accepted connections
// inherit its TCP keep-alive, probing a silent peer after 15 s as Go's own
// listeners do, so that a vanished client does not hold its connection.
func Listen(ap netip.AddrPort) (int, error) {
	fd, err := unix.Socket(family(ap), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	for _, o := range []struct{ level, opt, value int }{
		{unix.SOL_SOCKET, unix.SO_REUSEADDR, 1},
		{unix.SOL_SOCKET, unix.SO_REUSEPORT, 1},
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 15},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 15},
	} {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.value); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("setsockopt: %w", err)
		}
	}
	if err := unix.Bind(fd, sockaddr(ap)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind %s: %w", ap, err)
	}
	if err := unix.Listen(fd, 4096); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("listen %s: %w", ap, err)
	}
	return fd, nil
}

// LocalAddr is the address a socket is bound to: the port that port 0
// picked.
func LocalAddr(fd int) (netip.AddrPort, error) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockname: %w", err)
	}
	return addrPort(sa), nil
}

// Accept takes the next connection off a listening socket, non-blocking and
// with Nagle's algorithm off, and returns it with its peer's address (IPv4
// peers of an IPv6 socket unmapped). It fails with EAGAIN when there is
// none.
func Accept(lfd int) (int, netip.AddrPort, error) {
	fd, sa, err := unix.Accept4(lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	if err != nil {
		return -1, netip.AddrPort{}, err
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	peer := addrPort(sa)
	return fd, netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port()), nil
}

// Connect starts a non-blocking connection to ap. connecting is set when it
// is still under way: the descriptor turns writable once it is settled, and
// Connected then says how.
func Connect(ap netip.AddrPort) (fd int, connecting bool, err error) {
	fd, err = unix.Socket(family(ap), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, false, fmt.Errorf("socket: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	// A sockaddr of its own per call: connect(2)'s wrapper writes into it.
	err = unix.Connect(fd, sockaddr(ap))
	if err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return -1, false, fmt.Errorf("connect %s: %w", ap, err)
	}
	return fd, err != nil, nil
}

// Connected reports how a connection Connect left under way has settled:
// done when it has, with err when it failed.
func Connected(fd int) (done bool, err error) {
	soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return true, fmt.Errorf("getsockopt: %w", err)
	}
	if soErr != 0 {
		return true, unix.Errno(soErr)
	}
	if _, err := unix.Getpeername(fd); err != nil {
		return false, nil // not connected yet
	}
	return true, nil
}

func family(ap netip.AddrPort) int {
	if ap.Addr().Unmap().Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ip := ap.Addr().Unmap(); ip.Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ip.As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

func addrPort(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
	}
	return netip.AddrPort{}
}
