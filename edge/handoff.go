package edge

import (
	"net"
	"sync"
)

// handoffListener is a net.Listener whose connections are those the event
// loops hand over, so that the fasthttp server serves them as it serves its
// own listeners, and its Shutdown waits for them too.
type handoffListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newHandoffListener(addr net.Addr) *handoffListener {
	return &handoffListener{addr: addr, conns: make(chan net.Conn, 256), done: make(chan struct{})}
}

// push queues c for Accept without blocking the loop that calls it.
func (h *handoffListener) push(c net.Conn) {
	select {
	case h.conns <- c:
	default:
		go h.pushWait(c)
	}
}

func (h *handoffListener) pushWait(c net.Conn) {
	select {
	case h.conns <- c:
	case <-h.done:
		c.Close()
	}
}

func (h *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-h.conns:
		return c, nil
	case <-h.done:
		return nil, net.ErrClosed
	}
}

// Close ends Accept and closes the connections still queued.
func (h *handoffListener) Close() error {
	h.once.Do(func() {
		close(h.done)
		for {
			select {
			case c := <-h.conns:
				c.Close()
			default:
				return
			}
		}
	})
	return nil
}

func (h *handoffListener) Addr() net.Addr { return h.addr }
