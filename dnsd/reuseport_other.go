//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package dnsd

import "syscall"

// reusePortSupported is false here: dnsd opens one UDP socket.
const reusePortSupported = false

func reusePort(network, address string, c syscall.RawConn) error { return nil }
