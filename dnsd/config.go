package dnsd

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/podedge/podedge/internal/config"
	"github.com/podedge/podedge/router"
)

// Config is dnsd's configuration, as read from YAML (configs/dnsd.yaml).
// Zero values take the defaults of DefaultConfig when Validate runs.
//
// Names follow the zone-file convention: a name ending in a dot is absolute
// ("mx1.mail.example.net."); a name without one is relative to the zone
// ("ns1" is ns1.<zone>).
type Config struct {
	// Zone is the zone dnsd is authoritative for. Default "example.test.".
	Zone string `yaml:"zone"`
	// Listen is the address served over both UDP and TCP. Default ":53".
	Listen string `yaml:"listen"`
	// Admin is the HTTP address of /metrics and /healthz. Default
	// "127.0.0.1:9153"; "" after Validate never happens.
	Admin string `yaml:"admin"`
	// PIDFile, if set, is written with the process ID once dnsd serves,
	// again by each process an upgrade (SIGUSR2) starts, so that a
	// supervisor follows the new one. Empty: none.
	PIDFile string `yaml:"pid_file"`
	// UDPSockets is how many UDP sockets share Listen with SO_REUSEPORT,
	// each read by its own goroutine. 0 means one per CPU (GOMAXPROCS).
	UDPSockets int `yaml:"udp_sockets"`
	// UDPReadBuffer is the receive buffer of each UDP socket, in bytes,
	// which absorbs bursts while dnsd is descheduled. Default 4 MiB; the
	// kernel caps it at net.core.rmem_max. 0 keeps the system default.
	UDPReadBuffer int `yaml:"udp_read_buffer"`
	// MaxUDPSize caps the EDNS buffer size dnsd honours and advertises.
	// Default 1232 (the DNS flag day 2020 value: no IP fragmentation).
	MaxUDPSize int `yaml:"max_udp_size"`
	// AnswerCap is how many pod addresses one answer holds, 1 to 13.
	// Default 13.
	AnswerCap int `yaml:"answer_cap"`
	// NSID is returned in the EDNS NSID option (RFC 5001) to queries that
	// ask for it. Empty: no NSID.
	NSID string `yaml:"nsid"`
	// TTL holds the TTLs of the records dnsd serves.
	TTL TTLs `yaml:"ttl"`
	// SOA holds the fields of the zone's SOA record.
	SOA SOA `yaml:"soa"`
	// NS lists the zone's name servers. Names in the zone need glue
	// addresses; names outside it must have none. Default: ns1 at
	// 127.0.0.1, fit only for a machine of one's own.
	NS []NameServer `yaml:"ns"`
	// MX lists the mail exchangers of every pod name (a third-party mail
	// provider). Empty: pods have no MX records.
	MX []MailExchanger `yaml:"mx"`
	// TCP bounds the TCP listener.
	TCP TCP `yaml:"tcp"`
	// ACMEChallenges configures the answers to ACME DNS-01 challenges
	// (challenges.go).
	ACMEChallenges ACMEChallenges `yaml:"acme_challenges"`
	// RRL is response rate limiting over UDP; off while rate_limit is 0.
	RRL RRL `yaml:"rrl"`
	// Cookies are DNS cookies (RFC 7873, 9018).
	Cookies Cookies `yaml:"cookies"`
	// Transfer serves the zone to secondaries: AXFR, IXFR, NOTIFY.
	Transfer Transfer `yaml:"transfer"`
	// DNSSEC signs the zone (dnssec.go).
	DNSSEC DNSSEC `yaml:"dnssec"`
	// Consul and Log are the sections every podedge binary shares.
	Consul config.Consul `yaml:"consul"`
	Log    config.Log    `yaml:"log"`
}

// TTLs are the TTLs of the records dnsd serves, in whole seconds.
type TTLs struct {
	// Pod is the TTL of pod A and AAAA records. Default 30s: health
	// changes reach resolvers that quickly.
	Pod time.Duration `yaml:"pod"`
	// Tenant is the TTL of tenant CNAME records. Default 300s.
	Tenant time.Duration `yaml:"tenant"`
	// MX is the TTL of pod MX records. Default 1h.
	MX time.Duration `yaml:"mx"`
	// Apex is the TTL of the SOA and NS records and of the name servers'
	// addresses. Default 1h.
	Apex time.Duration `yaml:"apex"`
}

// SOA holds the fields of the zone's SOA record. The serial is not
// configured: it follows the data (see README).
type SOA struct {
	// MName is the primary name server. Default: the first NS name.
	MName string `yaml:"mname"`
	// RName is the mailbox of the zone's administrator, with its "@" as a
	// dot. Default "hostmaster" (hostmaster.<zone>).
	RName string `yaml:"rname"`
	// Refresh, Retry and Expire are for secondaries. Defaults 1h, 10m, 2w.
	Refresh time.Duration `yaml:"refresh"`
	Retry   time.Duration `yaml:"retry"`
	Expire  time.Duration `yaml:"expire"`
	// Minimum is the negative-caching TTL (RFC 2308): how long resolvers
	// remember that a name does not exist. Default 30s, so that a new
	// tenant resolves soon after signup even where it was asked before.
	Minimum time.Duration `yaml:"minimum"`
}

// NameServer is one NS record of the zone and, for a name in the zone, its
// glue addresses.
type NameServer struct {
	Name      string   `yaml:"name"`
	Addresses []string `yaml:"addresses"`
}

// MailExchanger is one MX record of every pod name.
type MailExchanger struct {
	Priority int    `yaml:"priority"`
	Host     string `yaml:"host"`
}

// TCP bounds the TCP listener.
type TCP struct {
	// IdleTimeout closes a connection that sends no query for this long.
	// Default 10s (RFC 7766 suggests seconds, not minutes).
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MaxConnections caps open connections; more are closed at once.
	// Default 1024.
	MaxConnections int `yaml:"max_connections"`
}

// RRL configures response rate limiting, with the keys and defaults of
// Knot DNS 3.2's mod-rrl.
type RRL struct {
	// RateLimit is the responses a second allowed to one flow (a client
	// network, a class of answer, a name); a flow may take four seconds'
	// worth at once. 0 turns rate limiting off, the default (Knot requires
	// a value; its documentation's example is 200).
	RateLimit int `yaml:"rate_limit"`
	// Slip: one answer over the rate in Slip is sent truncated (TC, no
	// records), the others dropped. 0 drops them all, 1 (the default)
	// truncates them all.
	Slip int `yaml:"slip"`
	// TableSize is the number of buckets (8 bytes each). Default 393241.
	TableSize int `yaml:"table_size"`
	// Whitelist lists addresses and prefixes never limited.
	Whitelist []string `yaml:"whitelist"`
}

// Cookies configures DNS cookies.
type Cookies struct {
	// Enabled answers a query's client cookie with a server cookie;
	// a client that sends it back is exempt from rate limiting. Default
	// true.
	Enabled bool `yaml:"enabled"`
	// Secret keys the server cookies: 16 bytes in hex. Servers sharing an
	// address (anycast) need the same one. Empty: a random secret at
	// start, so cookies given before a restart are not recognised.
	Secret string `yaml:"secret"`
}

// Transfer configures zone transfers to secondaries (a DNS provider
// serving the zone with dnsd as its hidden primary).
type Transfer struct {
	// Allow lists the addresses and prefixes that may transfer the zone
	// (AXFR and IXFR, over TCP). Empty, the default: transfers are
	// refused.
	Allow []string `yaml:"allow"`
	// Notify lists the secondaries (host:port) sent a NOTIFY when the
	// serial changes, at most one a second each.
	Notify []string `yaml:"notify"`
	// Journal is how many zone versions are kept to answer IXFR with
	// differences; older serials get the whole zone. Default 100; 0
	// keeps none.
	Journal int `yaml:"journal"`
	// TSIG, when its name is set, is the key every transfer must be
	// signed with; NOTIFY and the answers to signed queries are signed
	// with it.
	TSIG TSIGKey `yaml:"tsig"`
}

// TSIGKey is a TSIG key (RFC 8945).
type TSIGKey struct {
	// Name is the key's name, as the secondary knows it ("xfr.example.").
	Name string `yaml:"name"`
	// Algorithm is hmac-sha256 (the default), hmac-sha384 or hmac-sha512.
	Algorithm string `yaml:"algorithm"`
	// Secret is the key, in base64.
	Secret string `yaml:"secret"`
}

// DefaultConfig returns the defaults that a file overrides key by key.
// Defaults that depend on the zone (NS, SOA names) are filled in by
// Validate, after flags may have changed the zone.
func DefaultConfig() Config {
	return Config{
		Zone:          "example.test.",
		Listen:        ":53",
		Admin:         "127.0.0.1:9153",
		MaxUDPSize:    1232,
		UDPReadBuffer: 4 << 20,
		AnswerCap:     13,
		TTL: TTLs{
			Pod:    30 * time.Second,
			Tenant: 300 * time.Second,
			MX:     time.Hour,
			Apex:   time.Hour,
		},
		SOA: SOA{
			RName:   "hostmaster",
			Refresh: time.Hour,
			Retry:   10 * time.Minute,
			Expire:  14 * 24 * time.Hour,
			Minimum: 30 * time.Second,
		},
		TCP:      TCP{IdleTimeout: 10 * time.Second, MaxConnections: 1024},
		RRL:      RRL{Slip: 1, TableSize: 393241},
		Cookies:  Cookies{Enabled: true},
		Transfer: Transfer{Journal: 100, TSIG: TSIGKey{Algorithm: "hmac-sha256"}},
		DNSSEC: DNSSEC{
			Generate:          true,
			Algorithm:         "ecdsap256sha256",
			SignatureLifetime: 14 * 24 * time.Hour,
			Refresh:           7 * 24 * time.Hour,
		},
		Consul: config.DefaultConsul(),
		Log:    config.DefaultLog(),

		ACMEChallenges: DefaultACMEChallenges(),
	}
}

// zoneData is the validated, normalised form of the DNS part of a Config:
// absolute lower-case names, parsed addresses, TTLs in seconds.
type zoneData struct {
	zone      string // "example.test."
	answerCap int
	maxUDP    int
	nsid      []byte

	podTTL, tenantTTL, mxTTL, apexTTL uint32

	mname, rname                    string
	refresh, retry, expire, minimum uint32
	ns                              []nameServer
	mx                              []mailExchanger
}

type nameServer struct {
	name   string
	inZone bool
	addrs  []netip.Addr
}

type mailExchanger struct {
	pref uint16
	host string
}

// Validate fills in the defaults that depend on the zone and checks every
// value, returning an error that names the first bad key.
func (c *Config) Validate() error {
	_, err := c.zoneData()
	return err
}

// zoneData validates c and returns its DNS part normalised.
func (c *Config) zoneData() (*zoneData, error) {
	zone := strings.ToLower(strings.TrimSpace(c.Zone))
	if zone == "" {
		return nil, errors.New("zone: must not be empty")
	}
	zone = dns.Fqdn(zone)
	if zone == "." {
		return nil, errors.New("zone: must not be the root")
	}
	for _, l := range strings.Split(zone[:len(zone)-1], ".") {
		if !router.ValidLabel(l) {
			return nil, fmt.Errorf("zone: %q has an invalid label %q", zone, l)
		}
	}
	c.Zone = zone
	if err := checkHostPort("listen", c.Listen); err != nil {
		return nil, err
	}
	if err := checkHostPort("admin", c.Admin); err != nil {
		return nil, err
	}
	if c.UDPSockets < 0 || c.UDPSockets > 256 {
		return nil, fmt.Errorf("udp_sockets: %d is outside 0 (one per CPU) to 256", c.UDPSockets)
	}
	if c.UDPReadBuffer < 0 || c.UDPReadBuffer > 1<<30 {
		return nil, fmt.Errorf("udp_read_buffer: %d is outside 0 (system default) to 1 GiB", c.UDPReadBuffer)
	}
	if c.MaxUDPSize < 512 || c.MaxUDPSize > 65535 {
		return nil, fmt.Errorf("max_udp_size: %d is outside 512 to 65535", c.MaxUDPSize)
	}
	if c.AnswerCap < 1 || c.AnswerCap > 13 {
		return nil, fmt.Errorf("answer_cap: %d is outside 1 to 13", c.AnswerCap)
	}
	if len(c.NSID) > 128 {
		return nil, fmt.Errorf("nsid: %d bytes is longer than 128", len(c.NSID))
	}
	if c.TCP.IdleTimeout <= 0 {
		return nil, fmt.Errorf("tcp.idle_timeout: %s must be positive", c.TCP.IdleTimeout)
	}
	if c.TCP.MaxConnections < 1 {
		return nil, fmt.Errorf("tcp.max_connections: %d must be at least 1", c.TCP.MaxConnections)
	}
	if err := c.ACMEChallenges.validate(); err != nil {
		return nil, err
	}
	if c.RRL.RateLimit < 0 || c.RRL.RateLimit > maxRateLimit {
		return nil, fmt.Errorf("rrl.rate_limit: %d is outside 0 (off) to %d", c.RRL.RateLimit, maxRateLimit)
	}
	if c.RRL.Slip < 0 || c.RRL.Slip > 100 {
		return nil, fmt.Errorf("rrl.slip: %d is outside 0 to 100", c.RRL.Slip)
	}
	if c.RRL.TableSize < 1 || c.RRL.TableSize > 1<<28 {
		return nil, fmt.Errorf("rrl.table_size: %d is outside 1 to %d", c.RRL.TableSize, 1<<28)
	}
	for i, w := range c.RRL.Whitelist {
		if _, err := parsePrefix(w); err != nil {
			return nil, fmt.Errorf("rrl.whitelist[%d]: %q is not an address or a prefix", i, w)
		}
	}
	if _, err := newCookieJar(c.Cookies.Secret, nil); err != nil {
		return nil, fmt.Errorf("cookies.secret: %w", err)
	}
	if err := c.Transfer.validate(); err != nil {
		return nil, err
	}
	if err := c.DNSSEC.validate(); err != nil {
		return nil, err
	}
	if err := c.Consul.Validate(); err != nil {
		return nil, err
	}
	if _, err := c.Log.Logger(nil); err != nil {
		return nil, err
	}

	d := &zoneData{zone: zone, answerCap: c.AnswerCap, maxUDP: c.MaxUDPSize, nsid: []byte(c.NSID)}
	for _, t := range []struct {
		key string
		v   time.Duration
		dst *uint32
	}{
		{"ttl.pod", c.TTL.Pod, &d.podTTL},
		{"ttl.tenant", c.TTL.Tenant, &d.tenantTTL},
		{"ttl.mx", c.TTL.MX, &d.mxTTL},
		{"ttl.apex", c.TTL.Apex, &d.apexTTL},
		{"soa.refresh", c.SOA.Refresh, &d.refresh},
		{"soa.retry", c.SOA.Retry, &d.retry},
		{"soa.expire", c.SOA.Expire, &d.expire},
		{"soa.minimum", c.SOA.Minimum, &d.minimum},
	} {
		s, err := seconds(t.v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", t.key, err)
		}
		*t.dst = s
	}

	if len(c.NS) == 0 {
		c.NS = []NameServer{{Name: "ns1", Addresses: []string{"127.0.0.1"}}}
	}
	seen := map[string]bool{}
	for i, ns := range c.NS {
		key := fmt.Sprintf("ns[%d]", i)
		name, err := absName(ns.Name, zone)
		if err != nil {
			return nil, fmt.Errorf("%s.name: %w", key, err)
		}
		if seen[name] {
			return nil, fmt.Errorf("%s.name: %s is listed twice", key, name)
		}
		seen[name] = true
		s := nameServer{name: name, inZone: dns.IsSubDomain(zone, name)}
		if name == zone {
			return nil, fmt.Errorf("%s.name: %s is the zone apex; name servers need a name of their own", key, name)
		}
		if s.inZone && len(ns.Addresses) == 0 {
			return nil, fmt.Errorf("%s.addresses: %s is in the zone, so it needs glue addresses", key, name)
		}
		if !s.inZone && len(ns.Addresses) > 0 {
			return nil, fmt.Errorf("%s.addresses: %s is outside the zone %s; glue is only for names in it", key, name, zone)
		}
		for j, a := range ns.Addresses {
			ip, err := netip.ParseAddr(a)
			if err != nil || ip.Zone() != "" {
				return nil, fmt.Errorf("%s.addresses[%d]: %q is not an IP address", key, j, a)
			}
			s.addrs = append(s.addrs, ip.Unmap())
		}
		if s.inZone {
			if err := checkInZoneHost(name, zone); err != nil {
				return nil, fmt.Errorf("%s.name: %w", key, err)
			}
		}
		d.ns = append(d.ns, s)
	}

	mname := c.SOA.MName
	if mname == "" {
		mname = d.ns[0].name
	}
	var err error
	if d.mname, err = absName(mname, zone); err != nil {
		return nil, fmt.Errorf("soa.mname: %w", err)
	}
	if d.rname, err = absName(c.SOA.RName, zone); err != nil {
		return nil, fmt.Errorf("soa.rname: %w", err)
	}

	for i, mx := range c.MX {
		key := fmt.Sprintf("mx[%d]", i)
		if mx.Priority < 0 || mx.Priority > 65535 {
			return nil, fmt.Errorf("%s.priority: %d is outside 0 to 65535", key, mx.Priority)
		}
		host, err := absName(mx.Host, zone)
		if err != nil {
			return nil, fmt.Errorf("%s.host: %w", key, err)
		}
		d.mx = append(d.mx, mailExchanger{pref: uint16(mx.Priority), host: host})
	}
	return d, nil
}

// checkInZoneHost rejects in-zone name server names that would collide
// with the names dnsd generates: pods.<zone> and below.
func checkInZoneHost(name, zone string) error {
	rel := strings.TrimSuffix(name, "."+zone)
	labels := strings.Split(rel, ".")
	if labels[len(labels)-1] == podsLabel {
		return fmt.Errorf("%s is under %s.%s, where pod names live", name, podsLabel, zone)
	}
	return nil
}

// absName turns a configured name into an absolute lower-case name: names
// with a trailing dot are absolute, others are relative to zone.
func absName(name, zone string) (string, error) {
	name = strings.ToLower(strings.TrimSpace(name))
	switch {
	case name == "":
		return "", errors.New("must not be empty")
	case name == "@":
		return zone, nil
	case !strings.HasSuffix(name, "."):
		name += "." + zone
	}
	if _, ok := dns.IsDomainName(name); !ok || name == "." || len(name) > 254 {
		return "", fmt.Errorf("%q is not a domain name", name)
	}
	for _, l := range strings.Split(name[:len(name)-1], ".") {
		if !hostLabel(l) {
			return "", fmt.Errorf("%q is not a domain name: label %q", name, l)
		}
	}
	return name, nil
}

// hostLabel accepts the labels of host names (RFC 1123) and underscores,
// which service names use.
func hostLabel(l string) bool {
	if l == "" || len(l) > 63 {
		return false
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// seconds converts a TTL or SOA timer to whole seconds that fit a DNS
// 32-bit field (RFC 2181 section 8 caps TTLs at 2^31-1).
func seconds(d time.Duration) (uint32, error) {
	switch {
	case d < 0:
		return 0, fmt.Errorf("%s is negative", d)
	case d%time.Second != 0:
		return 0, fmt.Errorf("%s is not a whole number of seconds", d)
	case d > (1<<31-1)*time.Second:
		return 0, fmt.Errorf("%s is longer than 2^31-1 seconds", d)
	}
	return uint32(d / time.Second), nil
}

func checkHostPort(key, addr string) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("%s: %q is not host:port: %w", key, addr, err)
	}
	return nil
}

// udpSockets is the number of UDP sockets to open.
func (c *Config) udpSockets() int {
	if c.UDPSockets > 0 {
		return c.UDPSockets
	}
	return runtime.GOMAXPROCS(0)
}

// validate checks the transfer section.
func (t *Transfer) validate() error {
	for i, a := range t.Allow {
		if _, err := parsePrefix(a); err != nil {
			return fmt.Errorf("transfer.allow[%d]: %q is not an address or a prefix", i, a)
		}
	}
	for i, n := range t.Notify {
		if _, err := netip.ParseAddrPort(n); err != nil {
			return fmt.Errorf("transfer.notify[%d]: %q is not ip:port", i, n)
		}
	}
	if t.Journal < 0 || t.Journal > 10000 {
		return fmt.Errorf("transfer.journal: %d is outside 0 to 10000", t.Journal)
	}
	if t.TSIG.Name == "" {
		return nil
	}
	if _, ok := dns.IsDomainName(t.TSIG.Name); !ok {
		return fmt.Errorf("transfer.tsig.name: %q is not a domain name", t.TSIG.Name)
	}
	if _, ok := tsigAlgorithms[strings.ToLower(t.TSIG.Algorithm)]; !ok {
		return fmt.Errorf("transfer.tsig.algorithm: %q is not hmac-sha256, hmac-sha384 or hmac-sha512", t.TSIG.Algorithm)
	}
	if b, err := base64.StdEncoding.DecodeString(t.TSIG.Secret); err != nil || len(b) < 16 {
		return fmt.Errorf("transfer.tsig.secret: must be at least 16 bytes in base64")
	}
	return nil
}
