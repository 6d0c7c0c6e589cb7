//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package dnsd

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// reusePortSupported tells whether several UDP sockets can share a port.
const reusePortSupported = true

// reusePort sets SO_REUSEPORT, with which the kernel spreads the datagrams
// of one port over several sockets by their source address.
func reusePort(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}
