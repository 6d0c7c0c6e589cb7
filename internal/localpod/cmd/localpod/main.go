// Command localpod runs the local platform of `make run` in the foreground
// until SIGINT or SIGTERM, then stops every process it started.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/podedge/podedge/internal/localpod"
)

func main() {
	fs := flag.NewFlagSet("localpod", flag.ContinueOnError)
	bin := fs.String("bin", "bin", "folder holding edge, dnsd, leader and backend")
	consul := fs.String("consul", "consul", "consul binary")
	configs := fs.String("configs", "configs/local", "configuration files of the local platform")
	logs := fs.String("logs", "bin/logs", "folder for each process's log")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	p, err := localpod.Start(ctx, localpod.Default(), localpod.Options{
		Bin: *bin, Consul: *consul, Configs: *configs, Logs: *logs, Progress: os.Stdout,
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "localpod: %v\n", err)
		os.Exit(1)
	}
	fmt.Println()
	fmt.Print(p.TryThis())
	p.Watch(func(name string, err error) {
		fmt.Fprintf(os.Stderr, "\nlocalpod: %s stopped unexpectedly and stays down: %v\n", name, err)
	})
	<-ctx.Done()
	fmt.Println("\nstopping: edges drain first, Consul stops last")
	if err := p.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "localpod: %v\n", err)
		os.Exit(1)
	}
	fmt.Println("stopped; nothing left listening")
}
