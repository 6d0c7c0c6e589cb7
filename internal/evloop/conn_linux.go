package evloop

import (
	"fmt"
	"io"
	"time"

	"golang.org/x/sys/unix"
)

// Conn is a connection the loop watches: its descriptor, its timer, and
// what the loop has learnt of the socket. Its owner embeds it and opens it
// with Open; Close ends it once, taking it out of the loop before the
// descriptor closes, so that an event for the number, reused by the next
// accept or connect, never reaches the old owner.
//
// The loop is edge-triggered: it reports each new arrival of data once.
// Conn remembers whether the socket may still hold some (Pending) when the
// owner stopped reading before the socket said EAGAIN, whether because its
// buffer was full or because it yielded the loop (Again).
type Conn struct {
	loop    *Loop
	handler Handler
	fd      int
	timer   Timer
	// pending: the socket may hold data no read has taken yet.
	pending bool
	// peerClosed: the peer sends nothing more; its end of file may sit
	// behind data, so reads go on until they meet it.
	peerClosed bool
	// eof: a read met the end of file.
	eof bool
	// again: in the loop's list for a Readable event next round.
	again  bool
	closed bool
}

// Open registers fd, a connected (or connecting) non-blocking socket, with
// h for its events and timeout for its timer. On failure fd is closed.
func (l *Loop) Open(c *Conn, fd int, h Handler, timeout func()) error {
	*c = Conn{loop: l, handler: h, fd: fd, timer: Timer{fn: timeout}}
	if err := l.add(fd, h, c, unix.EPOLLIN|unix.EPOLLOUT|unix.EPOLLRDHUP|unix.EPOLLET); err != nil {
		c.closed = true
		unix.Close(fd)
		return err
	}
	return nil
}

// observe records what an event says of the socket, before its handler
// sees it.
func (c *Conn) observe(ev Events) {
	if ev.Has(Readable) {
		c.pending = true
	}
	if ev.Has(PeerClosed) {
		c.peerClosed = true
	}
}

// Fd is the connection's descriptor, for the system calls Conn does not
// make; it is not to be closed but through Close.
func (c *Conn) Fd() int { return c.fd }

// Closed reports whether Close or Detach ended the connection.
func (c *Conn) Closed() bool { return c.closed }

// Pending reports whether the socket may hold data that no read has taken.
func (c *Conn) Pending() bool { return c.pending && !c.closed }

// EOF reports whether a read met the peer's end of file.
func (c *Conn) EOF() bool { return c.eof }

// Schedule arms the connection's timer to fire after d, replacing any
// earlier arming.
func (c *Conn) Schedule(d time.Duration) { c.loop.Schedule(&c.timer, d) }

// Cancel disarms the connection's timer.
func (c *Conn) Cancel() { c.loop.Cancel(&c.timer) }

// Read reads what the socket holds into *buf, growing it up to limit
// bytes, as ReadInto does; the connection remembers whether more may wait.
func (c *Conn) Read(buf *[]byte, limit int) (int, error) {
	n, err := ReadInto(c.fd, buf, limit, c.peerClosed)
	switch err {
	case ErrBufferFull:
		// More may wait behind the full buffer.
	case io.EOF:
		c.eof, c.pending = true, false
	default:
		c.pending = false
	}
	return n, err
}

// Again asks for a Readable event next round, for an owner that stopped
// reading with data still pending so that the loop's other connections get
// their turn: the loop then looks for new events without waiting.
func (c *Conn) Again() {
	if c.again || c.closed {
		return
	}
	c.again = true
	c.loop.again = append(c.loop.again, c)
}

// Flush writes *out until it is sent or the socket is full (Flush).
func (c *Conn) Flush(out *[]byte) error { return Flush(c.fd, out) }

// WriteThrough sends *out and then b in one writev(2), keeping in *out what
// the socket did not take (WriteThrough).
func (c *Conn) WriteThrough(out *[]byte, b []byte) error { return WriteThrough(c.fd, out, b) }

// Close ends the connection: its timer is cancelled, its handler
// forgotten, and its descriptor closed. Later calls do nothing.
func (c *Conn) Close() {
	if c.closed {
		return
	}
	c.closed = true
	c.loop.Cancel(&c.timer)
	c.loop.Remove(c.fd)
	unix.Close(c.fd)
}

// Detach ends the connection for the loop without closing its descriptor,
// which it returns, for an owner that hands the socket on. The descriptor
// is closed when it cannot be taken out of the loop.
func (c *Conn) Detach() (int, error) {
	if c.closed {
		return -1, fmt.Errorf("evloop: detach of a closed connection")
	}
	c.closed = true
	c.loop.Cancel(&c.timer)
	if err := c.loop.Detach(c.fd); err != nil {
		unix.Close(c.fd)
		return -1, err
	}
	return c.fd, nil
}

// runAgain delivers the Readable events Again asked for, to connections
// still open with data pending.
func (l *Loop) runAgain() {
	l.againRunning, l.again = l.again, l.againRunning[:0]
	for i, c := range l.againRunning {
		l.againRunning[i] = nil
		c.again = false
		if !c.closed && c.pending {
			c.handler.Event(Readable)
		}
	}
}
