//go:build !linux

package dnsd

import "os"

// openUDPSockets opens the portable sockets of udp.go: Linux has its own,
// which batch (udp_linux.go).
func openUDPSockets(addr string, n, rcvbuf int) ([]udpSocket, error) {
	return openConnSockets(addr, n, rcvbuf)
}

// adoptUDPSocket serves a socket handed over by a previous process.
func adoptUDPSocket(f *os.File) (udpSocket, error) { return adoptConnSocket(f) }

// blockingWorkers is false: the portable workers wait in the runtime's
// poller, holding no P.
const blockingWorkers = false
