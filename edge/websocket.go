package edge

import (
	"bufio"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/podedge/podedge/router"
	"github.com/valyala/fasthttp"
)

// tunnelConn is an endpoint connection that answered 101 Switching
// Protocols: it left its pool and belongs to the tunnel.
type tunnelConn struct {
	conn net.Conn
	// br holds what the endpoint sent after its response head.
	br *bufio.Reader
	// release closes conn and returns br to its pool.
	release func()
}

// tunnel proxies a request that asks to switch protocols (WebSocket, RFC
// 6455 section 4). fasthttp's client cannot keep a connection after a 101,
// so the edge sends the request itself, on a connection of the endpoint's
// pool, with the same retries as any request: a dead endpoint gets a normal
// 502 or a retry elsewhere, never a hijacked client left hanging. Once the
// endpoint agrees, fasthttp writes its 101 to the client and hands over the
// client connection (Hijack), and the bytes flow both ways until either side
// closes or the tunnel idles for Timeouts.WebSocketIdle.
//
// An endpoint that answers anything but 101 has its answer passed on as is.
func (p *Proxy) tunnel(ctx *fasthttp.RequestCtx, x *exchange, pool *router.Pool) error {
	if err := p.forward(ctx, x, pool); err != nil {
		return err
	}
	if x.tunnel.conn == nil {
		return nil
	}
	t := x.tunnel
	ctx.Hijack(func(client net.Conn) { p.pipe(client, t) })
	return nil
}

// pipe copies both ways between the client and the endpoint until one side
// ends, then closes both.
func (p *Proxy) pipe(client net.Conn, t tunnelConn) {
	p.metrics.tunnels.Inc()
	defer p.metrics.tunnels.Dec()
	e := p.tunnels.add(client, t.conn)
	defer p.tunnels.remove(e)
	defer t.release()

	idle := p.cur().Timeouts.WebSocketIdle
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	var wg sync.WaitGroup
	wg.Go(func() {
		copyIdle(t.conn, client, client, idle, &last)
		closeBoth(client, t.conn)
	})
	copyIdle(client, t.br, t.conn, idle, &last)
	closeBoth(client, t.conn)
	wg.Wait()
}

func closeBoth(a, b net.Conn) {
	_ = a.Close()
	_ = b.Close()
}

// copyIdle copies src to dst until src ends or nothing has moved either way
// for idle. rc is the connection src reads from, whose deadline bounds each
// read; last is shared by both directions, so that a tunnel busy one way
// only is not idle.
func copyIdle(dst io.Writer, src io.Reader, rc net.Conn, idle time.Duration, last *atomic.Int64) {
	buf := make([]byte, 32<<10)
	for {
		_ = rc.SetReadDeadline(time.Now().Add(idle))
		n, err := src.Read(buf)
		if n > 0 {
			last.Store(time.Now().UnixNano())
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if isTimeout(err) && time.Since(time.Unix(0, last.Load())) < idle {
				continue
			}
			return
		}
	}
}

// tunnelSet tracks open tunnels so that shutdown can close them: a
// hijacked connection is no longer the server's to wait for.
type tunnelSet struct {
	mu    sync.Mutex
	open  map[*tunnelEntry]struct{}
	count atomic.Int64
}

type tunnelEntry struct{ client, upstream net.Conn }

func (s *tunnelSet) add(client, upstream net.Conn) *tunnelEntry {
	e := &tunnelEntry{client, upstream}
	s.mu.Lock()
	if s.open == nil {
		s.open = map[*tunnelEntry]struct{}{}
	}
	s.open[e] = struct{}{}
	s.mu.Unlock()
	s.count.Add(1)
	return e
}

func (s *tunnelSet) remove(e *tunnelEntry) {
	s.mu.Lock()
	delete(s.open, e)
	s.mu.Unlock()
	s.count.Add(-1)
}

// closeAll closes every open tunnel and reports how many there were.
func (s *tunnelSet) closeAll() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for e := range s.open {
		closeBoth(e.client, e.upstream)
	}
	return len(s.open)
}

// CloseTunnels closes every WebSocket tunnel (at shutdown) and reports how
// many were open.
func (p *Proxy) CloseTunnels() int { return p.tunnels.closeAll() }

// Tunnels is the number of open tunnels.
func (p *Proxy) Tunnels() int { return int(p.tunnels.count.Load()) }
