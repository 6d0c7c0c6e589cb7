// Command readers runs many routers in one process against Consul, as that
// many edges and dnsd servers would read it, and tells when each saw a
// change, for the bench's scale figures (bench/README.md):
//
//	readers -consul ADDR -prefix changes/ -n 50 -listen 127.0.0.1:0
//
// It serves on -listen:
//
//	GET  /ready        200 {"readers":N,"synced":N} once every router follows the change log, else 503
//	GET  /seen?name=T  {"readers":N,"times":[unix ns, 0 where not yet]}: when each router first published tenant T
//	POST /resync       {"ms":…,"tenants":…}: a new router reads the platform whole, the time until it serves it
//
// Only tenants whose name starts with -watch are recorded.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/consulkv"
	"github.com/podedge/podedge/router"
)

func main() {
	consul := flag.String("consul", "127.0.0.1:8500", "Consul agent `address`")
	prefix := flag.String("prefix", "podedge/", "KV `prefix`")
	zone := flag.String("zone", "example.test.", "DNS `zone`")
	n := flag.Int("n", 50, "`routers` to run")
	listen := flag.String("listen", "127.0.0.1:0", "`address` to serve on; the address taken is printed on standard output")
	watch := flag.String("watch", "su-", "record the tenants whose name starts with this `prefix`")
	flag.Parse()
	if err := run(*consul, *prefix, *zone, *n, *listen, *watch); err != nil {
		fmt.Fprintln(os.Stderr, "readers:", err)
		os.Exit(1)
	}
}

func run(consul, prefix, zone string, n int, listen, watch string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cfg := api.DefaultConfig()
	cfg.Address = consul
	client, err := api.NewClient(cfg)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s := &readers{client: client, cfg: cfg, prefix: prefix, zone: zone, log: log, watch: watch, seen: map[string][]int64{}}
	var wg sync.WaitGroup
	for i := range n {
		r, err := s.newRouter()
		if err != nil {
			return err
		}
		r.Subscribe(func(snap *router.Snapshot) { s.published(i, snap) })
		s.routers = append(s.routers, r)
		wg.Go(func() { _ = r.Run(ctx, client) })
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr().String())
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", s.ready)
	mux.HandleFunc("GET /seen", s.seenHandler)
	mux.HandleFunc("POST /resync", func(w http.ResponseWriter, r *http.Request) { s.resync(ctx, w) })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && ctx.Err() == nil {
		return err
	}
	wg.Wait()
	return nil
}

type readers struct {
	client       *api.Client
	cfg          *api.Config
	prefix, zone string
	log          *slog.Logger
	watch        string
	routers      []*router.Router

	mu   sync.Mutex
	seen map[string][]int64 // tenant → when each router first published it
}

func (s *readers) newRouter() (*router.Router, error) {
	kv, err := consulkv.New(s.cfg)
	if err != nil {
		return nil, err
	}
	c := router.Config{Zone: s.zone, Prefix: s.prefix, Logger: s.log}
	if kv != nil {
		c.KV = kv
	}
	return router.New(c)
}

// published records the watched tenants a snapshot of router i changed.
func (s *readers) published(i int, snap *router.Snapshot) {
	now := time.Now().UnixNano()
	changed, full := snap.TenantDelta()
	s.mu.Lock()
	defer s.mu.Unlock()
	mark := func(name string) {
		if !strings.HasPrefix(name, s.watch) || snap.Tenant(name) == nil {
			return
		}
		times := s.seen[name]
		if times == nil {
			times = make([]int64, len(s.routers))
			s.seen[name] = times
		}
		if i < len(times) && times[i] == 0 {
			times[i] = now
		}
	}
	if full {
		// A resync: every watched tenant seen by another router may be
		// new here.
		for name := range s.seen {
			mark(name)
		}
		return
	}
	for _, name := range changed {
		mark(name)
	}
}

func (s *readers) ready(w http.ResponseWriter, _ *http.Request) {
	synced := 0
	for _, r := range s.routers {
		if r.Snapshot().Synced && r.LogStatus().Following {
			synced++
		}
	}
	code := http.StatusOK
	if synced < len(s.routers) {
		code = http.StatusServiceUnavailable
	}
	reply(w, code, map[string]int{"readers": len(s.routers), "synced": synced})
}

func (s *readers) seenHandler(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("name")
	s.mu.Lock()
	times := append([]int64(nil), s.seen[name]...)
	s.mu.Unlock()
	if times == nil {
		times = make([]int64, len(s.routers))
	}
	reply(w, http.StatusOK, map[string]any{"readers": len(s.routers), "times": times})
}

// resync times a new router from its start to serving every tenant: one
// full read of the platform, as a reader that fell too far behind does.
func (s *readers) resync(ctx context.Context, w http.ResponseWriter) {
	r, err := s.newRouter()
	if err != nil {
		reply(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	start := time.Now()
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(rctx, s.client) }()
	for r.Snapshot().NumTenants() == 0 || !r.LogStatus().Following {
		select {
		case <-rctx.Done():
			reply(w, http.StatusGatewayTimeout, map[string]string{"error": "no full read within 5 minutes"})
			return
		case <-time.After(time.Millisecond):
		}
	}
	took := time.Since(start)
	tenants := r.Snapshot().NumTenants()
	cancel()
	<-done
	reply(w, http.StatusOK, map[string]any{"ms": float64(took) / float64(time.Millisecond), "tenants": tenants})
}

func reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
