package leader

import (
	"context"
	"net"
	"net/http"
	"time"
)

// Upgrade is how a replica takes part in in-place upgrades (SIGUSR2): the
// process that replaces it inherits its listener, so both advertise the
// same address. The lock stays with the old process until it exits: it
// finishes its requests while leading, then gives the lock up, and the new
// process, a standby meanwhile, takes it (or another replica does). A
// write that reaches the new process in between waits for that, within
// write_timeout, instead of being refused: forwarded to its own address
// it would reach itself.
type Upgrade struct {
	// Successor: this process replaces another. It serves only once its
	// view matches Consul, and a write it gets before the lock has
	// changed hands waits for it.
	Successor bool
	// OnServing, if set, is called once the API is served.
	OnServing func()
}

// SetUpgrade sets how the replica takes part in upgrades; before Serve.
func (s *Server) SetUpgrade(u Upgrade) { s.upgrade = u }

// HandOver makes the coming stop (Serve's ctx ending) an in-place
// upgrade's: another process serves the same listener under the same
// service. The replica stops accepting, finishes what is in flight (a
// connection accepted moments ago gets handOverGrace for its request),
// gives the lock up, and leaves the service registered.
func (s *Server) HandOver() { s.handover.Store(true) }

// handOverGrace is how long a hand-over waits for the first request of a
// connection accepted just before it.
const handOverGrace = time.Second

// handOff stops accepting on ln, which the upgraded process accepts on
// too, without shutting srv down yet: net/http drops, unanswered, a
// request it reads once Shutdown has begun, and the requests of
// connections accepted moments ago may still be on their way. Answers say
// Connection: close from now on; the fresh connections get handOverGrace
// to send their request. Shutdown then finishes the rest.
func (s *Server) handOff(srv *http.Server, ln net.Listener, fresh *freshConns, serving bool, served <-chan error) {
	srv.SetKeepAlivesEnabled(false)
	ln.Close()
	if serving {
		<-served // Serve returned: the listener is closed
	}
	fresh.wait(handOverGrace)
}

// serveAfterSync waits, in a successor, for the first view of Consul, then
// calls OnServing. It reports false when ctx ended first.
func (s *Server) serveAfterSync(ctx context.Context) bool {
	if s.upgrade.Successor {
		select {
		case <-s.router.Ready():
		case <-ctx.Done():
			return false
		}
	}
	if s.upgrade.OnServing != nil {
		s.upgrade.OnServing()
	}
	return true
}

// leadership is who leads for a write: at once, except in a successor
// that has not seen its predecessor give the lock up, where a state
// naming no leader or its own address (the predecessor's) is waited out
// until ctx ends.
func (s *Server) leadership(ctx context.Context) LeaderState {
	for {
		s.changesMu.Lock()
		changed := s.changes
		s.changesMu.Unlock()
		st := s.elector.State()
		if st.IsLeader || !s.awaiting.Load() || st.Leader != "" && st.Leader != s.advertise {
			return st
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return st
		}
	}
}
