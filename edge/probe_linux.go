package edge

import (
	"net"
	"syscall"
)

// peerClosed reports whether an idle pooled connection is unusable: the
// endpoint closed it (a peek reads end of file) or sent something unasked.
// It costs one non-blocking recv(2), so it is only done for connections idle
// long enough that the endpoint's keep-alive timeout may have run out.
func peerClosed(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	closed := false
	var buf [1]byte
	_ = rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		closed = err != syscall.EAGAIN
		return true
	})
	return closed
}
