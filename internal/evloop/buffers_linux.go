package evloop

import (
	"errors"
	"io"

	"golang.org/x/sys/unix"
)

// ErrBufferFull is ReadInto's answer when the buffer reached its limit
// with more to read.
var ErrBufferFull = errors.New("evloop: buffer full")

// ReadInto reads what the socket holds into *buf, growing it up to limit
// bytes. A read shorter than the room it had drained the socket: no need for
// the read that would say EAGAIN, unless the peer closed (toEOF), whose end
// of file may sit behind the data. It returns how many bytes it read and
// io.EOF at end of file, ErrBufferFull at the limit, or the read's error.
func ReadInto(fd int, buf *[]byte, limit int, toEOF bool) (int, error) {
	total := 0
	for {
		b := *buf
		if cap(b)-len(b) < 4096 {
			if len(b) >= limit {
				return total, ErrBufferFull
			}
			grown := make([]byte, len(b), min(max(2*cap(b), 16<<10), limit+4096))
			copy(grown, b)
			b = grown
		}
		room := b[len(b):cap(b)]
		n, err := Read(fd, room)
		if n > 0 {
			b = b[:len(b)+n]
			total += n
		}
		*buf = b
		switch {
		case err == unix.EAGAIN:
			return total, nil
		case err == unix.EINTR:
			continue
		case err != nil:
			return total, err
		case n == 0:
			return total, io.EOF
		case n < len(room) && !toEOF:
			return total, nil
		}
	}
}

// Flush writes *out to fd until it is sent or the socket is full.
func Flush(fd int, out *[]byte) error {
	b := *out
	sent := 0
	for sent < len(b) {
		n, err := Write(fd, b[sent:])
		if n > 0 {
			sent += n
			continue
		}
		if err == unix.EAGAIN {
			break
		}
		if err == unix.EINTR {
			continue
		}
		if err == nil {
			err = unix.EIO
		}
		return err
	}
	*out = b[:copy(b, b[sent:])]
	return nil
}

// WriteThrough sends *out and then b to fd in one writev(2) and keeps in
// *out what the socket did not take, so that a large b is copied only in
// the part that has to wait, not whole before it is sent. A full socket is
// not an error; any other failure is returned, with everything kept.
func WriteThrough(fd int, out *[]byte, b []byte) error {
	o := *out
	n, err := Writev2(fd, o, b)
	for err == unix.EINTR {
		n, err = Writev2(fd, o, b)
	}
	if err != nil {
		*out = append(o, b...)
		if err == unix.EAGAIN {
			return nil
		}
		return err
	}
	if n >= len(o) {
		b, o = b[n-len(o):], o[:0]
	} else {
		o = o[:copy(o, o[n:])]
	}
	*out = append(o, b...)
	return nil
}
