// Package freeport finds loopback ports for programs started on the fly:
// the tests' Consul agents and the load tests' servers.
package freeport

import (
	"fmt"
	"net"
	"strconv"
)

// Ports returns n distinct ports that were free on 127.0.0.1 for both TCP
// and UDP a moment ago (Consul's and DNS servers' ports carry both).
func Ports(n int) ([]int, error) {
	var ports []int
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		held = append(held, l)
		p := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue // taken for UDP; keep the TCP one held so it is not picked again
		}
		u.Close()
		ports = append(ports, p)
	}
	return ports, nil
}
