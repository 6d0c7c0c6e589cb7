package localpod

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// checkFree binds every endpoint for a moment and returns an error naming
// the first one that is taken and, when /proc tells, the process holding it.
func checkFree(eps []endpoint) error {
	for _, ep := range eps {
		if err := tryBind(ep); err != nil {
			return fmt.Errorf("%s address %s/%s is taken%s", ep.owner, ep.addr, ep.network, holderOf(ep))
		}
	}
	return nil
}

func tryBind(ep endpoint) error {
	if ep.network == "udp" {
		c, err := net.ListenPacket("udp", ep.addr)
		if err != nil {
			return err
		}
		return c.Close()
	}
	l, err := net.Listen("tcp", ep.addr)
	if err != nil {
		return err
	}
	return l.Close()
}

// holderOf finds the process listening on ep through /proc/net and
// /proc/<pid>/fd, returning " by NAME (pid N)" or "" when it cannot tell.
func holderOf(ep endpoint) string {
	ap, err := netip.ParseAddrPort(ep.addr)
	if err != nil {
		return ""
	}
	inodes := map[string]bool{}
	for _, suffix := range []string{"", "6"} {
		for _, inode := range socketInodes("/proc/net/"+ep.network+suffix, ep.network, ap) {
			inodes[inode] = true
		}
	}
	if len(inodes) == 0 {
		return ""
	}
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range fds {
		target, err := os.Readlink(fd)
		if err != nil || !strings.HasPrefix(target, "socket:[") {
			continue
		}
		if inodes[strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]")] {
			pid := strings.Split(fd, "/")[2]
			comm, _ := os.ReadFile("/proc/" + pid + "/comm")
			return fmt.Sprintf(" by %s (pid %s)", strings.TrimSpace(string(comm)), pid)
		}
	}
	return " by a process of another user"
}

// socketInodes reads a /proc/net table and returns the inodes of sockets
// bound to ap's port on ap's address or on the wildcard address (listening,
// for TCP).
func socketInodes(path, network string, ap netip.AddrPort) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 {
			continue
		}
		if network == "tcp" && fields[3] != "0A" { // TCP_LISTEN
			continue
		}
		addr, port, ok := parseProcAddr(fields[1])
		if !ok || port != ap.Port() {
			continue
		}
		if addr.IsUnspecified() || addr.Unmap() == ap.Addr().Unmap() {
			out = append(out, fields[9])
		}
	}
	return out
}

// parseProcAddr parses "0100007F:1F90": the address as the kernel stores it
// (32-bit words in host byte order, little endian here) and a hex port.
func parseProcAddr(s string) (netip.Addr, uint16, bool) {
	hexAddr, hexPort, ok := strings.Cut(s, ":")
	if !ok {
		return netip.Addr{}, 0, false
	}
	raw, err := hex.DecodeString(hexAddr)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.Addr{}, 0, false
	}
	for i := 0; i < len(raw); i += 4 {
		raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return netip.Addr{}, 0, false
	}
	addr, _ := netip.AddrFromSlice(raw)
	return addr, uint16(port), true
}
