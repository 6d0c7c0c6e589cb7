// Command edge is podedge's HTTP load balancer: it routes each request by
// its Host to a healthy app server of the tenant's pod, registers itself in
// Consul, drains gracefully on SIGTERM or SIGINT, reloads its
// configuration file on SIGHUP and upgrades its binary in place on SIGUSR2.
// See edge/README.md and docs/operating.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/podedge/podedge/edge"
	"github.com/podedge/podedge/internal/config"
	"github.com/podedge/podedge/internal/reload"
	"github.com/podedge/podedge/internal/sdnotify"
	"github.com/podedge/podedge/internal/upgrade"
	"github.com/podedge/podedge/internal/version"
)

const prog = "edge"

func main() {
	cfg, err := parse(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if errors.Is(err, config.ErrVersion) {
		fmt.Println(prog, version.String())
		os.Exit(0)
	}
	if err != nil {
		config.Exit(prog, err)
	}
	level := new(slog.LevelVar)
	log, err := cfg.Log.LeveledLogger(os.Stderr, level)
	if err != nil {
		config.Exit(prog, err)
	}
	opts := edge.Options{Logger: log, AccessLog: os.Stdout}
	certs, err := newCertificates(cfg, &opts)
	if err != nil {
		config.Exit(prog, err)
	}
	upg, err := upgrade.New(cfg.PIDFile, 0, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %s\n", prog, err)
		os.Exit(1)
	}
	defer upg.Stop()
	opts.Sockets = upg.Fds
	// A process started by an upgrade shares live sockets: it must not
	// accept before it can route.
	opts.ServeAfterSync = upg.HasParent()
	// Serving: systemd may count the service as started (or, after an
	// upgrade, follow this process as its main one).
	opts.OnServing = upg.Ready
	e, err := edge.New(cfg, opts)
	if err != nil {
		config.Exit(prog, err)
	}
	if err := e.Listen(); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %s\n", prog, err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	reloader := reload.New(cfg)
	reloader.Load = func() (edge.Config, error) { return parse(os.Args[1:]) }
	reloader.Live = edge.LiveKeys
	reloader.Apply = func(c edge.Config) {
		_ = c.Log.SetLevel(level)
		e.Reconfigure(c)
	}
	reloader.Metrics = reload.NewMetrics("edge", e.Registry())
	reloader.Log = log
	reloader.Notify = func(state string) { _ = sdnotify.Notify(state) }
	reloader.Start(ctx)
	go func() {
		<-ctx.Done()
		_ = sdnotify.Notify(sdnotify.Stopping)
	}()
	runCtx := upg.OnSIGUSR2(ctx, e.HandOver)
	stopCertificates, err := runCertificates(ctx, certs, e)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %s\n", prog, err)
		os.Exit(1)
	}
	err = e.Run(runCtx)
	stopCertificates()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %s\n", prog, err)
		os.Exit(1)
	}
}

// parse reads the flags and the configuration file; flags override the file
// only when given.
func parse(args []string) (edge.Config, error) {
	fs := flag.NewFlagSet(prog, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var (
		configFile = fs.String("config", "", "YAML configuration `file` (see configs/edge.yaml)")
		consul     = fs.String("consul", "", "Consul agent HTTP `address` (consul.address)")
		zone       = fs.String("zone", "", "DNS `zone` tenants live in (zone)")
		pod        = fs.String("pod", "", "`pod` this edge serves (pod)")
		httpAddr   = fs.String("http", "", "plain-HTTP listener `host:port` (http)")
		httpsAddr  = fs.String("https", "", "HTTPS listener `host:port`, used when TLS is enabled (https)")
		admin      = fs.String("admin", "", "admin listener `host:port` for /healthz, /metrics, /debug/ (admin)")
		publicIP   = fs.String("public-ip", "", "IPv4 `address` DNS hands out for this edge (public_ip)")
		acmeDir    = fs.String("acme-directory", "", "ACME directory `URL`, used when TLS is enabled (acme.directory)")
		acmeCA     = fs.String("acme-ca", "", "PEM `file` of roots to trust for the ACME server, used when TLS is enabled (acme.ca)")
		acmeEmail  = fs.String("acme-email", "", "contact `address` of the ACME account, used when TLS is enabled (acme.email)")
		_          = fs.Bool("version", false, "print the version and exit")
	)
	if err := config.ParseFlags(fs, args, "usage: edge [flags]"); err != nil {
		return edge.Config{}, err
	}
	cfg := edge.DefaultConfig()
	if *configFile != "" {
		if err := config.Load(*configFile, &cfg); err != nil {
			return edge.Config{}, err
		}
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) {
		given[f.Name] = true
		switch f.Name {
		case "consul":
			cfg.Consul.Address = *consul
		case "zone":
			cfg.Zone = *zone
		case "pod":
			cfg.Pod = *pod
		case "http":
			cfg.HTTP = *httpAddr
		case "https":
			cfg.HTTPS = *httpsAddr
		case "admin":
			cfg.Admin = *admin
		case "public-ip":
			cfg.PublicIP = *publicIP
		case "acme-directory":
			cfg.ACME.Directory = *acmeDir
		case "acme-ca":
			cfg.ACME.CA = *acmeCA
		case "acme-email":
			cfg.ACME.Email = *acmeEmail
		}
	})
	if err := cfg.Validate(); err != nil {
		return edge.Config{}, nameFlag(err, given)
	}
	if err := checkCertificates(cfg); err != nil {
		return edge.Config{}, nameFlag(err, given)
	}
	return cfg, nil
}

// flagKeys maps flags to the configuration keys they set.
var flagKeys = map[string]string{
	"consul": "consul.address", "zone": "zone", "pod": "pod", "http": "http", "https": "https",
	"admin": "admin", "public-ip": "public_ip", "acme-directory": "acme.directory", "acme-ca": "acme.ca",
	"acme-email": "acme.email",
}

// nameFlag makes an error about a key that a flag set name the flag, so that
// the operator knows which of the two to fix.
func nameFlag(err error, given map[string]bool) error {
	msg := err.Error()
	for f, key := range flagKeys {
		if given[f] && strings.HasPrefix(msg, key+":") {
			return fmt.Errorf("-%s:%s", f, strings.TrimPrefix(msg, key+":"))
		}
	}
	return err
}
