// Package child runs a supervised child process: the bench's servers and
// clients, and the local platform's programs.
//
// Each child runs in a process group of its own, so that the terminal's
// Ctrl-C reaches only the parent, which stops its children itself, in
// order, and so that a server's workers are stopped with it. It dies with
// the parent (Pdeathsig), so nothing outlives a crash.
package child

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// tailLines is how many lines of its log an error about a child carries.
const tailLines = 15

// Spec says how to run a child.
type Spec struct {
	// Name names the child in errors and its log file, <LogDir>/<Name>.log.
	Name   string
	LogDir string
	// AppendLog appends to an existing log instead of truncating it, for a
	// name run more than once whose earlier logs are worth keeping.
	AppendLog bool
	Bin       string
	Args      []string
	// Env is added to the parent's environment.
	Env []string
	// CPUs is a taskset CPU list to run on; empty means anywhere.
	CPUs string
	// Stdout and Stderr, when set, receive the output instead of the log.
	// StdoutFile, when set, is a file (created or truncated) that receives
	// standard output instead.
	Stdout, Stderr io.Writer
	StdoutFile     string
	// StopSignal asks the child to stop; zero means SIGTERM.
	StopSignal syscall.Signal
}

// Process is a running (or ended) child.
type Process struct {
	name    string
	logPath string
	stopSig syscall.Signal
	cmd     *exec.Cmd
	done    chan struct{}
	err     error // set before done closes; read only after
}

// Start runs spec in a process group of its own.
func Start(spec Spec) (*Process, error) {
	logPath := filepath.Join(spec.LogDir, spec.Name+".log")
	flags := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
	if spec.AppendLog {
		flags = os.O_CREATE | os.O_WRONLY | os.O_APPEND
	}
	f, err := os.OpenFile(logPath, flags, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s: log file: %w", spec.Name, err)
	}
	files := []*os.File{f}
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	bin, args := spec.Bin, spec.Args
	if spec.CPUs != "" {
		args = append([]string{"-c", spec.CPUs, bin}, args...)
		bin = "taskset"
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if spec.Stdout != nil {
		cmd.Stdout = spec.Stdout
	}
	if spec.Stderr != nil {
		cmd.Stderr = spec.Stderr
	}
	if spec.StdoutFile != "" {
		out, err := os.Create(spec.StdoutFile)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("%s: standard output: %w", spec.Name, err)
		}
		files = append(files, out)
		cmd.Stdout = out
	}
	if spec.Env != nil {
		cmd.Env = append(os.Environ(), spec.Env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		closeAll()
		return nil, fmt.Errorf("%s: start %s: %w", spec.Name, spec.Bin, err)
	}
	p := &Process{name: spec.Name, logPath: logPath, stopSig: spec.StopSignal, cmd: cmd, done: make(chan struct{})}
	if p.stopSig == 0 {
		p.stopSig = syscall.SIGTERM
	}
	go func() {
		p.err = cmd.Wait()
		closeAll()
		close(p.done)
	}()
	return p, nil
}

// Name is the spec's name.
func (p *Process) Name() string { return p.name }

// Pid is the child's pid, which is also its process group's id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed once the child has ended and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the child has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Signal sends sig to the child alone (not its group).
func (p *Process) Signal(sig os.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("%s: signal %v: %w", p.name, sig, err)
	}
	return nil
}

// State waits for the child to end and returns its exit status and
// resource use.
func (p *Process) State() *os.ProcessState {
	<-p.done
	return p.cmd.ProcessState
}

// Stop sends the stop signal, waits up to grace for the child to end, and
// then kills whatever is left of its process group. It reports whether the
// child ended on its own.
func (p *Process) Stop(grace time.Duration) bool {
	onItsOwn := true
	if !p.Exited() {
		_ = p.cmd.Process.Signal(p.stopSig)
		t := time.NewTimer(grace)
		select {
		case <-p.done:
		case <-t.C:
			onItsOwn = false
		}
		t.Stop()
	}
	// Also when the leader ended on its own: its workers may not have.
	p.Kill()
	return onItsOwn
}

// Kill ends the whole process group at once (SIGKILL), as a crash would,
// and waits for the child to be reaped.
func (p *Process) Kill() {
	_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
	<-p.done
}

// Failure waits for the child to end and describes how, with the end of
// its log: for a child that was not supposed to end.
func (p *Process) Failure() error {
	<-p.done
	return fmt.Errorf("%s exited (%v); last lines of %s:\n%s", p.name, p.err, p.logPath, tail(p.logPath, tailLines))
}

// CleanExit waits for the child to end and returns nil when it exited with
// status 0, else an error with the end of its log.
func (p *Process) CleanExit() error {
	<-p.done
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return fmt.Errorf("%s exited with %s; last lines of %s:\n%s", p.name, ee.ProcessState, p.logPath, tail(p.logPath, tailLines))
	}
	if p.err != nil {
		return fmt.Errorf("%s: %w", p.name, p.err)
	}
	return nil
}

// tail returns the last n lines of the file at path, indented.
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
