// Package backend is a small, fast HTTP app server: the demo app of
// `make run` (its page says which app server and pod answered) and the
// upstream of the load tests (a fixed-size body, as fast as fasthttp goes).
package backend

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/valyala/fasthttp"
)

// Config configures a Server.
type Config struct {
	// Name identifies the app server on its page and in Consul (service ID).
	Name string
	// Pod is the pod the server belongs to (Meta.pod).
	Pod string
	// Size, when positive, makes every answer a body of exactly Size bytes
	// instead of the page, for load tests.
	Size int
	// Logger receives the server's logs; nil means slog.Default().
	Logger *slog.Logger
}

// MaxBytes is the largest body /bytes/N answers.
const MaxBytes = 1 << 20

// Server answers every path: /healthz with "ok", /bytes/N with a body of N
// bytes (N at most MaxBytes; the load tests pick response sizes this way),
// anything else with the page or the fixed-size body. It echoes the request
// ID the edge set.
type Server struct {
	cfg  Config
	body []byte
	// bytes backs /bytes/N: its first N bytes are the body.
	bytes []byte
	srv   *fasthttp.Server
}

// New builds a server; Serve starts it.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, bytes: bytes.Repeat([]byte("x"), MaxBytes)}
	if cfg.Size > 0 {
		s.body = bytes.Repeat([]byte("x"), cfg.Size)
	}
	s.srv = &fasthttp.Server{
		Handler:            s.handle,
		Name:               "podedge-backend",
		ReadTimeout:        30 * time.Second,
		IdleTimeout:        90 * time.Second,
		StreamRequestBody:  true,
		MaxRequestBodySize: 64 << 20,
	}
	return s
}

func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	if string(ctx.Path()) == "/healthz" {
		ctx.SetBodyString("ok\n")
		return
	}
	// Drain an uploaded body so that keep-alive works, and report its size.
	var n int64
	if stream := ctx.RequestBodyStream(); stream != nil {
		var buf [32 << 10]byte
		for {
			m, err := stream.Read(buf[:])
			n += int64(m)
			if err != nil {
				break
			}
		}
	} else {
		n = int64(len(ctx.Request.Body()))
	}
	if id := ctx.Request.Header.Peek("X-Request-Id"); len(id) > 0 {
		ctx.Response.Header.SetBytesV("X-Request-Id", id)
	}
	ctx.Response.Header.Set("X-App-Server", s.cfg.Name)
	if n, ok := sizeOf(ctx.Path()); ok {
		ctx.SetContentType("application/octet-stream")
		ctx.SetBody(s.bytes[:n])
		return
	}
	if s.body != nil {
		ctx.SetContentType("application/octet-stream")
		ctx.SetBody(s.body)
		return
	}
	ctx.SetContentType("text/plain; charset=utf-8")
	fmt.Fprintf(ctx, "Hello from app server %s in pod %s.\nhost=%s path=%s method=%s received=%d bytes\n",
		s.cfg.Name, s.cfg.Pod, ctx.Host(), ctx.Path(), ctx.Method(), n)
}

// sizeOf parses a path of the form /bytes/N, N in [0, MaxBytes], without
// allocating.
func sizeOf(path []byte) (int, bool) {
	const prefix = "/bytes/"
	if len(path) <= len(prefix) || len(path) > len(prefix)+7 || string(path[:len(prefix)]) != prefix {
		return 0, false
	}
	n := 0
	for _, c := range path[len(prefix):] {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, n <= MaxBytes
}

// Serve answers on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error { return s.srv.Serve(ln) }

// Shutdown stops accepting and waits for open requests to finish.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.ShutdownWithContext(ctx) }

// Register registers the server in Consul as an instance of service (the
// platform's "app") reachable at addr, with Meta.pod and an HTTP check on
// /healthz every second. A server that dies without deregistering turns
// critical within about a second and is removed after a minute.
func (s *Server) Register(client *api.Client, service string, addr *net.TCPAddr) error {
	reg := &api.AgentServiceRegistration{
		ID:      s.cfg.Name,
		Name:    service,
		Address: addr.IP.String(),
		Port:    addr.Port,
		Meta:    map[string]string{"pod": s.cfg.Pod},
		Check: &api.AgentServiceCheck{
			CheckID:                        "app-health-" + s.cfg.Name,
			Name:                           "HTTP /healthz",
			HTTP:                           "http://" + net.JoinHostPort(addr.IP.String(), strconv.Itoa(addr.Port)) + "/healthz",
			Interval:                       "1s",
			Timeout:                        "1s",
			DeregisterCriticalServiceAfter: "1m",
		},
	}
	if err := client.Agent().ServiceRegister(reg); err != nil {
		return fmt.Errorf("register %s in consul: %w", s.cfg.Name, err)
	}
	return nil
}

// Deregister removes the registration made by Register.
func (s *Server) Deregister(client *api.Client) error {
	if err := client.Agent().ServiceDeregister(s.cfg.Name); err != nil {
		return fmt.Errorf("deregister %s from consul: %w", s.cfg.Name, err)
	}
	return nil
}
