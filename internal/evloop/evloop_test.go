//go:build linux

package evloop

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The wheel alone, on a clock the test moves.
func TestWheelFiresInOrderAndOnlyWhenDue(t *testing.T) {
	l := &Loop{now: time.Unix(1000, 0)}
	l.wheel.init(l.now)
	var fired []string
	timer := func(name string) *Timer { return NewTimer(func() { fired = append(fired, name) }) }
	a, b, c, far := timer("a"), timer("b"), timer("c"), timer("far")
	l.Schedule(c, 30*time.Millisecond)
	l.Schedule(a, 10*time.Millisecond)
	l.Schedule(b, 20*time.Millisecond)
	// Due past a whole turn of the wheel: it shares a slot with nearer
	// ticks and must wait for its own turn.
	l.Schedule(far, wheelSlots*Tick+10*time.Millisecond)

	step := func(d time.Duration) {
		l.now = l.now.Add(d)
		l.wheel.advance(l.now)
	}
	step(5 * time.Millisecond)
	if len(fired) != 0 {
		t.Fatalf("fired before due: %v", fired)
	}
	step(20 * time.Millisecond)
	if len(fired) != 2 || fired[0] != "a" || fired[1] != "b" {
		t.Fatalf("after 25 ms: %v, want [a b]", fired)
	}
	l.Cancel(c)
	step(wheelSlots * Tick / 2)
	if len(fired) != 2 {
		t.Fatalf("a cancelled timer fired: %v", fired)
	}
	step(wheelSlots * Tick / 2)
	if len(fired) != 3 || fired[2] != "far" {
		t.Fatalf("after a turn: %v, want the far timer last", fired)
	}
	if l.wheel.pending != 0 {
		t.Fatalf("%d timers still counted as armed", l.wheel.pending)
	}
}

func TestWheelRearmAndCancelFromATimer(t *testing.T) {
	l := &Loop{now: time.Unix(1000, 0)}
	l.wheel.init(l.now)
	count := 0
	var victim *Timer
	var tick *Timer
	tick = NewTimer(func() {
		count++
		l.Cancel(victim) // due in the same tick: it must not fire now
		if count < 3 {
			l.Schedule(tick, Tick)
		}
	})
	victimFired := false
	victim = NewTimer(func() { victimFired = true })
	l.Schedule(tick, Tick)
	l.Schedule(victim, Tick)
	for range 10 {
		l.now = l.now.Add(Tick)
		l.wheel.advance(l.now)
	}
	if count != 3 {
		t.Fatalf("a timer re-armed from its own function fired %d times, want 3", count)
	}
	if victimFired {
		t.Fatal("a timer cancelled by another one of the same tick fired")
	}
	// Schedule replaces an earlier arming rather than adding one.
	l.Schedule(victim, time.Hour)
	l.Schedule(victim, Tick)
	if l.wheel.pending != 1 {
		t.Fatalf("%d timers armed after re-scheduling one", l.wheel.pending)
	}
}

type recorder struct {
	fd     int
	got    chan string
	closed bool
}

func (r *recorder) Event(ev Events) {
	if !ev.Has(Readable) {
		return
	}
	var buf [64]byte
	n, err := unix.Read(r.fd, buf[:])
	if n > 0 {
		r.got <- string(buf[:n])
	}
	if n == 0 && err == nil && !r.closed {
		r.closed = true
		r.got <- "EOF"
	}
}

// A real loop over a socket pair: events, a timer, and Close ending Run.
func TestLoopDeliversEventsAndTimers(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	l, err := New()
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{fd: fds[0], got: make(chan string, 8)}
	if err := l.Add(fds[0], r); err != nil {
		t.Fatal(err)
	}
	timerFired := make(chan time.Duration, 1)
	var armed time.Time
	timer := NewTimer(func() { timerFired <- l.Now().Sub(armed) })
	armed = l.Now()
	l.Schedule(timer, 50*time.Millisecond)
	done := make(chan error, 1)
	go func() { done <- l.Run() }()

	if _, err := unix.Write(fds[1], []byte("hello")); err != nil {
		t.Fatal(err)
	}
	expect := func(want string) {
		t.Helper()
		select {
		case got := <-r.got:
			if got != want {
				t.Fatalf("read %q, want %q", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no event for %q", want)
		}
	}
	expect("hello")
	select {
	case d := <-timerFired:
		if d < 50*time.Millisecond {
			t.Fatalf("a 50 ms timer fired after %s", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the timer never fired on an idle loop")
	}
	unix.Shutdown(fds[1], unix.SHUT_WR)
	expect("EOF")

	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after Close")
	}
	// The owner closes what is still registered once Run is over.
	if got := slices.Collect(l.Descriptors()); !slices.Equal(got, []int{fds[0]}) {
		t.Fatalf("registered after Run: %v, want [%d]", got, fds[0])
	}
	l.Remove(fds[0])
	if got := slices.Collect(l.Descriptors()); len(got) != 0 {
		t.Fatalf("registered after Remove: %v", got)
	}
	unix.Close(fds[0])
}

// Post runs functions on the loop from other goroutines, in order; a
// detached descriptor gets no more events and stays open for its new owner.
func TestPostAndDetach(t *testing.T) {
	fds := socketPair(t)
	l, err := New()
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{fd: fds[0], got: make(chan string, 8)}
	if err := l.Add(fds[0], r); err != nil {
		t.Fatal(err)
	}
	runLoop(t, l)

	ran := make(chan int, 100)
	for i := range 100 {
		go l.Post(func() { ran <- i })
	}
	seen := map[int]bool{}
	for range 100 {
		select {
		case i := <-ran:
			seen[i] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of 100 posted functions ran", len(seen))
		}
	}

	detached := make(chan error, 1)
	l.Post(func() { detached <- l.Detach(fds[0]) })
	if err := <-detached; err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(fds[1], []byte("after")); err != nil {
		t.Fatal(err)
	}
	// The data waits in the descriptor, still open, for whoever took it.
	deadline := time.Now().Add(10 * time.Second)
	var buf [16]byte
	for {
		n, err := unix.Read(fds[0], buf[:])
		if n > 0 {
			if got := string(buf[:n]); got != "after" {
				t.Fatalf("read %q after Detach", got)
			}
			break
		}
		if err != unix.EAGAIN || time.Now().After(deadline) {
			t.Fatalf("reading a detached descriptor: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case got := <-r.got:
		t.Fatalf("the handler saw %q after Detach", got)
	default:
	}
	if got := slices.Collect(l.Descriptors()); len(got) != 0 {
		t.Fatalf("registered after Detach: %v", got)
	}
}

// TestRoundEndRunsAfterTheRoundsWork checks that the round-end function
// sees what the round's handlers left: a write left for it goes out then.
func TestRoundEndRunsAfterTheRoundsWork(t *testing.T) {
	l, err := New()
	if err != nil {
		t.Fatal(err)
	}
	var pending []int // touched by the loop's goroutine only
	flushed := make(chan []int, 16)
	l.AtRoundEnd(func() {
		if len(pending) > 0 {
			flushed <- pending
			pending = nil
		}
	})
	runLoop(t, l)
	for i := range 3 {
		l.Post(func() { pending = append(pending, i) })
	}
	var got []int
	deadline := time.After(10 * time.Second)
	for len(got) < 3 {
		select {
		case batch := <-flushed:
			got = append(got, batch...)
		case <-deadline:
			t.Fatalf("round ends flushed %v of 3 posted writes", got)
		}
	}
	if !slices.Equal(got, []int{0, 1, 2}) {
		t.Fatalf("flushed %v, want the posted order 0 1 2", got)
	}
}

// TestWriteThroughKeepsWhatTheSocketRefuses checks that what a full socket
// did not take stays in out, after what it took, and arrives in order.
func TestWriteThroughKeepsWhatTheSocketRefuses(t *testing.T) {
	fds := socketPair(t)
	head := []byte("head:")
	body := make([]byte, 4<<20)
	for i := range body {
		body[i] = byte(i % 251)
	}
	out := slices.Clone(head)
	if err := WriteThrough(fds[0], &out, body); err != nil {
		t.Fatal(err)
	}
	want := append(slices.Clone(head), body...)
	if len(out) == 0 || len(out) >= len(want) {
		t.Fatalf("%d of %d bytes kept; want the part a full socket refused", len(out), len(want))
	}
	var got []byte
	buf := make([]byte, 64<<10)
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < len(want) {
		n, err := unix.Read(fds[1], buf)
		if n > 0 {
			got = append(got, buf[:n]...)
		} else if err != unix.EAGAIN {
			t.Fatalf("read: %v", err)
		}
		if err := Flush(fds[0], &out); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d bytes arrived", len(got), len(want))
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the bytes arrived out of order or changed")
	}
}

// socketPair returns a connected pair of non-blocking stream sockets,
// closed when the test ends.
func socketPair(t *testing.T) [2]int {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Close(fds[0])
		unix.Close(fds[1])
	})
	return fds
}
