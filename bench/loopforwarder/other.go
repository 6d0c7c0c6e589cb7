//go:build !linux

package loopforwarder

import (
	"context"
	"errors"
	"net"
)

// Forwarder needs epoll: elsewhere Listen fails.
type Forwarder struct{}

// Listen fails: the loops run on epoll, which only Linux has.
func Listen(addr string, upstreams []string, timeouts Timeouts) (*Forwarder, error) {
	return nil, errors.New("loopforwarder: only on Linux (epoll)")
}

func (f *Forwarder) Addr() net.Addr            { return nil }
func (f *Forwarder) Close()                    {}
func (f *Forwarder) Serve(ctx context.Context) {}
