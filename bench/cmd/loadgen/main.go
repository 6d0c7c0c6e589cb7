// Command loadgen is the bench's HTTP/1.1 load generator (see
// bench/loadgen):
//
//	loadgen -addrs 127.0.0.1:8080 -host acme.example.test -path /bytes/64 -conns 64 -duration 10s [-new-conn] [-rate N] [-tls]
//
// With -tls it speaks HTTPS: TLS 1.3, the Host as SNI, ALPN http/1.1, X25519
// as the key exchange, no session resumption (with -new-conn every request
// costs a full handshake), and the server's certificate not verified (the
// bench checks it before it measures).
//
// It prints "started" on standard error once every connection runs, then
// the result as one JSON object on standard output.
package main

import (
	"context"
	"crypto/tls"
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
	useTLS := fs.Bool("tls", false, "HTTPS: TLS 1.3 with the Host as SNI, a full handshake per connection")
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
	var tlsConfig *tls.Config
	if *useTLS {
		tlsConfig = &tls.Config{
			ServerName: *host,
			MinVersion: tls.VersionTLS13,
			NextProtos: []string{"http/1.1"},
			// What every peer of the bench offers too; Go's default would
			// add X25519MLKEM768, which OpenSSL 3.0 does not know.
			CurvePreferences: []tls.CurveID{tls.X25519},
			// The bench has verified the certificate before measuring;
			// the handshake's signature is checked all the same.
			InsecureSkipVerify: true,
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res, err := loadgen.Run(ctx, loadgen.Config{
		Addrs: strings.Split(*addrs, ","), Host: *host, Path: *path, Conns: *conns,
		Duration: *duration, NewConnPerRequest: *newConn, Timeout: *timeout, Rate: *rate, TLS: tlsConfig,
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
