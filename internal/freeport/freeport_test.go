package freeport

import (
	"net"
	"strconv"
	"testing"
)

func TestPortsAreDistinctAndFree(t *testing.T) {
	ports, err := Ports(8)
	if err != nil || len(ports) != 8 {
		t.Fatalf("%v %v", ports, err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] {
			t.Fatalf("port %d twice in %v", p, ports)
		}
		seen[p] = true
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("tcp %s: %v", addr, err)
		}
		u, err := net.ListenPacket("udp", addr)
		if err != nil {
			t.Fatalf("udp %s: %v", addr, err)
		}
		l.Close()
		u.Close()
	}
}

// Ports stay out of the ephemeral range, where outgoing connections could
// take them before the program that asked binds them.
func TestPortsAreBelowTheEphemeralRange(t *testing.T) {
	low, high := pickRange()
	ports, err := Ports(50)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ports {
		if p < low || p >= high {
			t.Fatalf("port %d outside %d-%d", p, low, high)
		}
	}
}

// PortsOn binds on the address it is given: its ports are free there, and
// an address that is not this machine's has none.
func TestPortsOnOtherAddress(t *testing.T) {
	const host = "127.0.0.77"
	ports, err := PortsOn(host, 8)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ports {
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("port %d on %s: %v", p, host, err)
		}
		l.Close()
	}
	if ports, err := PortsOn("192.0.2.1", 1); err == nil {
		t.Fatalf("ports %v on an address of another machine", ports)
	}
}
