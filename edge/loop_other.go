//go:build !linux

package edge

import (
	"context"
	"errors"
	"log/slog"
	"net"

	"github.com/valyala/fasthttp"
)

// defaultEngine is the plain-HTTP data path where the loops cannot run.
const defaultEngine = EngineFasthttp

// loopServer needs epoll: elsewhere listenLoops fails.
type loopServer struct{}

func listenLoops(string, *Proxy, func(*fasthttp.RequestCtx) bool, *slog.Logger, Sockets) (*loopServer, error) {
	return nil, errors.New("engine loop needs Linux (epoll); use engine fasthttp")
}

func (s *loopServer) Addr() net.Addr                     { return nil }
func (s *loopServer) Handoff() net.Listener              { return nil }
func (s *loopServer) run()                               {}
func (s *loopServer) close()                             {}
func (s *loopServer) shutdown(ctx context.Context) error { return nil }
