//go:build race

package evloop

import "golang.org/x/sys/unix"

// Read and Write are the regular calls under the race detector: see
// raw_linux.go.
func Read(fd int, b []byte) (int, error) { return unix.Read(fd, b) }

// Write: see Read.
func Write(fd int, b []byte) (int, error) { return unix.Write(fd, b) }

// Writev2 is writev(2) of a then b: see Read.
func Writev2(fd int, a, b []byte) (int, error) { return unix.Writev(fd, [][]byte{a, b}) }
