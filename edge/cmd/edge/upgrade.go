package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/cloudflare/tableflip"
	"github.com/podedge/podedge/edge"
)

// upgradeOnSIGUSR2 upgrades the binary in place on each SIGUSR2, as nginx
// does: tableflip starts the binary now at the edge's path with the
// listening sockets, and waits for it to serve. Then the returned context
// ends, with the edge set to hand over (Edge.HandOver): it stops
// accepting, finishes what is in flight and exits. A new binary that fails
// to start, or to become ready, leaves this process serving. The context
// also ends with ctx.
func upgradeOnSIGUSR2(ctx context.Context, upg *tableflip.Upgrader, e *edge.Edge, log *slog.Logger) context.Context {
	run, cancel := context.WithCancel(ctx)
	if upg.HasParent() {
		// tableflip refuses to upgrade again until the process this one
		// replaced has exited: say when it has.
		go func() {
			if err := upg.WaitForParent(run); err == nil {
				log.Info("the previous process exited; the edge may be upgraded again")
			} else if run.Err() == nil {
				log.Warn("the previous process ended badly", "error", err.Error())
			}
		}()
	}
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	go func() {
		defer signal.Stop(usr2)
		for {
			select {
			case <-run.Done():
				return
			case <-upg.Exit():
				log.Info("the upgraded process serves; handing over to it")
				e.HandOver()
				cancel()
				return
			case <-usr2:
				log.Info("upgrading: starting the binary", "path", os.Args[0])
				if err := upg.Upgrade(); err != nil {
					log.Error("upgrade failed; this process keeps serving", "error", err.Error())
				}
			}
		}
	}()
	return run
}
