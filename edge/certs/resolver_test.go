package certs

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// resolver stands for the Internet's DNS as a CA's resolver sees it: the
// zone's names are asked of its authority, dnsd, and answered as dnsd
// answers; a custom domain is answered by its owner's DNS, which points it
// at its pod with a CNAME (<pod>.pods.<zone>, resolved by dnsd in turn).
type resolver struct {
	dnsd   string
	zone   string
	srv    *dns.Server
	addr   string
	mu     sync.Mutex
	cnames map[string]string // custom domain (absolute) → pod
}

// startResolver serves on a free UDP port of 127.0.0.1 until the test ends.
func startResolver(t *testing.T, dnsdAddr string) *resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &resolver{dnsd: dnsdAddr, zone: zone, addr: pc.LocalAddr().String(), cnames: map[string]string{}}
	started := make(chan struct{})
	r.srv = &dns.Server{PacketConn: pc, Handler: r, NotifyStartedFunc: func() { close(started) }}
	go func() { _ = r.srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = r.srv.Shutdown() })
	return r
}

// point makes domain a CNAME of pod's name in the zone.
func (r *resolver) point(domain, pod string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cnames[dns.Fqdn(strings.ToLower(domain))] = pod + ".pods." + r.zone
}

func (r *resolver) ServeDNS(w dns.ResponseWriter, q *dns.Msg) {
	if len(q.Question) != 1 {
		return
	}
	name := strings.ToLower(q.Question[0].Name)
	r.mu.Lock()
	target, custom := r.cnames[name]
	r.mu.Unlock()
	switch {
	case dns.IsSubDomain(r.zone, name):
		if a := r.ask(q.Question[0]); a != nil {
			a.Id = q.Id
			_ = w.WriteMsg(a)
		}
	case custom:
		m := new(dns.Msg)
		m.SetReply(q)
		m.Answer = append(m.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 60}, Target: target})
		if a := r.ask(dns.Question{Name: target, Qtype: q.Question[0].Qtype, Qclass: dns.ClassINET}); a != nil {
			m.Answer = append(m.Answer, a.Answer...)
			m.Rcode = a.Rcode
		}
		_ = w.WriteMsg(m)
	default:
		m := new(dns.Msg)
		m.SetRcode(q, dns.RcodeNameError)
		_ = w.WriteMsg(m)
	}
}

// ask puts question to dnsd, over TCP when the answer is truncated.
func (r *resolver) ask(question dns.Question) *dns.Msg {
	m := new(dns.Msg)
	m.Question = []dns.Question{question}
	m.Id = dns.Id()
	c := &dns.Client{Timeout: 5 * time.Second}
	a, _, err := c.Exchange(m, r.dnsd)
	if err == nil && a.Truncated {
		c.Net = "tcp"
		a, _, err = c.Exchange(m, r.dnsd)
	}
	if err != nil {
		return nil
	}
	return a
}
