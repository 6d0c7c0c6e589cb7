package localpod

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// process is one child of the local platform, logging to its own file.
type process struct {
	name    string
	stopSig syscall.Signal // SIGTERM unless the program wants another
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	mu      sync.Mutex
	err     error
}

// startProcess runs bin with args, its output appended to logDir/name.log.
// The child is killed if this process dies, so nothing outlives a crash.
func startProcess(name, logDir, bin string, args ...string) (*process, error) {
	logPath := filepath.Join(logDir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s: log file: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// A process group of its own keeps the terminal's Ctrl-C from reaching
	// the child directly: localpod stops the children itself, in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: start %s: %w", name, bin, err)
	}
	p := &process{name: name, stopSig: syscall.SIGTERM, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// failure describes an early exit, with the end of the process's log.
func (p *process) failure() error {
	p.mu.Lock()
	err := p.err
	p.mu.Unlock()
	return fmt.Errorf("%s exited (%v); last lines of %s:\n%s", p.name, err, p.logPath, tail(p.logPath, 15))
}

// stop sends the stop signal and waits up to grace for the process to end, then
// kills it. It reports whether the process ended on its own.
func (p *process) stop(grace time.Duration) bool {
	if p.exited() {
		return true
	}
	_ = p.cmd.Process.Signal(p.stopSig)
	select {
	case <-p.done:
		return true
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
		return false
	}
}

// kill ends the process at once, as a crash would.
func (p *process) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// cleanExit reports whether the process exited with status 0 (or was never
// asked to stop and is still running).
func (p *process) cleanExit() error {
	if !p.exited() {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var ee *exec.ExitError
	if p.err == nil {
		return nil
	}
	if errors.As(p.err, &ee) {
		return fmt.Errorf("%s exited with %s", p.name, ee.ProcessState.String())
	}
	return p.err
}

func tail(path string, n int) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}
