package harness

import (
	"sync"
	"time"

	"github.com/podedge/podedge/internal/child"
)

// spawn runs a child of the bench (a server under test, a backend, Consul
// or a client) logging to the run's folder. The log is appended to: a
// backend restarted under the same name keeps the log of its first life.
func (h *harness) spawn(spec child.Spec) (*child.Process, error) {
	spec.LogDir = h.dir
	spec.AppendLog = true
	return child.Start(spec)
}

// procSet is every process the harness started, for the final cleanup.
type procSet struct {
	mu    sync.Mutex
	procs []*child.Process
}

func (s *procSet) add(p *child.Process) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.procs = append(s.procs, p)
}

// stopAll stops every process still running, the most recent first (the
// servers before Consul), each with a grace period.
func (s *procSet) stopAll(grace time.Duration) {
	s.mu.Lock()
	procs := s.procs
	s.procs = nil
	s.mu.Unlock()
	var wg sync.WaitGroup
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		if p.Name() == "consul" {
			continue
		}
		wg.Go(func() { p.Stop(grace) })
	}
	wg.Wait()
	for _, p := range procs {
		if p.Name() == "consul" {
			p.Stop(grace)
		}
	}
}
