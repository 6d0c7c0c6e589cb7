package edge

import (
	"net"
	"os"
)

// Sockets opens the edge's listening sockets, or finds the ones a previous
// process handed over in an in-place upgrade: tableflip's Fds is one.
// Listen is for the listeners of the net package (fasthttp engine, HTTPS,
// admin); File and AddFile carry the event loops' SO_REUSEPORT sockets,
// which are several on one address, by name.
type Sockets interface {
	Listen(network, addr string) (net.Listener, error)
	// File returns the inherited file of that name, or nil.
	File(name string) (*os.File, error)
	// AddFile hands a duplicate of f over to the next process.
	AddFile(name string, f *os.File) error
}

// listen opens (or inherits) a TCP listener on addr.
func (e *Edge) listen(addr string) (net.Listener, error) {
	if e.opts.Sockets != nil {
		return e.opts.Sockets.Listen("tcp", addr)
	}
	return net.Listen("tcp", addr)
}
