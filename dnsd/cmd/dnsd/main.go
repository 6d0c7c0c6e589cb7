// Command dnsd is podedge's authoritative DNS server: it answers for the
// pods and tenants of the platform from Consul. See dnsd/README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/podedge/podedge/dnsd"
	"github.com/podedge/podedge/internal/config"
	"github.com/podedge/podedge/internal/version"
)

func main() {
	const prog = "dnsd"
	fs := flag.NewFlagSet(prog, flag.ContinueOnError)
	configFile := fs.String("config", "", "YAML configuration `file` (see configs/dnsd.yaml)")
	consul := fs.String("consul", "", "Consul agent HTTP `address` (consul.address)")
	zone := fs.String("zone", "", "DNS `zone` served (zone)")
	listen := fs.String("listen", "", "`address` served over UDP and TCP (listen)")
	admin := fs.String("admin", "", "`address` of /metrics and /healthz (admin)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	// Parse errors are reported as one line by config.Exit, not with the
	// usage text; -h prints the usage.
	fs.SetOutput(io.Discard)
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stderr)
			fmt.Fprintf(os.Stderr, "usage: %s [flags]\n", prog)
			fs.PrintDefaults()
			os.Exit(0)
		}
		config.Exit(prog, err)
	}
	if fs.NArg() > 0 {
		config.Exit(prog, fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	}
	if *showVersion {
		fmt.Println(prog, version.String())
		return
	}

	cfg := dnsd.DefaultConfig()
	if *configFile != "" {
		if err := config.Load(*configFile, &cfg); err != nil {
			config.Exit(prog, err)
		}
	}
	// Flags override the file only when given.
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
		config.Exit(prog, err)
	}
	log, err := cfg.Log.Logger(os.Stderr)
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
	if err := srv.Listen(); err != nil {
		log.Error("cannot listen", "error", err.Error())
		os.Exit(1)
	}
	log.Info("dnsd starting", "version", version.String())

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := srv.Run(ctx, client); err != nil {
		log.Error("dnsd failed", "error", err.Error())
		os.Exit(1)
	}
	log.Info("dnsd stopped")
}
