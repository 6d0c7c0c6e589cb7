package edge

import (
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"
)

// batchConn is the connection x/net's HTTP/2 server writes to: it batches
// the frames of every stream into as few TLS records and write(2) calls as
// the client's reading allows.
//
// x/net flushes whenever its queue of frames runs empty, and a stream's
// HEADERS and DATA are queued one after the other (the handler waits for
// the first to be written before it sends the second), so without this
// every frame of a small response is a record and a system call of its
// own. Here a write only copies the bytes and, unless a drain is running
// already, starts one; the drain writes everything copied meanwhile when
// it gets to run, after the goroutines ready before it: the frames that
// the connection's other streams wrote in the meantime go out in the same
// write.
//
// Each write to the client is bounded by timeout (timeouts.client_write,
// as x/net's WriteByteTimeout was): a client that reads nothing for that
// long is cut off, and writers wait for it while maxBatch bytes are
// pending. Reads, addresses and the TLS state are the connection's.
type batchConn struct {
	net.Conn
	timeout time.Duration

	mu       sync.Mutex
	drained  sync.Cond // broadcast when a drain has written, or ended
	pending  []byte
	draining bool
	err      error // the first write error; every later write returns it
	closed   bool  // Close was called: the drain closes the connection at its end
}

// maxBatch is how many bytes may wait for the client before writers wait.
const maxBatch = 64 << 10

// closeGrace bounds the write of what is pending when the connection is
// closed (a GOAWAY, the last frames).
const closeGrace = time.Second

var errBatchClosed = errors.New("http2: connection closed")

// batchBufs holds the buffers of drains that ended, so that idle
// connections hold none.
var batchBufs = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

func newBatchConn(c net.Conn, timeout time.Duration) *batchConn {
	b := &batchConn{Conn: c, timeout: timeout}
	b.drained.L = &b.mu
	return b
}

// Write copies p to be written by the drain.
func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.err == nil && !b.closed && len(b.pending) >= maxBatch {
		b.drained.Wait()
	}
	switch {
	case b.err != nil:
		return 0, b.err
	case b.closed:
		return 0, errBatchClosed
	}
	if b.pending == nil {
		b.pending = (*batchBufs.Get().(*[]byte))[:0]
	}
	b.pending = append(b.pending, p...)
	if !b.draining {
		b.draining = true
		go b.drain()
	}
	return len(p), nil
}

// drain writes what is pending until nothing is, then ends; after Close
// it closes the connection.
func (b *batchConn) drain() {
	var spare []byte
	b.mu.Lock()
	for len(b.pending) > 0 && b.err == nil {
		out := b.pending
		b.pending = spare
		// Room again for writers waiting: the next batch fills while this
		// one is written.
		b.drained.Broadcast()
		deadline := time.Now().Add(b.timeout)
		if b.closed {
			deadline = time.Now().Add(closeGrace)
		}
		b.mu.Unlock()
		err := b.Conn.SetWriteDeadline(deadline)
		if err == nil {
			_, err = b.Conn.Write(out)
		}
		b.mu.Lock()
		if err != nil {
			b.err = err
		}
		spare = out[:0]
		b.drained.Broadcast()
	}
	b.draining = false
	closing := b.closed
	for _, buf := range [][]byte{spare, b.pending} {
		if buf != nil && cap(buf) <= maxBatch*2 {
			buf = buf[:0]
			batchBufs.Put(&buf)
		}
	}
	b.pending = nil
	b.drained.Broadcast()
	b.mu.Unlock()
	if closing {
		_ = b.Conn.Close()
	}
}

// Close closes the connection once what is pending is written (within
// closeGrace); it does not wait for that.
func (b *batchConn) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	if b.draining {
		// The drain closes it; a write in progress gets the short bound.
		_ = b.Conn.SetWriteDeadline(time.Now().Add(closeGrace))
		b.drained.Broadcast()
		b.mu.Unlock()
		return nil
	}
	b.mu.Unlock()
	return b.Conn.Close()
}

// wait returns once no drain runs: what was pending is written, or failed
// (bounded by timeout, or closeGrace after Close).
func (b *batchConn) wait() {
	b.mu.Lock()
	for b.draining {
		b.drained.Wait()
	}
	b.mu.Unlock()
}

// SetWriteDeadline is the drain's to set; x/net's own calls are ignored.
func (b *batchConn) SetWriteDeadline(time.Time) error { return nil }

// SetDeadline sets the read deadline only, for the same reason.
func (b *batchConn) SetDeadline(t time.Time) error { return b.Conn.SetReadDeadline(t) }

// ConnectionState is the TLS state x/net checks (version, cipher suite).
func (b *batchConn) ConnectionState() tls.ConnectionState {
	if cs, ok := b.Conn.(interface{ ConnectionState() tls.ConnectionState }); ok {
		return cs.ConnectionState()
	}
	return tls.ConnectionState{}
}
