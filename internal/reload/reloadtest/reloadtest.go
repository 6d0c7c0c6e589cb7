// Package reloadtest runs a podedge binary as a real process for the tests
// of configuration reloads: it builds the command, starts it, sends it
// SIGHUP and waits, on its /metrics, for the reload to be counted.
package reloadtest

import (
	"bufio"
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
	_ = p.notify.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 4096)
	n, err := p.notify.Read(buf)
	if err != nil {
		t.Fatalf("waiting for %s on NOTIFY_SOCKET: %v", want, err)
	}
	if got := string(buf[:n]); !strings.HasPrefix(got, want) {
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
