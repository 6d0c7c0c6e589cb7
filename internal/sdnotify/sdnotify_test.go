package sdnotify

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

// listen opens a unixgram socket as systemd does for NOTIFY_SOCKET.
func listen(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func read(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}

func TestNotifyWritesOneDatagramPerState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	c := listen(t, path)
	t.Setenv("NOTIFY_SOCKET", path)
	for _, state := range []string{Ready, Reloading + "\nMONOTONIC_USEC=1", Ready, Stopping} {
		if err := Notify(state); err != nil {
			t.Fatal(err)
		}
		if got := read(t, c); got != state {
			t.Errorf("got %q, want %q", got, state)
		}
	}
}

func TestNotifyAbstractSocket(t *testing.T) {
	name := "podedge-sdnotify-test-" + filepath.Base(t.TempDir())
	c := listen(t, "\x00"+name)
	if err := NotifySocket("@"+name, Ready); err != nil {
		t.Fatal(err)
	}
	if got := read(t, c); got != Ready {
		t.Errorf("got %q", got)
	}
}

func TestNotifyWithoutSocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if err := Notify(Ready); err != nil {
		t.Errorf("without NOTIFY_SOCKET: %v, want nil", err)
	}
	if err := NotifySocket(filepath.Join(t.TempDir(), "absent"), Ready); err == nil {
		t.Error("a socket that does not exist: no error")
	}
}
