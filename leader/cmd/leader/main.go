// Command leader is podedge's control plane: the HTTP API that registers
// pods and places tenants. Run several replicas; one, elected with a Consul
// lock, writes, and the others forward writes to it. SIGHUP reloads the
// configuration file; SIGUSR2 upgrades the binary in place (see
// docs/operating.md).
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
	"syscall"

	"github.com/podedge/podedge/internal/config"
	"github.com/podedge/podedge/internal/reload"
	"github.com/podedge/podedge/internal/sdnotify"
	"github.com/podedge/podedge/internal/upgrade"
	"github.com/podedge/podedge/internal/version"
	"github.com/podedge/podedge/leader"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	cfg, err := parse(args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if errors.Is(err, config.ErrVersion) {
		fmt.Println("leader", version.String())
		return 0
	}
	if err != nil {
		config.Exit("leader", err)
	}
	level := new(slog.LevelVar)
	log, err := cfg.Log.LeveledLogger(os.Stderr, level)
	if err != nil {
		config.Exit("leader", err)
	}
	srv, err := leader.New(cfg, log)
	if err != nil {
		config.Exit("leader", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	reloader := reload.New(cfg)
	reloader.Load = func() (leader.Config, error) { return parse(args) }
	reloader.Live = leader.LiveKeys
	reloader.Apply = func(c leader.Config) {
		_ = c.Log.SetLevel(level)
		srv.Reconfigure(c)
	}
	reloader.Metrics = reload.NewMetrics("leader", srv.Registry())
	reloader.Log = log
	upg, err := upgrade.New(cfg.PIDFile, 0, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "leader: %s\n", err)
		return 1
	}
	defer upg.Stop()
	ln, err := upg.Fds.Listen("tcp", cfg.Listen)
	if err != nil {
		log.Error("cannot listen", "error", err.Error())
		return 1
	}
	// Serving: systemd may count the service as started (or, after an
	// upgrade, follow this process as its main one).
	srv.SetUpgrade(leader.Upgrade{Successor: upg.HasParent(), OnServing: upg.Ready})
	reloader.Notify = func(state string) { _ = sdnotify.Notify(state) }
	reloader.Start(ctx)
	go func() {
		<-ctx.Done()
		_ = sdnotify.Notify(sdnotify.Stopping)
	}()
	if err := srv.Serve(upg.OnSIGUSR2(ctx, srv.HandOver), ln); err != nil {
		log.Error("leader stopped", "error", err.Error())
		return 1
	}
	log.Info("leader stopped")
	return 0
}

// parse reads the flags and the configuration file; flags override the
// file only when given.
func parse(args []string) (leader.Config, error) {
	fs := flag.NewFlagSet("leader", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	configPath := fs.String("config", "", "YAML configuration `file`")
	listen := fs.String("listen", "", "`address` of the HTTP API, /healthz and /metrics (listen)")
	consul := fs.String("consul", "", "`address` of the local Consul agent's HTTP API (consul.address)")
	zone := fs.String("zone", "", "DNS `zone` tenants live in (zone)")
	fs.Bool("version", false, "print the version and exit")
	if err := config.ParseFlags(fs, args, "usage: leader [-config FILE] [-listen ADDR] [-consul ADDR] [-zone NAME] [-version]"); err != nil {
		return leader.Config{}, err
	}
	cfg, err := leader.Load(*configPath)
	if err != nil {
		return leader.Config{}, err
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "listen":
			cfg.Listen = *listen
		case "consul":
			cfg.Consul.Address = *consul
		case "zone":
			cfg.Zone = *zone
		}
	})
	if err := cfg.Validate(); err != nil {
		return leader.Config{}, err
	}
	return cfg, nil
}
