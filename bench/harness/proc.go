package harness

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one child process of the bench: a server under test, a backend,
// Consul or a client. Each runs in a process group of its own (so that the
// terminal's Ctrl-C reaches only the harness, which stops the children
// itself, and so that a server's workers can be counted and killed with it)
// and dies with the harness (Pdeathsig).
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	stopSig syscall.Signal
	done    chan struct{}
	err     error // set before done closes
}

// procSpec says how to run a process.
type procSpec struct {
	// name names the process in logs and errors, and its log file.
	name string
	// cpus is a taskset CPU list to run on; empty means anywhere.
	cpus string
	// env is added to the harness's environment.
	env []string
	// stdout and stderr, when set, receive the output; otherwise it goes
	// to <logDir>/<name>.log. stdoutFile, when set, is a file (created or
	// truncated) that receives standard output instead.
	stdout, stderr io.Writer
	stdoutFile     string
	bin            string
	args           []string
	// interruptAfter, when positive, sends SIGINT to a client that still
	// runs after this long (wrk then stops and reports).
	interruptAfter time.Duration
}

// startProc runs spec in a process group of its own.
func startProc(spec procSpec, logDir string) (*proc, error) {
	logPath := filepath.Join(logDir, spec.name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s: log file: %w", spec.name, err)
	}
	files := []*os.File{f}
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	bin, args := spec.bin, spec.args
	if spec.cpus != "" {
		args = append([]string{"-c", spec.cpus, bin}, args...)
		bin = "taskset"
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if spec.stdout != nil {
		cmd.Stdout = spec.stdout
	}
	if spec.stderr != nil {
		cmd.Stderr = spec.stderr
	}
	if spec.stdoutFile != "" {
		out, err := os.Create(spec.stdoutFile)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("%s: %w", spec.name, err)
		}
		files = append(files, out)
		cmd.Stdout = out
	}
	if spec.env != nil {
		cmd.Env = append(os.Environ(), spec.env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		closeAll()
		return nil, fmt.Errorf("%s: start %s: %w", spec.name, spec.bin, err)
	}
	p := &proc{name: spec.name, cmd: cmd, logPath: logPath, stopSig: syscall.SIGTERM, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		closeAll()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// failure describes an early exit, with the end of the process's log.
func (p *proc) failure() error {
	<-p.done
	return fmt.Errorf("%s exited (%v); last lines of %s:\n%s", p.name, p.err, p.logPath, tail(p.logPath, 15))
}

// stop sends the stop signal, waits up to grace for the process to end, and
// then kills whatever is left of its process group.
func (p *proc) stop(grace time.Duration) {
	if !p.exited() {
		_ = p.cmd.Process.Signal(p.stopSig)
		select {
		case <-p.done:
		case <-time.After(grace):
		}
	}
	p.kill()
}

// kill ends the whole process group at once (SIGKILL), as a crash would,
// and waits for the leader to be reaped.
func (p *proc) kill() {
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
	<-p.done
}

// group returns the pids of the process group, the leader's workers and
// helpers included.
func (p *proc) group() []int {
	pids, _ := groupPids(p.pid())
	return pids
}

// cleanExit returns nil when the process exited with status 0.
func (p *proc) cleanExit() error {
	<-p.done
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return fmt.Errorf("%s exited with %s; last lines of %s:\n%s", p.name, ee.ProcessState, p.logPath, tail(p.logPath, 15))
	}
	return p.err
}

func tail(path string, n int) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "  " + err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}

// procSet is every process the harness started, for the final cleanup.
type procSet struct {
	mu    sync.Mutex
	procs []*proc
}

func (s *procSet) add(p *proc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.procs = append(s.procs, p)
}

// stopAll stops every process still running, the most recent first (the
// servers before Consul), each with a grace period.
func (s *procSet) stopAll(grace time.Duration) {
	s.mu.Lock()
	procs := s.procs
	s.procs = nil
	s.mu.Unlock()
	var wg sync.WaitGroup
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		if p.name == "consul" {
			continue
		}
		wg.Go(func() { p.stop(grace) })
	}
	wg.Wait()
	for _, p := range procs {
		if p.name == "consul" {
			p.stop(grace)
		}
	}
}
