// Package localpod runs a whole podedge platform on one machine: a Consul dev
// agent, two leader replicas, dnsd, three edges in two pods and demo app
// servers, at fixed documented addresses. `make run` and the end-to-end test
// both go through it.
package localpod

import (
	"fmt"
	"net"
	"strconv"
)

// Layout is where every process of the local platform listens.
type Layout struct {
	// Zone is the DNS zone of the platform.
	Zone string
	// ConsulHTTP is the dev agent's HTTP API and UI. ConsulServer,
	// ConsulSerfLAN and ConsulSerfWAN are its cluster ports, on 127.0.0.1.
	ConsulHTTP    string
	ConsulServer  int
	ConsulSerfLAN int
	ConsulSerfWAN int
	// Leaders are the API addresses of the leader replicas.
	Leaders []string
	// DNS is dnsd's UDP and TCP address; DNSAdmin its metrics.
	DNS      string
	DNSAdmin string
	// Pods are the pods, their edges and their app servers.
	Pods []PodLayout
}

// PodLayout is one pod of the local platform.
type PodLayout struct {
	Name     string
	Region   string
	City     string
	Lat, Lon float64
	Capacity int
	Edges    []EdgeLayout
	// Apps are the demo app servers' addresses.
	Apps []string
}

// EdgeLayout is one edge: its HTTP listener, admin listener and the public
// IP that DNS hands out for it.
type EdgeLayout struct {
	Name     string
	HTTP     string
	Admin    string
	PublicIP string
}

// Default is the layout `make run` uses, as the README documents it.
func Default() Layout {
	return Layout{
		Zone:          "example.test.",
		ConsulHTTP:    "127.0.0.1:8500",
		ConsulServer:  8300,
		ConsulSerfLAN: 8301,
		ConsulSerfWAN: 8302,
		Leaders:       []string{"127.0.0.1:8700", "127.0.0.1:8701"},
		DNS:           "127.0.0.1:5353",
		DNSAdmin:      "127.0.0.1:9153",
		Pods: []PodLayout{
			{
				Name: "pod-1", Region: "eu-west", City: "Dublin", Lat: 53.3498, Lon: -6.2603, Capacity: 100,
				Edges: []EdgeLayout{
					{Name: "edge-pod-1-a", HTTP: "127.0.0.11:8080", Admin: "127.0.0.11:9100", PublicIP: "127.0.0.11"},
					{Name: "edge-pod-1-b", HTTP: "127.0.0.12:8080", Admin: "127.0.0.12:9100", PublicIP: "127.0.0.12"},
				},
				Apps: []string{"127.0.0.1:9111", "127.0.0.1:9112", "127.0.0.1:9113"},
			},
			{
				Name: "pod-2", Region: "us-east", City: "New York", Lat: 40.7128, Lon: -74.0060, Capacity: 100,
				Edges: []EdgeLayout{
					{Name: "edge-pod-2-a", HTTP: "127.0.0.21:8080", Admin: "127.0.0.21:9100", PublicIP: "127.0.0.21"},
				},
				Apps: []string{"127.0.0.1:9121", "127.0.0.1:9122"},
			},
		},
	}
}

// appName is the demo app server's name (and Consul service ID).
func appName(pod string, i int) string { return fmt.Sprintf("%s-app-%d", pod, i+1) }

// endpoint is one address the platform will listen on.
type endpoint struct {
	owner   string
	network string // "tcp" or "udp"
	addr    string
}

// endpoints lists every address the layout listens on, so that they can be
// checked before anything starts and after everything stopped.
func (l Layout) endpoints() []endpoint {
	consulHost, _, _ := net.SplitHostPort(l.ConsulHTTP)
	port := func(p int) string { return net.JoinHostPort(consulHost, strconv.Itoa(p)) }
	eps := []endpoint{
		{"consul", "tcp", l.ConsulHTTP},
		{"consul", "tcp", port(l.ConsulServer)},
		{"consul", "tcp", port(l.ConsulSerfLAN)},
		{"consul", "udp", port(l.ConsulSerfLAN)},
		{"consul", "tcp", port(l.ConsulSerfWAN)},
		{"consul", "udp", port(l.ConsulSerfWAN)},
		{"dnsd", "udp", l.DNS},
		{"dnsd", "tcp", l.DNS},
		{"dnsd", "tcp", l.DNSAdmin},
	}
	for i, a := range l.Leaders {
		eps = append(eps, endpoint{fmt.Sprintf("leader-%d", i+1), "tcp", a})
	}
	for _, p := range l.Pods {
		for _, e := range p.Edges {
			eps = append(eps, endpoint{e.Name, "tcp", e.HTTP}, endpoint{e.Name, "tcp", e.Admin})
		}
		for i, a := range p.Apps {
			eps = append(eps, endpoint{appName(p.Name, i), "tcp", a})
		}
	}
	return eps
}
