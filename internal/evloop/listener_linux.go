package evloop

import (
	"time"

	"golang.org/x/sys/unix"
)

// Listener is the listening socket a loop accepts on (NewOnListener). It
// can leave the loop for a while (Pause), as nginx does when accept(2)
// fails for want of descriptors, and closes once, whether in the loop or
// out of it.
type Listener struct {
	loop   *Loop
	fd     int
	accept Acceptor
	resume Timer
	// onFail hears why the listener could not come back after a pause.
	onFail func(error)
	paused bool
	closed bool
}

// Listener is the loop's listening socket, nil for a loop built by New.
func (l *Loop) Listener() *Listener { return l.listener }

// Fd is the listening socket.
func (ln *Listener) Fd() int { return ln.fd }

// Accepting reports whether the listener is open and in the loop.
func (ln *Listener) Accepting() bool { return !ln.closed && !ln.paused }

// Pause takes the listener out of the loop for d; it then comes back and
// accepts what waits. When it cannot come back it closes and onFail hears
// why. A listener that cannot even leave the loop closes at once.
func (ln *Listener) Pause(d time.Duration, onFail func(error)) error {
	if ln.closed || ln.paused {
		return nil
	}
	if err := ln.loop.Detach(ln.fd); err != nil {
		ln.Close()
		return err
	}
	ln.paused, ln.onFail = true, onFail
	ln.loop.Schedule(&ln.resume, d)
	return nil
}

func (ln *Listener) comeBack() {
	ln.paused = false
	if ln.closed {
		return
	}
	if err := ln.loop.AddListener(ln.fd, ln.accept); err != nil {
		ln.Close()
		if ln.onFail != nil {
			ln.onFail(err)
		}
		return
	}
	ln.accept()
}

// Close closes the listening socket, taking it out of the loop first when
// it is there. Later calls do nothing.
func (ln *Listener) Close() {
	if ln.closed {
		return
	}
	ln.closed = true
	ln.loop.Cancel(&ln.resume)
	if !ln.paused {
		ln.loop.Remove(ln.fd)
	}
	unix.Close(ln.fd)
}

// CloseAll closes every descriptor the loop still watches, its listener's
// and its connections' (timers cancelled), once Run has returned.
func (l *Loop) CloseAll() {
	if l.listener != nil {
		l.listener.Close()
	}
	for fd, e := range l.handlers {
		switch {
		case e.h == nil:
		case e.c != nil:
			e.c.Close()
		default:
			if _, internal := e.h.(wakeup); !internal {
				l.Remove(fd)
				unix.Close(fd)
			}
		}
	}
}
