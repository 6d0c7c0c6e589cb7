// Package evloop runs many non-blocking file descriptors on one goroutine,
// the way nginx and HAProxy run their connections: an edge-triggered epoll
// instance delivers readiness to each descriptor's handler, and a timer
// wheel delivers timeouts, all on the goroutine that calls Run. Nothing
// parks per request; handlers never block.
//
// The loop never blocks in a system call either: it harvests epoll without
// waiting and, when there is nothing, parks in Go's own poller until the
// epoll descriptor turns readable (or the next timer tick is due). So the
// Go scheduler never has to hand its processor to another thread because
// the loop sat in epoll_wait.
//
// Everything but Close must be called on the loop's goroutine (from a
// handler or a timer), or before Run.
package evloop

import (
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// entry is a registered descriptor: its handler, and its Conn when it has
// one (Open), which learns of each event before the handler.
type entry struct {
	h Handler
	c *Conn
}

// Loop is one event loop. Build it with New.
type Loop struct {
	ep       int
	file     *os.File // ep, as Go's poller sees it
	raw      syscall.RawConn
	handlers []entry // by descriptor
	events   []unix.EpollEvent
	listener *Listener
	wheel    wheel
	roundEnd func()
	now      time.Time
	closing  sync.Once
	closed   atomic.Bool

	// Connections that asked for a Readable event next round (Conn.Again),
	// and the list being delivered.
	again, againRunning []*Conn

	// Functions posted from other goroutines, and the eventfd that wakes
	// the loop to run them.
	wake    int
	mu      sync.Mutex // guards posted, started, ended and the eventfd's life
	posted  []func()
	running []func()
	started bool
	ended   bool
}

// New opens the epoll instance.
func New() (*Loop, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	// Non-blocking, the descriptor joins Go's poller, which then tells when
	// the instance has events to harvest.
	if err := unix.SetNonblock(ep, true); err != nil {
		unix.Close(ep)
		return nil, fmt.Errorf("epoll descriptor: %w", err)
	}
	file := os.NewFile(uintptr(ep), "epoll")
	raw, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("epoll descriptor: %w", err)
	}
	l := &Loop{ep: ep, file: file, raw: raw, events: make([]unix.EpollEvent, 256), now: time.Now(), wake: -1}
	l.wheel.init(l.now)
	if l.wake, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		file.Close()
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if err := l.add(l.wake, wakeup{l}, nil, unix.EPOLLIN|unix.EPOLLET); err != nil {
		unix.Close(l.wake)
		file.Close()
		return nil, err
	}
	return l, nil
}

// Post runs fn on the loop goroutine, soon; it may be called from any
// goroutine. Functions posted after Close never run.
func (l *Loop) Post(fn func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended {
		return
	}
	l.posted = append(l.posted, fn)
	if len(l.posted) == 1 {
		one := [8]byte{1}
		_, _ = unix.Write(l.wake, one[:]) // fails only when the counter is full: the loop is awake anyway
	}
}

// end closes the eventfd once nothing can use it: after Run, or at Close
// when Run never started.
func (l *Loop) end() {
	if !l.ended {
		l.ended = true
		unix.Close(l.wake)
	}
}

// wakeup is the eventfd's handler: it runs what was posted.
type wakeup struct{ l *Loop }

func (w wakeup) Event(Events) {
	l := w.l
	var buf [8]byte
	_, _ = unix.Read(l.wake, buf[:])
	l.mu.Lock()
	l.running, l.posted = l.posted, l.running[:0]
	l.mu.Unlock()
	for i, fn := range l.running {
		fn()
		l.running[i] = nil
	}
}

// Detach takes fd out of the loop without closing it, for an owner that
// hands the descriptor on (and may duplicate it) rather than closing it.
func (l *Loop) Detach(fd int) error {
	l.Remove(fd)
	if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, fd, nil); err != nil {
		return fmt.Errorf("epoll_ctl del %d: %w", fd, err)
	}
	return nil
}

// Add registers fd, edge-triggered for reads and writes: the kernel reports
// each new arrival of data and each time a full send buffer gets room, so
// one registration lasts the descriptor's life. A new registration reports
// the descriptor's current state once.
func (l *Loop) Add(fd int, h Handler) error {
	return l.add(fd, h, nil, unix.EPOLLIN|unix.EPOLLOUT|unix.EPOLLRDHUP|unix.EPOLLET)
}

// AddListener registers a listening socket, level-triggered for reads: an
// accept that stops early (too many open files) is reported again.
func (l *Loop) AddListener(fd int, h Handler) error { return l.add(fd, h, nil, unix.EPOLLIN) }

// NewListening opens a loop with a listening socket of its own on ap
// (Listen) whose connections it hands to accept, called on the loop when
// there are some to take.
func NewListening(ap netip.AddrPort, accept func()) (l *Loop, lfd int, err error) {
	if lfd, err = Listen(ap); err != nil {
		return nil, -1, err
	}
	if l, err = NewOnListener(lfd, accept); err != nil {
		return nil, -1, err
	}
	return l, lfd, nil
}

// NewOnListener is NewListening on a listening socket already open, such
// as one a previous process handed over in an upgrade; the loop's
// Listener owns lfd from here on, and closes it when this fails.
func NewOnListener(lfd int, accept func()) (l *Loop, err error) {
	if err := unix.SetNonblock(lfd, true); err != nil {
		unix.Close(lfd)
		return nil, err
	}
	if l, err = New(); err != nil {
		unix.Close(lfd)
		return nil, err
	}
	ln := &Listener{loop: l, fd: lfd, accept: Acceptor(accept)}
	ln.resume.fn = ln.comeBack
	if err := l.AddListener(lfd, ln.accept); err != nil {
		l.Close()
		unix.Close(lfd)
		return nil, err
	}
	l.listener = ln
	return l, nil
}

// Acceptor is a listening socket's handler: the function that accepts.
type Acceptor func()

func (a Acceptor) Event(ev Events) {
	if ev.Has(Readable) {
		a()
	}
}

func (l *Loop) add(fd int, h Handler, c *Conn, events uint32) error {
	if fd < 0 {
		return fmt.Errorf("evloop: descriptor %d", fd)
	}
	for len(l.handlers) <= fd {
		l.handlers = append(l.handlers, make([]entry, len(l.handlers)+64)...)
	}
	ev := unix.EpollEvent{Events: events, Fd: int32(fd)}
	if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl add %d: %w", fd, err)
	}
	l.handlers[fd] = entry{h: h, c: c}
	return nil
}

// Remove forgets fd's handler; call it before closing fd. The close takes fd
// out of the epoll instance, with no system call of its own, as long as no
// duplicate of the descriptor stays open (open them close-on-exec and do not
// dup them; a duplicate's events would reach no handler). Events already
// harvested for fd are dropped, unless the number is registered again in the
// same round: the new handler then sees a readiness it does not have, which
// costs it a read or write that says EAGAIN, nothing more.
func (l *Loop) Remove(fd int) {
	if fd >= 0 && fd < len(l.handlers) {
		l.handlers[fd] = entry{}
	}
}

// Handler returns fd's handler, nil when none.
func (l *Loop) Handler(fd int) Handler {
	if fd >= 0 && fd < len(l.handlers) {
		return l.handlers[fd].h
	}
	return nil
}

// Descriptors yields every registered descriptor, for an owner closing
// them after Run.
func (l *Loop) Descriptors() iter.Seq[int] {
	return func(yield func(int) bool) {
		for fd, e := range l.handlers {
			if _, internal := e.h.(wakeup); internal {
				continue
			}
			if e.h != nil && !yield(fd) {
				return
			}
		}
	}
}

// Now is the loop's clock, read once per round of events.
func (l *Loop) Now() time.Time { return l.now }

// Run delivers events and timers until Close, then returns nil.
func (l *Loop) Run() error {
	l.mu.Lock()
	l.started = true
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.end()
		l.mu.Unlock()
	}()
	n := 0
	harvest := func(uintptr) bool {
		var err error
		n, err = epollHarvest(l.ep, l.events)
		if err == unix.EINTR {
			n = 0
			return true // look again rather than wait for an edge already gone
		}
		return err == nil && n > 0
	}
	// Made once: a closure passed to Control escapes, and would cost an
	// allocation per round.
	found := false
	harvestNow := func(fd uintptr) { found = harvest(fd) }
	for {
		// Harvest first; wait only when there is nothing. A wait with
		// timers armed ends when the wheel next needs a look.
		found = false
		// Control keeps the descriptor from being closed under the call.
		if err := l.raw.Control(harvestNow); err != nil {
			return l.closedOr(err)
		}
		// Connections that yielded last round are served this one: no wait.
		if !found && len(l.again) == 0 {
			var deadline time.Time
			if l.wheel.pending > 0 {
				deadline = l.wheel.wakeAt()
			}
			if err := l.file.SetReadDeadline(deadline); err != nil {
				return l.closedOr(err)
			}
			n = 0
			if err := l.raw.Read(harvest); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				return l.closedOr(err)
			}
		}
		l.now = time.Now()
		for i := range l.events[:n] {
			fd := int(l.events[i].Fd)
			if fd >= len(l.handlers) || l.handlers[fd].h == nil {
				continue
			}
			e, ev := l.handlers[fd], eventsOf(l.events[i].Events)
			if e.c != nil {
				e.c.observe(ev)
			}
			e.h.Event(ev)
		}
		if len(l.again) > 0 {
			l.runAgain()
		}
		l.wheel.advance(l.now)
		if l.roundEnd != nil {
			l.roundEnd()
		}
	}
}

// AtRoundEnd sets fn to run after each round of events and timers, before
// the loop looks for more: a handler may leave its writes for fn, so that a
// round's writes go out together. Set it before Run.
func (l *Loop) AtRoundEnd(fn func()) { l.roundEnd = fn }

func eventsOf(ev uint32) Events {
	var e Events
	if ev&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
		e = Readable | Writable | PeerClosed
	}
	if ev&unix.EPOLLIN != 0 {
		e |= Readable
	}
	if ev&unix.EPOLLRDHUP != 0 {
		e |= Readable | PeerClosed
	}
	if ev&unix.EPOLLOUT != 0 {
		e |= Writable
	}
	return e
}

// closedOr turns the error of a wait on a closed loop into nil.
func (l *Loop) closedOr(err error) error {
	if l.closed.Load() {
		return nil
	}
	return fmt.Errorf("evloop: %w", err)
}

// Close ends Run (from any goroutine) and closes the epoll instance. The
// handlers' descriptors stay open: closing them is their owners' business.
func (l *Loop) Close() error {
	var err error
	l.closing.Do(func() {
		l.closed.Store(true)
		err = l.file.Close()
		// Run may still be delivering a round: the eventfd goes when it
		// returns, or here when it never started.
		l.mu.Lock()
		if !l.started {
			l.end()
		}
		l.mu.Unlock()
	})
	return err
}
