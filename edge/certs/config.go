package certs

import (
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// Challenge types the Manager can answer: TLS-ALPN-01 and HTTP-01 for
// names ordered on demand, DNS-01 (through dnsd) for the zone's
// certificate.
const (
	ChallengeTLSALPN = "tls-alpn-01"
	ChallengeHTTP    = "http-01"
	ChallengeDNS     = "dns-01"
)

// LetsEncrypt is the default ACME directory: Let's Encrypt production.
const LetsEncrypt = "https://acme-v02.api.letsencrypt.org/directory"

// Config configures a Manager. Zero fields take the defaults documented on
// each; Validate names the first bad one by its configuration key.
type Config struct {
	// Consul is the client of the local Consul agent. Required.
	Consul *api.Client
	// Prefix is podedge's KV prefix. Certificates, the ACME account key,
	// challenges, locks and failure records live under <prefix>certs/; the
	// session ticket keys at <prefix>tls/ticket-keys. Default "podedge/".
	Prefix string
	// Pod is the edge's pod. Certificates of its tenants are loaded into
	// memory ahead of their first handshake; others on first use. Empty
	// loads every certificate on first use.
	Pod string
	// Holder names this edge in lock values and failure records (its
	// Consul service ID, say). Default: the host name.
	Holder string
	// Zone is the DNS zone tenants live in. One certificate for *.<zone>
	// and <zone>, ordered by ACME DNS-01 (answered by dnsd) and shared by
	// every edge, serves every name one label below it: no tenant
	// hostname is ordered on its own. Default "example.test.".
	Zone string

	// Directory is the ACME directory URL. Default LetsEncrypt.
	Directory string
	// CAFile is a PEM file of roots trusted, besides the system's, for the
	// ACME server's own HTTPS (a test CA such as Pebble). Empty: system
	// roots only.
	CAFile string
	// Email is the ACME account's contact address. Empty: none.
	Email string
	// Challenges are the challenge types tried, in order; when one fails a
	// new order tries the next. Default tls-alpn-01 then http-01.
	Challenges []string
	// RenewBefore is how long before it expires a certificate is renewed.
	// Zero means a third of its lifetime, at most 30 days. It is never more
	// than half the lifetime, so that a renewed certificate is not due at
	// once.
	RenewBefore time.Duration
	// OrderTimeout bounds one issuance: waiting for the name's lock, the
	// ACME order and storing the result. Default 3m.
	OrderTimeout time.Duration
	// HandshakeTimeout bounds how long a TLS handshake waits for a
	// certificate that is being issued; then the handshake fails and the
	// issuance goes on for the next one. Default 8s: the edge's
	// client_header timeout (10s) bounds the whole handshake.
	HandshakeTimeout time.Duration
	// BackoffMin and BackoffMax bound the wait after a failed issuance,
	// which doubles with each failure in a row. Defaults 1m and 1h.
	BackoffMin time.Duration
	BackoffMax time.Duration
	// DNS01Nameservers are the name servers (host:port: the zone's dnsd)
	// that must answer a DNS-01 order's tokens before the CA is told to
	// look. Empty: the zone's NS records, found through the system
	// resolver, on port 53; if it finds none, nothing is checked.
	DNS01Nameservers []string
	// DNS01Timeout bounds that wait; an order whose tokens are not served
	// by then fails without the CA being asked. Default 1m.
	DNS01Timeout time.Duration
	// RenewCheck is how often certificates in memory are checked for
	// renewal. Default 1m.
	RenewCheck time.Duration

	// Certificates are operators' certificate and key files, served by
	// SNI before anything from ACME. More come from Consul KV, under
	// <prefix>certs/operator/.
	Certificates []CertFile
	// CertificateCheck is how often the files are read again to find out
	// whether they changed. Default 10s.
	CertificateCheck time.Duration

	// Redirect answers plain-HTTP requests for known hosts with a 308 to
	// https (ACME challenges excepted). The zero value does not redirect;
	// the edge's tls.redirect defaults to true.
	Redirect bool
	// RedirectPort is the port of redirect locations; 0 and 443 leave it
	// out.
	RedirectPort int

	// TicketRotation is how often the shared session ticket key is
	// replaced. Default 12h.
	TicketRotation time.Duration
	// TicketKeys is how many keys are kept: the newest encrypts tickets,
	// all decrypt them, so a ticket lives up to TicketKeys×TicketRotation.
	// Default 3.
	TicketKeys int

	// Logger receives the Manager's logs. Nil means slog.Default().
	Logger *slog.Logger
}

// CertFile is an operator's certificate: the chain, leaf first, and its
// private key, each a PEM file (they may be the same file).
type CertFile struct {
	Cert string
	Key  string
}

// Defaults of Config.
const (
	DefaultZone             = "example.test."
	DefaultDNS01Timeout     = time.Minute
	DefaultCertificateCheck = 10 * time.Second
	DefaultOrderTimeout     = 3 * time.Minute
	DefaultHandshakeTimeout = 8 * time.Second
	DefaultBackoffMin       = time.Minute
	DefaultBackoffMax       = time.Hour
	DefaultRenewCheck       = time.Minute
	DefaultTicketRotation   = 12 * time.Hour
	DefaultTicketKeys       = 3
)

// setDefaults fills zero fields.
func (c *Config) setDefaults() {
	if c.Prefix == "" {
		c.Prefix = "podedge/"
	}
	if !strings.HasSuffix(c.Prefix, "/") {
		c.Prefix += "/"
	}
	if c.Holder == "" {
		c.Holder, _ = os.Hostname()
	}
	if c.Zone == "" {
		c.Zone = DefaultZone
	}
	if c.Directory == "" {
		c.Directory = LetsEncrypt
	}
	if len(c.Challenges) == 0 {
		c.Challenges = []string{ChallengeTLSALPN, ChallengeHTTP}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.OrderTimeout, DefaultOrderTimeout)
	def(&c.HandshakeTimeout, DefaultHandshakeTimeout)
	def(&c.BackoffMin, DefaultBackoffMin)
	def(&c.BackoffMax, DefaultBackoffMax)
	def(&c.RenewCheck, DefaultRenewCheck)
	def(&c.TicketRotation, DefaultTicketRotation)
	def(&c.DNS01Timeout, DefaultDNS01Timeout)
	def(&c.CertificateCheck, DefaultCertificateCheck)
	if c.TicketKeys == 0 {
		c.TicketKeys = DefaultTicketKeys
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate fills the defaults and checks every field but Consul, naming the
// first bad one by its key in the edge's configuration file. CAFile is read
// by New, not here: it is needed only when TLS is on.
func (c *Config) Validate() error {
	c.setDefaults()
	zone, err := normalZone(c.Zone)
	if err != nil {
		return fmt.Errorf("zone: %w", err)
	}
	c.Zone = zone
	if !strings.HasPrefix(c.Directory, "https://") && !strings.HasPrefix(c.Directory, "http://") {
		return fmt.Errorf("acme.directory: %q is not an http(s) URL", c.Directory)
	}
	if strings.ContainsAny(c.Email, " \t\r\n") || c.Email != "" && !strings.Contains(c.Email, "@") {
		return fmt.Errorf("acme.email: %q is not an email address", c.Email)
	}
	seen := map[string]bool{}
	for _, ch := range c.Challenges {
		if ch != ChallengeTLSALPN && ch != ChallengeHTTP {
			return fmt.Errorf("acme.challenges: %q is not %s or %s", ch, ChallengeTLSALPN, ChallengeHTTP)
		}
		if seen[ch] {
			return fmt.Errorf("acme.challenges: %q is listed twice", ch)
		}
		seen[ch] = true
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{
		{"acme.renew_before", c.RenewBefore}, {"acme.order_timeout", c.OrderTimeout},
		{"tls.handshake_timeout", c.HandshakeTimeout}, {"acme.backoff_min", c.BackoffMin},
		{"acme.backoff_max", c.BackoffMax}, {"RenewCheck", c.RenewCheck},
		{"tls.ticket_rotation", c.TicketRotation}, {"acme.dns01_timeout", c.DNS01Timeout},
		{"tls.certificate_check", c.CertificateCheck},
	} {
		if d.v < 0 {
			return fmt.Errorf("%s: %s is negative", d.key, d.v)
		}
	}
	for i, ns := range c.DNS01Nameservers {
		if _, port, err := net.SplitHostPort(ns); err != nil || port == "" {
			return fmt.Errorf("acme.dns01_nameservers[%d]: %q is not host:port", i, ns)
		}
	}
	for i, f := range c.Certificates {
		switch {
		case f.Cert == "":
			return fmt.Errorf("tls.certificates[%d].cert: must name the certificate's PEM file", i)
		case f.Key == "":
			return fmt.Errorf("tls.certificates[%d].key: must name the private key's PEM file", i)
		}
	}
	switch {
	case c.DNS01Timeout >= c.OrderTimeout:
		return fmt.Errorf("acme.dns01_timeout: %s must be shorter than acme.order_timeout (%s), which bounds the whole order", c.DNS01Timeout, c.OrderTimeout)
	case c.BackoffMax < c.BackoffMin:
		return fmt.Errorf("acme.backoff_max: %s is shorter than acme.backoff_min %s", c.BackoffMax, c.BackoffMin)
	case c.CertificateCheck < 10*time.Millisecond:
		return fmt.Errorf("tls.certificate_check: must be at least 10ms, got %s", c.CertificateCheck)
	case c.TicketRotation < time.Second:
		return fmt.Errorf("tls.ticket_rotation: must be at least 1s, got %s", c.TicketRotation)
	case c.TicketKeys < 1 || c.TicketKeys > 16:
		return fmt.Errorf("tls.ticket_keys: %d is outside 1 to 16", c.TicketKeys)
	case c.RedirectPort < 0 || c.RedirectPort > 65535:
		return fmt.Errorf("tls.redirect_port: %d is not a port", c.RedirectPort)
	}
	return nil
}

// normalZone is zone in lower case with its trailing dot, or why it is not
// a DNS name.
func normalZone(zone string) (string, error) {
	z := strings.ToLower(strings.TrimSuffix(zone, "."))
	if z == "" || len(z) > maxNameLen-2 {
		return "", fmt.Errorf("%q is not a DNS zone", zone)
	}
	for _, l := range strings.Split(z, ".") {
		if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' || strings.Trim(l, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
			return "", fmt.Errorf("%q is not a DNS zone: label %q", zone, l)
		}
	}
	return z + ".", nil
}

// rootsFor is the system pool with the certificates of file added; without
// a file, nil (the system roots).
func rootsFor(file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	if !pool.AppendCertsFromPEM(raw) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}
