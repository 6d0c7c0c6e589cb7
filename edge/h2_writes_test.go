package edge

import (
	"bytes"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// countingConn counts the writes that reach the connection.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// tcpPair is both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

// Frames written one after the other, before the drain gets to run, go
// out in fewer writes, whole and in order; Close writes what is pending
// before it closes.
func TestBatchConnBatchesAndDeliversOnClose(t *testing.T) {
	server, client := tcpPair(t)
	cc := &countingConn{Conn: server}
	b := newBatchConn(cc, 5*time.Second)
	var want bytes.Buffer
	for i := range 200 {
		frame := bytes.Repeat([]byte{byte('a' + i%26)}, 100)
		want.Write(frame)
		if _, err := b.Write(frame); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(client)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("read %d bytes, want %d, in order", len(got), want.Len())
	}
	b.wait()
	if n := cc.writes.Load(); n == 0 || n >= 200 {
		t.Fatalf("%d writes for 200 frames", n)
	}
	if _, err := b.Write([]byte("late")); err == nil {
		t.Fatal("a write after Close succeeded")
	}
}

// A client that reads nothing is cut off after the write timeout: writes
// fail, and waiting for the drain ends.
func TestBatchConnCutsOffAClientThatDoesNotRead(t *testing.T) {
	server, _ := tcpPair(t)
	b := newBatchConn(server, 200*time.Millisecond)
	chunk := make([]byte, 32<<10)
	deadline := time.Now().Add(20 * time.Second)
	var err error
	for err == nil {
		if time.Now().After(deadline) {
			t.Fatal("writes to a client that reads nothing never failed")
		}
		_, err = b.Write(chunk)
	}
	if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("write failed with %v, want a timeout", err)
	}
	done := make(chan struct{})
	go func() { b.wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the drain did not end")
	}
	b.Close()
}

// Closing while a write to a client that reads nothing is in progress
// bounds it by closeGrace, releases the writers waiting for room, and the
// connection ends closed.
func TestBatchConnCloseBoundsAStuckWrite(t *testing.T) {
	server, client := tcpPair(t)
	b := newBatchConn(server, time.Hour)
	writer := make(chan error, 1)
	go func() {
		chunk := make([]byte, 32<<10)
		for {
			if _, err := b.Write(chunk); err != nil {
				writer <- err
				return
			}
		}
	}()
	// Stuck: the socket's buffers are full and a batch's worth waits.
	deadline := time.Now().Add(20 * time.Second)
	for !b.stuck() {
		select {
		case err := <-writer:
			t.Fatalf("a write failed before the drain got stuck: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the drain never got stuck")
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	b.Close()
	select {
	case <-writer:
	case <-time.After(10 * time.Second):
		t.Fatal("a writer waiting for room was not released by Close")
	}
	b.wait()
	if d := time.Since(start); d > closeGrace+5*time.Second {
		t.Fatalf("Close took %s to end the drain", d)
	}
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, client); err != nil {
		t.Fatalf("the connection was not closed: %v", err)
	}
}

// stuck reports whether a drain runs with a full batch waiting behind it.
func (b *batchConn) stuck() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.draining && len(b.pending) >= maxBatch
}
