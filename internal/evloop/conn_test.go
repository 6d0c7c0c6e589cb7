//go:build linux

package evloop

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// greedy is a connection that reads a few bytes a turn and yields the loop
// while more wait; on its third turn it wakes its neighbour.
type greedy struct {
	Conn
	buf    []byte
	turns  int
	total  int
	poke   func()
	events chan string
}

func (g *greedy) Event(ev Events) {
	if !g.Pending() {
		return
	}
	g.buf = g.buf[:0]
	n, err := g.Read(&g.buf, 1024) // ReadInto grows by 4 KiB: its limit is what counts
	g.total += n
	g.turns++
	if g.turns == 3 {
		g.poke()
	}
	switch {
	case err == ErrBufferFull:
		g.events <- "greedy"
		g.Again()
	case g.EOF():
		g.events <- "greedy done"
	default:
		g.events <- "greedy drained"
	}
}

type neighbour struct {
	Conn
	events chan string
}

func (n *neighbour) Event(ev Events) {
	if n.Pending() {
		var buf []byte
		_, _ = n.Read(&buf, 64)
		n.events <- "neighbour"
	}
}

// A connection that stops reading with data left gets its turn again with
// no new arrival (the loop is edge-triggered: without Again it would wait
// forever), and the connections that became readable meanwhile are served
// between its turns, not after it has drained.
func TestAgainYieldsTheLoop(t *testing.T) {
	a := openPair(t)
	b := openPair(t)
	l, err := New()
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan string, 1024)
	g := &greedy{events: events, poke: func() { _, _ = unix.Write(b[1], []byte("x")) }}
	nb := &neighbour{events: events}
	if err := l.Open(&g.Conn, a[0], g, func() {}); err != nil {
		t.Fatal(err)
	}
	if err := l.Open(&nb.Conn, b[0], nb, func() {}); err != nil {
		t.Fatal(err)
	}
	const sent = 64 << 10
	if n, err := unix.Write(a[1], make([]byte, sent)); n != sent {
		t.Fatalf("wrote %d bytes of %d: %v", n, sent, err)
	}
	unix.Shutdown(a[1], unix.SHUT_WR)
	runLoop(t, l)

	var order []string
	deadline := time.After(10 * time.Second)
	for len(order) == 0 || order[len(order)-1] != "greedy done" {
		select {
		case e := <-events:
			order = append(order, e)
		case <-deadline:
			t.Fatalf("the greedy connection stalled after %d turns: %v", len(order), order)
		}
	}
	neighbourAt := -1
	for i, e := range order {
		if e == "neighbour" {
			neighbourAt = i
		}
	}
	if neighbourAt < 0 || neighbourAt > 4 {
		t.Fatalf("the neighbour was served at turn %d of %d: %v", neighbourAt, len(order), order)
	}
	if g.total != sent {
		t.Fatalf("read %d bytes of %d", g.total, sent)
	}
}

// Close takes a connection out of the loop and closes its descriptor once;
// its timer never fires after.
func TestConnCloseEndsTimerAndDescriptor(t *testing.T) {
	a := openPair(t)
	l, err := New()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fired := false
	var c Conn
	if err := l.Open(&c, a[0], HandlerFunc(func(Events) {}), func() { fired = true }); err != nil {
		t.Fatal(err)
	}
	c.Schedule(time.Millisecond)
	c.Close()
	c.Close()
	if !c.Closed() || l.Handler(a[0]) != nil {
		t.Fatal("a closed connection is still registered")
	}
	if _, err := unix.FcntlInt(uintptr(a[0]), unix.F_GETFD, 0); err != unix.EBADF {
		t.Fatalf("descriptor still open after Close: %v", err)
	}
	l.wheel.advance(l.now.Add(time.Second))
	if fired {
		t.Fatal("the timer of a closed connection fired")
	}
}

// A paused listener leaves the loop and comes back by itself, accepting
// what queued meanwhile; closed while paused, it never comes back.
func TestListenerPauseAndClose(t *testing.T) {
	accepted := make(chan struct{}, 4)
	var l *Loop
	l, lfd, err := NewListening(netip.MustParseAddrPort("127.0.0.1:0"), func() {
		for {
			fd, _, err := Accept(l.Listener().Fd())
			if err != nil {
				return
			}
			unix.Close(fd)
			accepted <- struct{}{}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	ap, err := LocalAddr(lfd)
	if err != nil {
		t.Fatal(err)
	}
	runLoop(t, l)
	paused := make(chan error, 1)
	l.Post(func() { paused <- l.Listener().Pause(50*time.Millisecond, nil) })
	if err := <-paused; err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", ap.String()) // completes in the backlog
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	select {
	case <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("the listener never came back from its pause")
	}

	closed := make(chan bool, 1)
	l.Post(func() {
		ln := l.Listener()
		_ = ln.Pause(20*time.Millisecond, nil)
		ln.Close()
		closed <- ln.Accepting()
	})
	if <-closed {
		t.Fatal("a closed listener says it accepts")
	}
	if _, err := net.DialTimeout("tcp", ap.String(), time.Second); err == nil {
		t.Fatal("a closed listener still takes connections")
	}
}

// HandlerFunc is a function as a Handler, for tests.
type HandlerFunc func(Events)

func (f HandlerFunc) Event(ev Events) { f(ev) }

// openPair is socketPair for descriptors a Conn takes: only the far end
// is closed when the test ends.
func openPair(t *testing.T) [2]int {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[1]) })
	return fds
}

// runLoop runs l until the test ends.
func runLoop(t *testing.T, l *Loop) {
	done := make(chan error, 1)
	go func() { done <- l.Run() }()
	t.Cleanup(func() {
		l.Close()
		<-done
	})
}
