//go:build !race

package evloop

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Read and Write are read(2) and write(2) for the loop's non-blocking
// descriptors, made as raw system calls: the Go scheduler does not treat
// them as calls that may block. A regular one marks the loop's processor as
// in a system call, and the runtime's monitor, finding it there for more
// than 20 µs (a write on a busy machine takes that long), hands the
// processor to another thread and keeps waking every 20 µs to look again,
// on the very CPU the loop needs. A call on a non-blocking descriptor
// returns at once, so nothing is lost by not telling the scheduler.
//
// Under the race detector they are the regular calls (raw_race_linux.go),
// whose annotations give the race detector the happens-before a write and
// the read of its bytes on another goroutine have.
func Read(fd int, b []byte) (int, error) { return rawIO(unix.SYS_READ, fd, b) }

// Write: see Read.
func Write(fd int, b []byte) (int, error) { return rawIO(unix.SYS_WRITE, fd, b) }

// rawIO is read(2) or write(2), by trap, on b.
func rawIO(trap uintptr, fd int, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	n, _, e := unix.RawSyscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// Writev2 is writev(2) of a then b, raw: see Read.
func Writev2(fd int, a, b []byte) (int, error) {
	var iov [2]unix.Iovec
	n := 0
	for _, p := range [2][]byte{a, b} {
		if len(p) > 0 {
			iov[n].Base = &p[0]
			iov[n].SetLen(len(p))
			n++
		}
	}
	if n == 0 {
		return 0, nil
	}
	r, _, e := unix.RawSyscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(n))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}
