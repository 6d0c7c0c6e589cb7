// Package freeport finds loopback ports for programs started on the fly:
// the tests' Consul agents and the load tests' servers.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// Ports returns n distinct ports that were free on 127.0.0.1 for both TCP
// and UDP a moment ago (Consul's and DNS servers' ports carry both).
//
// They are picked at random below the kernel's ephemeral range: a port from
// that range can be taken, between this check and the program's bind, by
// any outgoing connection on the machine (tests of other packages run at the
// same time and make thousands).
func Ports(n int) ([]int, error) { return PortsOn("127.0.0.1", n) }

// PortsOn is Ports on another local address, such as one of the 127.0.0.x
// a test gives each member of a Consul cluster (Linux routes all of
// 127.0.0.0/8 to the loopback interface).
func PortsOn(host string, n int) ([]int, error) {
	low, high := pickRange()
	var ports []int
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for tries := 0; len(ports) < n; tries++ {
		if tries == 100*n {
			return nil, fmt.Errorf("free port: none of %d tries in %d-%d was free", tries, low, high)
		}
		p := low + rand.IntN(high-low)
		addr := net.JoinHostPort(host, strconv.Itoa(p))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		held = append(held, l) // held, so that it is not picked twice
		u, err := net.ListenPacket("udp", addr)
		if err != nil {
			continue
		}
		u.Close()
		ports = append(ports, p)
	}
	return ports, nil
}

// pickRange is where ports are picked: from 10000 up to the start of the
// ephemeral range (Linux's ip_local_port_range; 32768 when unknown).
func pickRange() (low, high int) {
	low, high = 10000, 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if start, err := strconv.Atoi(f[0]); err == nil && start > low+1000 {
				high = start
			}
		}
	}
	return low, high
}
