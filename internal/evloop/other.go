//go:build !linux

package evloop

import (
	"errors"
	"iter"
	"net/netip"
	"time"
)

// Loop needs epoll: elsewhere New fails.
type Loop struct {
	wheel wheel
	now   time.Time
}

// New fails: the loop runs on epoll, which only Linux has.
func New() (*Loop, error) { return nil, errors.New("evloop: only on Linux (epoll)") }

// NewListening fails as New does.
func NewListening(ap netip.AddrPort, accept func()) (*Loop, int, error) {
	return nil, -1, errors.New("evloop: only on Linux (epoll)")
}

func (l *Loop) Add(fd int, h Handler) error         { return errors.ErrUnsupported }
func (l *Loop) AddListener(fd int, h Handler) error { return errors.ErrUnsupported }
func (l *Loop) Remove(fd int)                       {}
func (l *Loop) Descriptors() iter.Seq[int]          { return func(func(int) bool) {} }
func (l *Loop) Now() time.Time                      { return l.now }
func (l *Loop) Run() error                          { return errors.ErrUnsupported }
func (l *Loop) AtRoundEnd(fn func())                {}
func (l *Loop) Close() error                        { return nil }

func (l *Loop) Handler(fd int) Handler { return nil }
func (l *Loop) Post(fn func())         {}
func (l *Loop) Detach(fd int) error    { return errors.ErrUnsupported }
