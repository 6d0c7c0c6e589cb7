// Command loopforwarder is the bench's forwarder on event loops:
//
//	loopforwarder -listen 127.0.0.1:8089 -upstreams 127.0.0.1:9101,127.0.0.1:9102
//
// See bench/loopforwarder. SIGINT/SIGTERM stop it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/podedge/podedge/bench/loopforwarder"
	"github.com/podedge/podedge/internal/config"
	"github.com/podedge/podedge/internal/version"
)

func main() {
	const prog = "loopforwarder"
	fs := flag.NewFlagSet(prog, flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8089", "`ip:port` to serve HTTP on")
	upstreams := fs.String("upstreams", "", "comma-separated `ip:port` list to forward to")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if *showVersion {
		fmt.Println(prog, version.String())
		return
	}
	if *upstreams == "" {
		config.Exit(prog, fmt.Errorf("-upstreams: none given"))
	}
	f, err := loopforwarder.Listen(*listen, strings.Split(*upstreams, ","), loopforwarder.DefaultTimeouts)
	if err != nil {
		config.Exit(prog, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	f.Serve(ctx)
}
