// Command loadgen is the bench's HTTP/1.1 load generator (see
// bench/loadgen):
//
//	loadgen -addrs 127.0.0.1:8080 -host acme.example.test -path /bytes/64 -conns 64 -duration 10s [-new-conn] [-rate N]
//
// It prints "started" on standard error once every connection runs, then
// the result as one JSON object on standard output.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/podedge/podedge/bench/loadgen"
	"github.com/podedge/podedge/internal/config"
	"github.com/podedge/podedge/internal/version"
)

func main() {
	const prog = "loadgen"
	fs := flag.NewFlagSet(prog, flag.ContinueOnError)
	addrs := fs.String("addrs", "", "comma-separated `host:port` list; connections are spread over it")
	host := fs.String("host", "", "Host header (default: the address)")
	path := fs.String("path", "/", "request `path`")
	conns := fs.Int("conns", 64, "connections (with -new-conn: requests in flight)")
	duration := fs.Duration("duration", 10*time.Second, "how long to send requests")
	newConn := fs.Bool("new-conn", false, "open a new connection for every request")
	timeout := fs.Duration("timeout", 5*time.Second, "bound on each request")
	rate := fs.Float64("rate", 0, "requests per `second` across connections, paced; 0: as fast as answered")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if *showVersion {
		fmt.Println(prog, version.String())
		return
	}
	switch {
	case *addrs == "":
		config.Exit(prog, fmt.Errorf("-addrs: required"))
	case *conns <= 0:
		config.Exit(prog, fmt.Errorf("-conns: must be positive, got %d", *conns))
	case *duration <= 0:
		config.Exit(prog, fmt.Errorf("-duration: must be positive, got %s", *duration))
	case *rate < 0:
		config.Exit(prog, fmt.Errorf("-rate: must not be negative, got %v", *rate))
	case *timeout <= 0:
		config.Exit(prog, fmt.Errorf("-timeout: must be positive, got %s", *timeout))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res, err := loadgen.Run(ctx, loadgen.Config{
		Addrs: strings.Split(*addrs, ","), Host: *host, Path: *path, Conns: *conns,
		Duration: *duration, NewConnPerRequest: *newConn, Timeout: *timeout, Rate: *rate,
		Started: func() { fmt.Fprintln(os.Stderr, "started") },
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %s\n", prog, err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		os.Exit(1)
	}
}
