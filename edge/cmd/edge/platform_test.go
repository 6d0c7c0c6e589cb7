package main

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/consultest"
)

// podOne starts a Consul agent holding pod-1 with the tenant t1 and one
// passing app server, which answers "ok" to every request after before
// (nil: at once) has run, and returns the agent.
func podOne(t *testing.T, before func(*http.Request)) *consultest.Agent {
	t.Helper()
	agent := consultest.Start(t)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if before != nil {
			before(r)
		}
		_, _ = w.Write([]byte("ok"))
	}))
	t.Cleanup(app.Close)
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(app.URL, "http://"))
	portN, _ := strconv.Atoi(port)
	agent.Put(t, "podedge/pods/pod-1", `{"name":"pod-1","region":"eu","lat":53.3,"lon":-6.2,"capacity":100}`)
	agent.Put(t, "podedge/tenants/t1", `{"name":"t1","pod":"pod-1"}`)
	agent.App(t, "app-1", "pod-1", host, portN, api.HealthPassing)
	return agent
}
