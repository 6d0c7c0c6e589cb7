package harness

import (
	"fmt"
	"runtime"
	"strconv"
)

// CPUs splits the machine between the system under test and its load
// generator, so that each system is measured alike: the server (a proxy
// with the two backends behind it, or a DNS server) runs on Server, the
// load generator and Consul on Client. An empty list means no pinning.
type CPUs struct {
	Server, Client string
	// ServerCount is the number of CPUs in Server: the worker count the
	// servers that do not count it themselves are configured with.
	ServerCount int
}

// SplitCPUs gives the first half of the n CPUs the harness may use to the
// server and the rest to the clients: CPU 0 and CPU 1 on a 2-core machine.
// With one CPU nothing is pinned.
func SplitCPUs(n int) CPUs {
	if n < 2 {
		return CPUs{ServerCount: 1}
	}
	s := n / 2
	return CPUs{Server: cpuRange(0, s), Client: cpuRange(s, n), ServerCount: s}
}

// DefaultCPUs splits the CPUs the harness may use (runtime.NumCPU follows
// the affinity mask).
func DefaultCPUs() CPUs { return SplitCPUs(runtime.NumCPU()) }

func cpuRange(from, to int) string {
	if to-from == 1 {
		return strconv.Itoa(from)
	}
	return fmt.Sprintf("%d-%d", from, to-1)
}
