// Package sdnotify tells systemd of a service's state, as sd_notify(3)
// does: one datagram to the unix socket named by $NOTIFY_SOCKET, which
// systemd sets for a unit of Type=notify. Without it, nothing is sent.
package sdnotify

import (
	"fmt"
	"net"
	"os"
	"time"
)

// writeTimeout bounds the wait for room in the socket's queue.
const writeTimeout = 2 * time.Second

// The states podedge's binaries send.
const (
	Ready     = "READY=1"
	Reloading = "RELOADING=1"
	Stopping  = "STOPPING=1"
)

// Notify sends state (newline-separated VAR=value assignments) to the
// socket in $NOTIFY_SOCKET; it does nothing when that is unset.
func Notify(state string) error {
	return NotifySocket(os.Getenv("NOTIFY_SOCKET"), state)
}

// NotifySocket sends state to the datagram socket at path; "" sends
// nothing. A path starting with "@" is in the abstract namespace.
func NotifySocket(path, state string) error {
	if path == "" {
		return nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer c.Close()
	// A full queue (nobody reading the socket) must not stall the
	// service: the state is dropped after a while instead.
	_ = c.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}
