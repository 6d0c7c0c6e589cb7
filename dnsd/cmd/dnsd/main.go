// Command dnsd is podedge's authoritative DNS server: it answers for the
// pods and tenants of the platform from Consul, reloads its configuration
// file on SIGHUP and upgrades its binary in place on SIGUSR2. See
// dnsd/README.md and docs/operating.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/podedge/podedge/dnsd"
	"github.com/podedge/podedge/internal/config"
	"github.com/podedge/podedge/internal/reload"
	"github.com/podedge/podedge/internal/sdnotify"
	"github.com/podedge/podedge/internal/upgrade"
	"github.com/podedge/podedge/internal/version"
)

const prog = "dnsd"

func main() {
	cfg, err := parse(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if errors.Is(err, config.ErrVersion) {
		fmt.Println(prog, version.String())
		return
	}
	if err != nil {
		config.Exit(prog, err)
	}
	level := new(slog.LevelVar)
	log, err := cfg.Log.LeveledLogger(os.Stderr, level)
	if err != nil {
		config.Exit(prog, err)
	}
	client, err := cfg.Consul.Client()
	if err != nil {
		config.Exit(prog, err)
	}
	srv, err := dnsd.New(cfg, log)
	if err != nil {
		config.Exit(prog, err)
	}
	upg, err := upgrade.New(cfg.PIDFile, 0, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %s\n", prog, err)
		os.Exit(1)
	}
	defer upg.Stop()
	srv.SetUpgrade(dnsd.Upgrade{
		Sockets: upg.Fds,
		// A process started by an upgrade shares live sockets: it must
		// not read a query before it can answer it.
		ServeAfterSync: upg.HasParent(),
		// Serving: systemd may count the service as started (or, after
		// an upgrade, follow this process as its main one).
		OnServing: upg.Ready,
	})
	if err := srv.Listen(); err != nil {
		log.Error("cannot listen", "error", err.Error())
		os.Exit(1)
	}
	log.Info("dnsd starting", "version", version.String())

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	reloader := reload.New(cfg)
	reloader.Load = func() (dnsd.Config, error) { return parse(os.Args[1:]) }
	reloader.Live = dnsd.LiveKeys
	reloader.Apply = func(c dnsd.Config) {
		_ = c.Log.SetLevel(level)
		if err := srv.Reconfigure(c); err != nil {
			log.Error("reload", "error", err.Error()) // validated: cannot happen
		}
	}
	reloader.Metrics = reload.NewMetrics("dnsd", srv.Registry())
	reloader.Log = log
	reloader.Notify = func(state string) { _ = sdnotify.Notify(state) }
	reloader.Start(ctx)
	go func() {
		<-ctx.Done()
		_ = sdnotify.Notify(sdnotify.Stopping)
	}()
	if err := srv.Run(upg.OnSIGUSR2(ctx, srv.HandOver), client); err != nil {
		log.Error("dnsd failed", "error", err.Error())
		os.Exit(1)
	}
	log.Info("dnsd stopped")
}

// parse reads the flags and the configuration file; flags override the
// file only when given. Parse errors are one line (config.Exit), not the
// usage text; -h prints the usage.
func parse(args []string) (dnsd.Config, error) {
	fs := flag.NewFlagSet(prog, flag.ContinueOnError)
	configFile := fs.String("config", "", "YAML configuration `file` (see configs/dnsd.yaml)")
	consul := fs.String("consul", "", "Consul agent HTTP `address` (consul.address)")
	zone := fs.String("zone", "", "DNS `zone` served (zone)")
	listen := fs.String("listen", "", "`address` served over UDP and TCP (listen)")
	admin := fs.String("admin", "", "`address` of /metrics and /healthz (admin)")
	fs.Bool("version", false, "print the version and exit")
	if err := config.ParseFlags(fs, args, "usage: dnsd [flags]"); err != nil {
		return dnsd.Config{}, err
	}
	cfg := dnsd.DefaultConfig()
	if *configFile != "" {
		if err := config.Load(*configFile, &cfg); err != nil {
			return dnsd.Config{}, err
		}
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "consul":
			cfg.Consul.Address = *consul
		case "zone":
			cfg.Zone = *zone
		case "listen":
			cfg.Listen = *listen
		case "admin":
			cfg.Admin = *admin
		}
	})
	if err := cfg.Validate(); err != nil {
		return dnsd.Config{}, err
	}
	return cfg, nil
}
