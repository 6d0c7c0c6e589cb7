package edge

import (
	"fmt"
	"net/netip"
	"os"

	"github.com/podedge/podedge/internal/evloop"
	"golang.org/x/sys/unix"
)

// loopSocket returns loop i's listening socket on ap: the one a previous
// process handed over under that name, else a new one, registered with
// sockets for the next process. Inherited sockets are the same kernel
// sockets, accept queues included: nothing waiting in them is lost.
func loopSocket(sockets Sockets, name string, ap netip.AddrPort) (int, error) {
	if sockets == nil {
		return evloop.Listen(ap)
	}
	f, err := sockets.File(name)
	if err != nil {
		return -1, fmt.Errorf("inherited socket %s: %w", name, err)
	}
	if f != nil {
		// The loop owns a descriptor of its own; f is only the carrier.
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		f.Close()
		if err != nil {
			return -1, fmt.Errorf("inherited socket %s: %w", name, err)
		}
		return fd, nil
	}
	fd, err := evloop.Listen(ap)
	if err != nil {
		return -1, err
	}
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	carrier := os.NewFile(uintptr(dup), name)
	err = sockets.AddFile(name, carrier)
	carrier.Close()
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("hand over socket %s: %w", name, err)
	}
	return fd, nil
}
