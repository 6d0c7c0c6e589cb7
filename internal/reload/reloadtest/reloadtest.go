// Package reloadtest runs a podedge binary as a real process for the tests
// of configuration reloads: it builds the command, starts it, sends it
// SIGHUP and waits, on its /metrics, for the reload to be counted.
package reloadtest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podedge/podedge/internal/consultest"
)

// Build compiles the command in dir (a package path such as ".") into the
// test's temporary folder and returns the binary.
func Build(t testing.TB, dir, name string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	if out, err := exec.Command("go", "build", "-o", bin, dir).CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", name, err, out)
	}
	return bin
}

// Proc is a running binary.
type Proc struct {
	Cmd *exec.Cmd
	// Log is its standard error.
	Log    *consultest.SyncBuffer
	done   chan error
	notify *net.UnixConn
	// states are the datagrams read from notify, in order: read as they
	// come, so that the process never waits for room in the socket.
	states chan string
}

// Start runs bin with args, with a NOTIFY_SOCKET of its own as systemd
// gives a unit of Type=notify (Notified reads it); the process is stopped
// (SIGTERM) when the test ends, and its log printed if the test failed.
func Start(t testing.TB, bin string, args ...string) *Proc {
	t.Helper()
	p := &Proc{Cmd: exec.Command(bin, args...), Log: &consultest.SyncBuffer{}, done: make(chan error, 1)}
	sock := filepath.Join(t.TempDir(), "notify")
	var err error
	if p.notify, err = net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.notify.Close() })
	p.states = make(chan string, 1024)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := p.notify.Read(buf)
			if err != nil {
				return
			}
			select {
			case p.states <- string(buf[:n]):
			default: // nobody waits for that many
			}
		}
	}()
	p.Cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	p.Cmd.Stderr = p.Log
	if err := p.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.Cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.Cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			_ = p.Cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", filepath.Base(bin), p.Log.String())
		}
	})
	return p
}

// Notified waits for the next state the process sent to its
// NOTIFY_SOCKET and checks that it starts with want ("READY=1").
func (p *Proc) Notified(t testing.TB, want string) {
	t.Helper()
	var got string
	select {
	case got = <-p.states:
	case <-time.After(20 * time.Second):
		t.Fatalf("waiting for %s on NOTIFY_SOCKET: nothing within 20s", want)
	}
	if !strings.HasPrefix(got, want) {
		t.Fatalf("NOTIFY_SOCKET got %q, want %s", got, want)
	}
}

// Exited reports whether the process ended.
func (p *Proc) Exited() bool {
	select {
	case err := <-p.done:
		p.done <- err
		return true
	default:
		return false
	}
}

// Metric reads the value of the sample name (with its labels, as
// exposed: `edge_config_reloads_total{result="ok"}`) from a /metrics URL;
// -1 when it is absent or the URL does not answer.
func Metric(url, sample string) float64 {
	resp, err := http.Get(url)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

// Reload sends SIGHUP and waits until metrics counts it with result (ok or
// refused), as the n-th of that result.
func (p *Proc) Reload(t testing.TB, metricsURL, namespace, result string, n int) {
	t.Helper()
	if err := p.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	sample := fmt.Sprintf(`%s_config_reloads_total{result=%q}`, namespace, result)
	consultest.WaitFor(t, 10*time.Second, fmt.Sprintf("%s = %d", sample, n), func() bool {
		if p.Exited() {
			t.Fatalf("the process exited on SIGHUP")
		}
		return Metric(metricsURL, sample) == float64(n)
	})
}

// WriteFile writes a configuration file (0600).
func WriteFile(t testing.TB, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

// KeepAlive opens a connection to addr and returns a check that sends
// request on it (a whole HTTP/1.1 request) and wants a 200: a reload must
// not close a keep-alive connection.
func KeepAlive(t testing.TB, addr, request string) (check func(when string)) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	br := bufio.NewReader(conn)
	return func(when string) {
		t.Helper()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := fmt.Fprint(conn, request); err != nil {
			t.Fatalf("%s: write on the kept-alive connection: %v", when, err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: the kept-alive connection: %v", when, err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: the kept-alive connection answered %d", when, resp.StatusCode)
		}
	}
}

// Gone reports whether process pid ended: no such process, or a zombie
// that its new parent (init, after an upgrade) has not reaped.
func Gone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// pid (comm) state ...: the state follows the last ')'.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z'
}

// ReadPID reads a PID file; 0 when it is missing or not a number.
func ReadPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// Install puts a copy of src at dst by renaming over it, as a package
// manager does: the running binary's file is left alone.
func Install(t testing.TB, src, dst string) {
	t.Helper()
	raw, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	tmp := dst + ".new"
	if err := os.WriteFile(tmp, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

// Broken writes at path an executable that fails at once, as a broken
// new binary does.
func Broken(t testing.TB, path string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("#!/bin/sh\necho broken >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

// StopLast stops, when the test ends, the process pidFile names if it is
// not first: the one serving after upgrades is no child of the test's.
func StopLast(t testing.TB, pidFile string, first *Proc) {
	t.Cleanup(func() {
		if pid := ReadPID(pidFile); pid > 0 && pid != first.Cmd.Process.Pid {
			_ = syscall.Kill(pid, syscall.SIGTERM)
			consultest.WaitFor(t, 30*time.Second, "the last process to exit", func() bool { return Gone(pid) })
		}
	})
}

// Upgrade sends SIGUSR2 to the process pidFile names and waits until
// another one has replaced it in the file and it has exited, and log has
// counted n processes that saw their previous one exit.
func Upgrade(t testing.TB, pidFile string, log *consultest.SyncBuffer, n int) {
	t.Helper()
	old := ReadPID(pidFile)
	if err := syscall.Kill(old, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	consultest.WaitFor(t, 60*time.Second, fmt.Sprintf("upgrade %d: a new process serving and %d gone", n, old), func() bool {
		now := ReadPID(pidFile)
		return now != 0 && now != old && Gone(old) &&
			strings.Count(log.String(), "the previous process exited") == n
	})
}

// UpgradeFails installs a broken binary at bin, sends SIGUSR2 to the
// process pidFile names, waits for the failure in log, checks that the
// process still runs, and puts good back at bin.
func UpgradeFails(t testing.TB, pidFile, bin, good string, log *consultest.SyncBuffer) {
	t.Helper()
	const failed = "upgrade failed; this process keeps serving"
	pid := ReadPID(pidFile)
	before := strings.Count(log.String(), failed)
	broken := bin + ".broken"
	Broken(t, broken)
	Install(t, broken, bin)
	if err := syscall.Kill(pid, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	consultest.WaitFor(t, 90*time.Second, "the failed upgrade to be logged", func() bool {
		return strings.Count(log.String(), failed) > before
	})
	if Gone(pid) || ReadPID(pidFile) != pid {
		t.Fatalf("a broken binary replaced process %d", pid)
	}
	Install(t, good, bin)
}
