package evloop

import "time"

// Tick is the timer wheel's resolution: a timer fires within one tick after
// it is due. Connection timeouts are seconds long; 10 ms costs nothing to
// keep and is far below any of them.
const Tick = 10 * time.Millisecond

// wheelSlots is the number of slots: a timer due further than
// wheelSlots ticks ahead waits in its slot for the right turn.
const wheelSlots = 512

// Timer calls its function on the loop goroutine once it is due. NewTimer
// makes one; Schedule arms it, again and again, without allocating, and
// Cancel disarms it.
type Timer struct {
	fn         func()
	due        int64  // tick number
	prev, next *Timer // in a slot's list while armed, nil otherwise
}

// NewTimer returns a timer that calls fn.
func NewTimer(fn func()) *Timer { return &Timer{fn: fn} }

// Schedule arms t to fire d from the loop's clock (Now), replacing any
// earlier arming.
func (l *Loop) Schedule(t *Timer, d time.Duration) {
	l.wheel.remove(t)
	ticks := int64((d + Tick - 1) / Tick)
	if ticks < 1 {
		ticks = 1
	}
	// The due tick counts from the clock, not from the last tick processed,
	// which may lag it by up to a tick.
	t.due = l.wheel.tickOf(l.now) + ticks
	l.wheel.add(t)
}

// Cancel disarms t; a timer not armed is left alone.
func (l *Loop) Cancel(t *Timer) { l.wheel.remove(t) }

// wheel is a hashed timing wheel: slot i holds the timers due at ticks
// congruent to i modulo wheelSlots, in a circular list headed by a
// sentinel; a timer due several turns ahead waits in its slot.
type wheel struct {
	start   time.Time
	current int64 // the next tick to process
	slots   [wheelSlots]Timer
	due     Timer // the timers being fired
	pending int   // armed timers
}

func (w *wheel) init(now time.Time) {
	w.start = now
	for i := range w.slots {
		w.slots[i].prev, w.slots[i].next = &w.slots[i], &w.slots[i]
	}
	w.due.prev, w.due.next = &w.due, &w.due
}

func (w *wheel) tickOf(t time.Time) int64 { return int64(t.Sub(w.start) / Tick) }

// wakeAt is when the loop must look at the wheel again: the start of the
// first tick whose slot holds a timer (it may be due only turns later;
// waking for it costs one look).
func (w *wheel) wakeAt() time.Time {
	k := w.current
	for ; k < w.current+wheelSlots; k++ {
		head := &w.slots[k%wheelSlots]
		if head.next != head {
			break
		}
	}
	return w.start.Add(time.Duration(k) * Tick)
}

func (w *wheel) add(t *Timer) {
	if t.due < w.current {
		t.due = w.current
	}
	link(&w.slots[t.due%wheelSlots], t)
	w.pending++
}

func (w *wheel) remove(t *Timer) {
	if t.next == nil {
		return // not armed
	}
	unlink(t)
	w.pending--
}

// link puts t last in the list headed by head.
func link(head, t *Timer) {
	t.prev, t.next = head.prev, head
	head.prev.next = t
	head.prev = t
}

func unlink(t *Timer) {
	t.prev.next, t.next.prev = t.next, t.prev
	t.prev, t.next = nil, nil
}

// advance fires every timer due by now, tick by tick. The due timers of a
// tick move to a list of their own first, so that a function may cancel or
// re-arm any timer, including one about to fire, and a timer re-armed from
// its own function fires in a later tick.
func (w *wheel) advance(now time.Time) {
	last := w.tickOf(now)
	for ; w.current <= last; w.current++ {
		if w.pending == 0 {
			w.current = last + 1
			return
		}
		head := &w.slots[w.current%wheelSlots]
		for t := head.next; t != head; {
			next := t.next
			if t.due <= w.current {
				unlink(t)
				link(&w.due, t)
			}
			t = next
		}
		for w.due.next != &w.due {
			t := w.due.next
			w.remove(t)
			t.fn()
		}
	}
}
