// Command backend is podedge's demo app server and load-test upstream.
//
//	backend -listen 127.0.0.1:9101 -name pod-1-app-1 -pod pod-1 -consul 127.0.0.1:8500
//
// With -consul it registers itself as an app server of its pod and
// deregisters on SIGINT/SIGTERM; with -size N every answer is N bytes.
// Whatever the flags, /bytes/N answers exactly N bytes (N up to 1 MiB).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/bench/backend"
	"github.com/podedge/podedge/internal/config"
	"github.com/podedge/podedge/internal/version"
	"github.com/podedge/podedge/router"
)

func main() {
	fs := flag.NewFlagSet("backend", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:9101", "address to serve HTTP on")
	name := fs.String("name", "", "app server name (default: app-<port>)")
	pod := fs.String("pod", "pod-1", "pod the app server belongs to")
	size := fs.Int("size", 0, "answer every request with a body of this many bytes (0: the demo page)")
	consul := fs.String("consul", "", "register in this Consul agent as an app server (empty: do not register)")
	service := fs.String("service", "app", "Consul service name to register as")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if *showVersion {
		fmt.Println("backend", version.String())
		return
	}
	if err := router.CheckLabel(*pod); err != nil {
		config.Exit("backend", fmt.Errorf("-pod: %w", err))
	}
	if *size < 0 {
		config.Exit("backend", fmt.Errorf("-size: %d is negative", *size))
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		config.Exit("backend", fmt.Errorf("-listen: %w", err))
	}
	addr := ln.Addr().(*net.TCPAddr)
	if *name == "" {
		*name = fmt.Sprintf("app-%d", addr.Port)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("app_server", *name, "pod", *pod)
	srv := backend.New(backend.Config{Name: *name, Pod: *pod, Size: *size, Logger: log})

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	var client *api.Client
	if *consul != "" {
		client, err = config.Consul{Address: *consul, Prefix: "podedge/"}.Client()
		if err != nil {
			config.Exit("backend", err)
		}
		if err := srv.Register(client, *service, addr); err != nil {
			log.Error("registration failed", "error", err.Error())
			os.Exit(1)
		}
	}
	log.Info("serving", "listen", addr.String(), "registered", *consul != "")

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	select {
	case err := <-serveErr:
		log.Error("serve failed", "error", err.Error())
		os.Exit(1)
	case <-sigs:
	}
	if client != nil {
		if err := srv.Deregister(client); err != nil {
			log.Warn("deregistration failed", "error", err.Error())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
		log.Warn("shutdown", "error", err.Error())
	}
}
