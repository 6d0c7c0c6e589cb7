// Package forwarder is a bare fasthttp reverse proxy: the ceiling any
// fasthttp-based proxy can reach on a machine, which the load tests measure
// next to the edge. It forwards every request, whatever its Host, round robin
// over fixed upstreams through one keep-alive connection pool per upstream.
// It has no health, no retries, no routing, no metrics and no logs: each of
// those is a cost the edge pays and this does not.
package forwarder

import (
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// Forwarder is the request handler. Build it with New.
type Forwarder struct {
	clients []*fasthttp.HostClient
	next    atomic.Uint32
}

// New returns a Forwarder over upstreams, each "host:port".
func New(upstreams []string) (*Forwarder, error) {
	if len(upstreams) == 0 {
		return nil, errors.New("no upstreams")
	}
	f := &Forwarder{}
	for _, u := range upstreams {
		if _, _, err := net.SplitHostPort(u); err != nil {
			return nil, fmt.Errorf("upstream %q is not host:port", u)
		}
		f.clients = append(f.clients, &fasthttp.HostClient{
			Addr:     u,
			MaxConns: 1024,
			// One attempt: a failure is the client's to see.
			MaxIdemponentCallAttempts: 1,
			ReadTimeout:               60 * time.Second,
			WriteTimeout:              60 * time.Second,
			MaxIdleConnDuration:       30 * time.Second,
			NoDefaultUserAgentHeader:  true,
			DisablePathNormalizing:    true,
		})
	}
	return f, nil
}

// Handle forwards ctx's request to the next upstream and copies its answer
// back, or answers 502 when the upstream cannot be reached.
func (f *Forwarder) Handle(ctx *fasthttp.RequestCtx) {
	c := f.clients[(f.next.Add(1)-1)%uint32(len(f.clients))]
	// Connection is hop-by-hop; both sides manage keep-alive themselves.
	ctx.Request.Header.Del("Connection")
	if err := c.Do(&ctx.Request, &ctx.Response); err != nil {
		ctx.Response.Reset()
		ctx.SetStatusCode(fasthttp.StatusBadGateway)
		ctx.SetBodyString("bad gateway\n")
		return
	}
	ctx.Response.Header.Del("Connection")
}

// Server returns a fasthttp server running f, with timeouts like the edge's
// defaults.
func (f *Forwarder) Server() *fasthttp.Server {
	return &fasthttp.Server{
		Handler:               f.Handle,
		NoDefaultServerHeader: true,
		ReadTimeout:           60 * time.Second,
		WriteTimeout:          60 * time.Second,
		IdleTimeout:           120 * time.Second,
		CloseOnShutdown:       true,
	}
}
