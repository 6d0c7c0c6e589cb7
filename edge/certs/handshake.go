package certs

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/crypto/acme"
)

// maxNameLen is the longest DNS name (RFC 1035 section 2.3.4).
const maxNameLen = 253

var errNoSNI = errors.New("the client sent no server name (SNI); certificates are served by name only")

// newTLSConfig is the HTTPS listener's configuration: TLS 1.2 and 1.3 only;
// for TLS 1.2, ECDHE key exchange with AEAD ciphers only (TLS 1.3 has
// nothing else); HTTP/1.1 and acme-tls/1 for TLS-ALPN-01 challenges. The
// edge puts h2 first when it serves HTTP/2 (edge.Options.TLSConfig).
func newTLSConfig(get func(*tls.ClientHelloInfo) (*tls.Certificate, error)) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		MaxVersion: tls.VersionTLS13,
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
		NextProtos:     []string{"http/1.1", acme.ALPNProto},
		GetCertificate: get,
	}
}

// getCertificate is the handshake's tls.Config.GetCertificate. It chooses
// by SNI: an operator's certificate naming the name, then one whose
// wildcard covers it; then, for a name the router knows (the host policy),
// the zone's certificate for the zone's apex and every name one label
// below it, or else the name's own, held in memory. On that path it
// neither allocates nor waits. Otherwise the certificate is loaded from
// Consul or ordered (the zone's, or the name's: a custom domain), and the
// handshake waits for it at most HandshakeTimeout. A name the router does
// not know and no operator's certificate covers fails at once and orders
// nothing.
func (m *Manager) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := hello.ServerName
	if len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == acme.ALPNProto {
		cert, err := m.challenges.tokenCert(name)
		if err != nil {
			m.metrics.handshakeFailed(reasonChallenge)
			return nil, err
		}
		return cert, nil
	}
	name = strings.TrimSuffix(name, ".")
	if name == "" {
		m.metrics.handshakeFailed(reasonNoSNI)
		return nil, errNoSNI
	}
	if len(name) > maxNameLen {
		m.metrics.handshakeFailed(reasonUnknown)
		return nil, errors.New("the server name is longer than a DNS name")
	}
	var buf [maxNameLen]byte
	lname := lowerInto(&buf, name)
	now := time.Now()
	if cert := m.operators.lookup(lname, now); cert != nil {
		return cert, nil
	}
	if !m.known(name) {
		m.metrics.handshakeFailed(reasonUnknown)
		return nil, fmt.Errorf("no tenant or custom domain is named %q", name)
	}
	if m.zone.covers(lname) {
		if e := m.mem.get(m.zone.name); e != nil && now.Before(e.notAfter) {
			return e.cert, nil
		}
		return m.awaitCounted(m.zone.name)
	}
	if e := m.mem.snapshot()[string(lname)]; e != nil && now.Before(e.notAfter) {
		return e.cert, nil
	}
	return m.awaitCounted(string(lname))
}

// known reports whether the router's snapshot routes name: the host policy.
func (m *Manager) known(name string) bool {
	s := m.snap.Load()
	if s == nil {
		return false
	}
	_, ok := s.LookupString(name)
	return ok
}

// lowerInto copies name into buf in lower case; name is at most
// maxNameLen long.
func lowerInto(buf *[maxNameLen]byte, name string) []byte {
	n := copy(buf[:], name)
	for i := 0; i < n; i++ {
		if c := buf[i]; c >= 'A' && c <= 'Z' {
			buf[i] = c + ('a' - 'A')
		}
	}
	return buf[:n]
}

// awaitCounted is await, counting a failure by its reason.
func (m *Manager) awaitCounted(name string) (*tls.Certificate, error) {
	cert, err := m.await(name)
	if err != nil {
		m.metrics.handshakeFailed(reasonOf(err))
		return nil, err
	}
	return cert, nil
}

// await has the certificate of name loaded or issued, waiting at most
// HandshakeTimeout; the issuance goes on without the handshake.
func (m *Manager) await(name string) (*tls.Certificate, error) {
	f, err := m.begin(name, nil)
	if err != nil {
		return nil, err
	}
	t := time.NewTimer(m.cfg.HandshakeTimeout)
	defer t.Stop()
	select {
	case <-f.done:
		if f.err != nil {
			return nil, f.err
		}
		return f.entry.cert, nil
	case <-t.C:
		return nil, failWith(reasonPending, fmt.Errorf("certificate for %q is being issued; try again shortly", name))
	}
}
