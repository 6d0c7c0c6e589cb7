// Package upgrade upgrades a podedge binary in place on SIGUSR2, as nginx
// does, with tableflip: the process starts the binary now at its path,
// hands it its listening sockets by file descriptor, and waits until the
// new process says it serves; then it hands over and exits. The edge, dnsd
// and the leader share it; each says what handing over means for it.
package upgrade

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
	"github.com/podedge/podedge/internal/sdnotify"
)

// Upgrader is a process's part in upgrades: the sockets it inherited or
// will hand over (Fds), and the signal.
type Upgrader struct {
	*tableflip.Upgrader
	log *slog.Logger
}

// New returns the process's Upgrader. pidFile, if set, is written with the
// process ID once it serves (Ready), by every process an upgrade starts,
// so that a supervisor follows the new one. timeout bounds how long a new
// process may take to become ready before it is killed and the upgrade
// fails; 0 is tableflip's default, a minute.
func New(pidFile string, timeout time.Duration, log *slog.Logger) (*Upgrader, error) {
	upg, err := tableflip.New(tableflip.Options{PIDFile: pidFile, UpgradeTimeout: timeout})
	if err != nil {
		return nil, fmt.Errorf("upgrades: %w", err)
	}
	return &Upgrader{Upgrader: upg, log: log}, nil
}

// Ready tells the process that started this one (if an upgrade did) that
// it serves, writes the PID file, and tells systemd: READY=1, and after
// an upgrade MAINPID= so that it follows this process as its main one.
func (u *Upgrader) Ready() {
	if err := u.Upgrader.Ready(); err != nil {
		u.log.Error("cannot tell the upgrade this process is ready", "error", err.Error())
	}
	state := sdnotify.Ready
	if u.HasParent() {
		state = fmt.Sprintf("MAINPID=%d\n%s", os.Getpid(), sdnotify.Ready)
	}
	_ = sdnotify.Notify(state)
}

// OnSIGUSR2 upgrades the binary on each SIGUSR2: tableflip starts the
// binary now at the process's path with the listening sockets, and waits
// for it to call Ready. Then handOver is called and the returned context
// ends: the process stops serving what the new one serves, finishes what
// is in flight, and exits. A new binary that fails to start, or to become
// ready, leaves this process serving. The context also ends with ctx.
func (u *Upgrader) OnSIGUSR2(ctx context.Context, handOver func()) context.Context {
	run, cancel := context.WithCancel(ctx)
	if u.HasParent() {
		// tableflip refuses to upgrade again until the process this one
		// replaced has exited: say when it has.
		go func() {
			if err := u.WaitForParent(run); err == nil {
				u.log.Info("the previous process exited; this one may be upgraded again")
			} else if run.Err() == nil {
				u.log.Warn("the previous process ended badly", "error", err.Error())
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
			case <-u.Exit():
				u.log.Info("the upgraded process serves; handing over to it")
				handOver()
				cancel()
				return
			case <-usr2:
				u.log.Info("upgrading: starting the binary", "path", os.Args[0])
				if err := u.Upgrade(); err != nil {
					u.log.Error("upgrade failed; this process keeps serving", "error", err.Error())
				}
			}
		}
	}()
	return run
}
