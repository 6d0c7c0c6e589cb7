// Command forwarder is the bare fasthttp reverse proxy of the load tests:
//
//	forwarder -listen 127.0.0.1:8088 -upstreams 127.0.0.1:9101,127.0.0.1:9102
//
// See bench/forwarder. SIGINT/SIGTERM stop it gracefully.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/podedge/podedge/bench/forwarder"
	"github.com/podedge/podedge/internal/config"
	"github.com/podedge/podedge/internal/version"
)

func main() {
	const prog = "forwarder"
	fs := flag.NewFlagSet(prog, flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8088", "`address` to serve HTTP on")
	upstreams := fs.String("upstreams", "", "comma-separated `host:port` list to forward to")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if *showVersion {
		fmt.Println(prog, version.String())
		return
	}
	f, err := forwarder.New(strings.Split(*upstreams, ","))
	if err != nil {
		config.Exit(prog, fmt.Errorf("-upstreams: %w", err))
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		config.Exit(prog, fmt.Errorf("-listen: %w", err))
	}
	srv := f.Server()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	select {
	case err := <-errc:
		fmt.Fprintf(os.Stderr, "%s: %s\n", prog, err)
		os.Exit(1)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.ShutdownWithContext(sctx)
}
