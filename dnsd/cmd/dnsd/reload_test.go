package main

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"
	"github.com/podedge/podedge/internal/consultest"
	"github.com/podedge/podedge/internal/reload/reloadtest"
)

// A real dnsd reloads on SIGHUP: a new pod TTL is in the answers that
// follow, over UDP and over a TCP connection opened before the reload,
// under a greater serial; a change of the listener and a file that does
// not parse are refused and the running TTL stays.
func TestSIGHUPReloadsTheConfiguration(t *testing.T) {
	agent := consultest.Start(t)
	agent.Put(t, "podedge/pods/pod-1", `{"name":"pod-1","region":"eu","lat":50,"lon":4,"capacity":10}`)
	agent.Edge(t, "e1", "pod-1", "127.0.0.1", 8080, "192.0.2.1", api.HealthPassing)
	ports := consultest.FreePorts(t, 3)
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	admin := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))
	metrics := "http://" + admin + "/metrics"
	file := filepath.Join(t.TempDir(), "dnsd.yaml")
	conf := func(listen, podTTL string) string {
		return fmt.Sprintf("zone: platform.test.\nlisten: %s\nadmin: %s\nconsul:\n  address: %s\nttl:\n  pod: %s\n",
			listen, admin, agent.HTTPAddr, podTTL)
	}
	reloadtest.WriteFile(t, file, conf(listen, "30s"))
	dnsd := reloadtest.Start(t, build(t), "-config", file)
	dnsd.Notified(t, "READY=1")

	var tcp *dns.Conn
	consultest.WaitFor(t, 20*time.Second, "dnsd to accept TCP", func() bool {
		c, err := dns.DialTimeout("tcp", listen, 5*time.Second)
		tcp = c
		return err == nil
	})
	defer tcp.Close()
	query := func(name string, qtype uint16) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		r, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, listen)
		if err != nil {
			return nil
		}
		return r
	}
	ttl := func() uint32 {
		if r := query("pod-1.pods.platform.test.", dns.TypeA); r != nil && len(r.Answer) == 1 {
			return r.Answer[0].Header().Ttl
		}
		return 0
	}
	overTCP := func(when string) uint32 {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion("pod-1.pods.platform.test.", dns.TypeA)
		_ = tcp.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tcp.WriteMsg(m); err != nil {
			t.Fatalf("%s: TCP write: %v", when, err)
		}
		r, err := tcp.ReadMsg()
		if err != nil || len(r.Answer) != 1 {
			t.Fatalf("%s: TCP answer %v, %v", when, r, err)
		}
		return r.Answer[0].Header().Ttl
	}
	serial := func() uint32 {
		if r := query("platform.test.", dns.TypeSOA); r != nil && len(r.Answer) == 1 {
			return r.Answer[0].(*dns.SOA).Serial
		}
		return 0
	}
	consultest.WaitFor(t, 20*time.Second, "an answer for pod-1", func() bool { return ttl() == 30 })
	if got := overTCP("before reloading"); got != 30 {
		t.Fatalf("TCP TTL %d, want 30", got)
	}
	before := serial()

	reloadtest.WriteFile(t, file, conf(listen, "7s"))
	dnsd.Reload(t, metrics, "dnsd", "ok", 1)
	dnsd.Notified(t, "RELOADING=1\nMONOTONIC_USEC=")
	dnsd.Notified(t, "READY=1")
	if got := ttl(); got != 7 {
		t.Fatalf("UDP TTL after reloading ttl.pod 7s: %d", got)
	}
	if got := overTCP("after a reload"); got != 7 {
		t.Fatalf("TCP TTL after reloading ttl.pod 7s: %d", got)
	}
	if after := serial(); int32(after-before) <= 0 {
		t.Errorf("serial %d after the reload, want greater than %d", after, before)
	}

	reloadtest.WriteFile(t, file, conf(net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[2])), "60s"))
	dnsd.Reload(t, metrics, "dnsd", "refused", 1)
	if !strings.Contains(dnsd.Log.String(), "listen: cannot change without a restart") {
		t.Errorf("the refusal does not name the key:\n%s", dnsd.Log.String())
	}
	reloadtest.WriteFile(t, file, "ttl: {pod: soon}\n")
	dnsd.Reload(t, metrics, "dnsd", "refused", 2)
	if !strings.Contains(dnsd.Log.String(), "ttl.pod") {
		t.Errorf("the refusal of a bad file does not name the key:\n%s", dnsd.Log.String())
	}
	if got := ttl(); got != 7 {
		t.Fatalf("UDP TTL after refused reloads: %d, want the running 7", got)
	}
	if got := overTCP("after refused reloads"); got != 7 {
		t.Fatalf("TCP TTL after refused reloads: %d, want 7", got)
	}
}
