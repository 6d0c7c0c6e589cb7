package evloop

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// epollHarvest is epoll_wait(2) with a zero timeout, raw for the same
// reason: it never blocks.
func epollHarvest(ep int, events []unix.EpollEvent) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(ep), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}
