package edge

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/podedge/podedge/internal/config"
	"github.com/podedge/podedge/router"
)

// Config is the edge's configuration file (configs/edge.yaml documents every
// key). DefaultConfig holds the defaults; Validate names the first bad key.
type Config struct {
	Consul config.Consul `yaml:"consul"`
	Log    config.Log    `yaml:"log"`

	// Zone is the DNS zone tenants live in.
	Zone string `yaml:"zone"`
	// Pod is the pod this edge belongs to. Required.
	Pod string `yaml:"pod"`
	// HTTP is the plain-HTTP listener. Edges of other pods forward here.
	HTTP string `yaml:"http"`
	// Engine is the plain-HTTP listener's data path: EngineLoop (event
	// loops, Linux only, the default there) or EngineFasthttp (fasthttp's
	// server, a goroutine per connection).
	Engine string `yaml:"engine"`
	// HTTPS is the TLS listener, used when TLS is enabled. Empty: none.
	HTTPS string `yaml:"https"`
	// Admin serves /healthz, /metrics and /debug/ (loopback by default).
	Admin string `yaml:"admin"`
	// PublicIP is the IPv4 address DNS hands out for this edge. Required.
	PublicIP string `yaml:"public_ip"`
	// PublicIPv6 is the optional IPv6 address DNS hands out.
	PublicIPv6 string `yaml:"public_ipv6"`
	// ACME configures certificates; used when TLS is enabled.
	ACME ACME `yaml:"acme"`
	// TLS configures the HTTPS listener and plain HTTP next to it; used
	// when TLS is enabled.
	TLS TLS `yaml:"tls"`
	// HTTP2 configures HTTP/2 on the HTTPS listener; used when TLS is
	// enabled.
	HTTP2 HTTP2 `yaml:"http2"`

	// Register is how the edge registers itself in Consul.
	Register Register `yaml:"register"`
	// DrainDelay is how long a stopping edge keeps serving after it left
	// Consul, so that DNS moves clients away first.
	DrainDelay time.Duration `yaml:"drain_delay"`
	// ShutdownTimeout bounds the wait for in-flight requests after the
	// listeners close.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// PIDFile, if set, is written with the process ID once the edge
	// serves, again by each process an upgrade (SIGUSR2) starts, so that
	// a supervisor follows the new one. Empty: none.
	PIDFile string `yaml:"pid_file"`

	// Policy balances each pool: round_robin or least_request.
	Policy string `yaml:"policy"`
	// PassiveHealth ejects endpoints that fail.
	PassiveHealth router.PassiveHealth `yaml:"passive_health"`
	// TrustedProxies are the peers (CIDRs or addresses) whose
	// X-Forwarded-* headers are kept and appended to. Edges registered in
	// Consul are trusted too.
	TrustedProxies []string `yaml:"trusted_proxies"`
	Timeouts       Timeouts `yaml:"timeouts"`
	Limits         Limits   `yaml:"limits"`
	Retries        Retries  `yaml:"retries"`
	// TenantLimits is the default of the traffic limits of this pod's
	// tenants that set none (docs/limits.md).
	TenantLimits TenantLimits `yaml:"tenant_limits"`
	// RetryAfter is the Retry-After a 503 carries.
	RetryAfter time.Duration `yaml:"retry_after"`
	AccessLog  AccessLog     `yaml:"access_log"`
}

// The plain-HTTP data paths (Config.Engine).
const (
	EngineLoop     = "loop"
	EngineFasthttp = "fasthttp"
)

// ACME is the certificate authority the edge orders certificates from when
// TLS is enabled.
type ACME struct {
	// Directory is the ACME directory URL.
	Directory string `yaml:"directory"`
	// CA is a PEM file of extra roots to trust for the ACME server.
	CA string `yaml:"ca"`
	// Email is the ACME account's contact. Empty: none.
	Email string `yaml:"email"`
	// Challenges are the challenge types tried, in order: tls-alpn-01
	// (port 443), http-01 (port 80).
	Challenges []string `yaml:"challenges"`
	// RenewBefore renews a certificate this long before it expires; 0 means
	// a third of its lifetime, at most 30 days.
	RenewBefore time.Duration `yaml:"renew_before"`
	// OrderTimeout bounds one issuance, waiting for another edge's included.
	OrderTimeout time.Duration `yaml:"order_timeout"`
	// BackoffMin and BackoffMax bound the wait after a failed issuance,
	// doubling with each failure in a row, on every edge.
	BackoffMin time.Duration `yaml:"backoff_min"`
	BackoffMax time.Duration `yaml:"backoff_max"`
	// DNS01Nameservers are the name servers (host:port, the zone's dnsd)
	// that must serve the zone certificate's DNS-01 tokens before the CA
	// is asked to check them. Empty: the zone's NS records.
	DNS01Nameservers []string `yaml:"dns01_nameservers"`
	// DNS01Timeout bounds that wait.
	DNS01Timeout time.Duration `yaml:"dns01_timeout"`
}

// TLS is the HTTPS listener's behaviour (see edge/certs/README.md).
type TLS struct {
	// Redirect answers plain-HTTP requests for known hosts with 308 to
	// https, ACME challenges excepted.
	Redirect bool `yaml:"redirect"`
	// RedirectPort is the port of redirect locations; 0 means the https
	// listener's, and 443 is left out.
	RedirectPort int `yaml:"redirect_port"`
	// HandshakeTimeout is the longest a handshake waits for its
	// certificate to be issued; below timeouts.client_header.
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	// TicketRotation is how often the session ticket key shared by every
	// edge is replaced; TicketKeys how many are kept.
	TicketRotation time.Duration `yaml:"ticket_rotation"`
	TicketKeys     int           `yaml:"ticket_keys"`
	// Certificates are operators' own certificates, served by SNI before
	// any from ACME; CertificateCheck is how often their files are read
	// again.
	Certificates     []TLSCertificate `yaml:"certificates"`
	CertificateCheck time.Duration    `yaml:"certificate_check"`
}

// HTTP2 is HTTP/2 on the HTTPS listener, chosen by ALPN (see
// edge/certs/README.md). Its requests go through the same proxy as HTTP/1.1
// ones; app servers are reached over HTTP/1.1.
type HTTP2 struct {
	// Enabled offers h2 by ALPN, before http/1.1.
	Enabled bool `yaml:"enabled"`
	// MaxConcurrentStreams is how many requests a client may have open on
	// one connection (SETTINGS_MAX_CONCURRENT_STREAMS).
	MaxConcurrentStreams int `yaml:"max_concurrent_streams"`
	// StreamWindow and ConnectionWindow are the flow-control windows a
	// client's request bodies get, per stream and per connection: what one
	// connection may make the edge buffer.
	StreamWindow     int `yaml:"stream_window"`
	ConnectionWindow int `yaml:"connection_window"`
	// MaxHeaderListSize bounds a request's header fields
	// (SETTINGS_MAX_HEADER_LIST_SIZE); 0 means limits.max_header_bytes.
	MaxHeaderListSize int `yaml:"max_header_list_size"`
	// IdleTimeout closes, with GOAWAY, a connection without open streams
	// for this long; 0 means timeouts.client_idle.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
}

func defaultHTTP2() HTTP2 {
	return HTTP2{Enabled: true, MaxConcurrentStreams: 250, StreamWindow: 256 << 10, ConnectionWindow: 1 << 20}
}

func (h HTTP2) validate() error {
	switch {
	case h.MaxConcurrentStreams < 1 || h.MaxConcurrentStreams > 10000:
		return fmt.Errorf("http2.max_concurrent_streams: %d is outside [1, 10000]", h.MaxConcurrentStreams)
	case h.StreamWindow < 65535 || h.StreamWindow > math.MaxInt32:
		return fmt.Errorf("http2.stream_window: %d is outside [65535, 2147483647] (RFC 9113, section 6.9.2)", h.StreamWindow)
	case h.ConnectionWindow < 65535 || h.ConnectionWindow > math.MaxInt32:
		return fmt.Errorf("http2.connection_window: %d is outside [65535, 2147483647] (RFC 9113, section 6.9.2)", h.ConnectionWindow)
	case h.MaxHeaderListSize != 0 && h.MaxHeaderListSize < 1024:
		return fmt.Errorf("http2.max_header_list_size: must be 0 or at least 1024, got %d", h.MaxHeaderListSize)
	case h.IdleTimeout < 0:
		return fmt.Errorf("http2.idle_timeout: %s is negative", h.IdleTimeout)
	}
	return nil
}

// TLSCertificate is an operator's certificate: PEM files of the chain
// (leaf first) and of the private key; they may be one file.
type TLSCertificate struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// defaultACME and defaultTLS are the defaults of edge/certs.Config (a test
// of the edge command checks that they agree).
func defaultACME() ACME {
	return ACME{
		Directory:    "https://acme-v02.api.letsencrypt.org/directory",
		Challenges:   []string{"tls-alpn-01", "http-01"},
		OrderTimeout: 3 * time.Minute,
		BackoffMin:   time.Minute,
		BackoffMax:   time.Hour,
		DNS01Timeout: time.Minute,
	}
}

func defaultTLS() TLS {
	return TLS{Redirect: true, HandshakeTimeout: 8 * time.Second, TicketRotation: 12 * time.Hour, TicketKeys: 3, CertificateCheck: 10 * time.Second}
}

// Register is the edge's own entry in Consul.
type Register struct {
	// ServiceID defaults to edge-<pod>-<advertised address>.
	ServiceID string `yaml:"service_id"`
	// Address is the host:port other pods' edges forward to. Default: the
	// HTTP listener, with public_ip when it listens on every address.
	Address string `yaml:"address"`
	// CheckInterval and CheckTimeout drive Consul's HTTP check of /healthz.
	CheckInterval time.Duration `yaml:"check_interval"`
	CheckTimeout  time.Duration `yaml:"check_timeout"`
	// DeregisterCriticalAfter lets Consul remove an edge that died without
	// deregistering.
	DeregisterCriticalAfter time.Duration `yaml:"deregister_critical_after"`
}

// Timeouts bound every wait, so that neither a slow client nor a slow
// endpoint can pin a connection.
type Timeouts struct {
	// Dial bounds opening a connection to an endpoint.
	Dial time.Duration `yaml:"dial"`
	// ResponseHeader bounds the wait for an endpoint's response head (and
	// for the whole of a small buffered response).
	ResponseHeader time.Duration `yaml:"response_header"`
	// UpstreamIdle bounds each wait for an endpoint while a body streams.
	UpstreamIdle time.Duration `yaml:"upstream_idle"`
	// UpstreamKeepalive closes pooled connections to endpoints unused for
	// this long. Keep it below the app servers' own keep-alive timeout.
	UpstreamKeepalive time.Duration `yaml:"upstream_keepalive"`
	// ClientHeader bounds reading a request head, from its first byte.
	ClientHeader time.Duration `yaml:"client_header"`
	// ClientBody bounds each wait for the next piece of a request body.
	ClientBody time.Duration `yaml:"client_body"`
	// ClientWrite bounds each write of the response to the client.
	ClientWrite time.Duration `yaml:"client_write"`
	// ClientIdle closes keep-alive connections idle for this long.
	ClientIdle time.Duration `yaml:"client_idle"`
	// WebSocketIdle closes a tunnel with no traffic either way for this long.
	WebSocketIdle time.Duration `yaml:"websocket_idle"`
}

// Limits bound what one request may cost.
type Limits struct {
	// MaxHeaderBytes is the largest request head (and response head from an
	// endpoint) accepted.
	MaxHeaderBytes int `yaml:"max_header_bytes"`
	// MaxBodyBytes is the largest request body accepted; 0 means no limit.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// BufferBytes is the largest response body read whole before it is
	// sent; longer or chunked bodies stream.
	BufferBytes int `yaml:"buffer_bytes"`
	// MaxConnsPerEndpoint caps the connections to one endpoint.
	MaxConnsPerEndpoint int `yaml:"max_conns_per_endpoint"`
}

// Retries is the retry policy.
type Retries struct {
	// Max is the number of retries of one request, each on another
	// endpoint.
	Max int `yaml:"max"`
	// BudgetRatio is the share of requests that may be retries, over
	// BudgetWindow, beyond the floor of BudgetMinPerSecond.
	BudgetRatio        float64       `yaml:"budget_ratio"`
	BudgetMinPerSecond float64       `yaml:"budget_min_per_second"`
	BudgetWindow       time.Duration `yaml:"budget_window"`
}

// AccessLog configures the JSON access log on standard output.
type AccessLog struct {
	Enabled bool `yaml:"enabled"`
	// BufferBytes of lines are gathered before a write; 0 writes each line
	// at once.
	BufferBytes int `yaml:"buffer_bytes"`
	// FlushInterval bounds how long a line waits in the buffer.
	FlushInterval time.Duration `yaml:"flush_interval"`
}

// DefaultConfig is what an operator gets without a configuration file.
func DefaultConfig() Config {
	return Config{
		Consul:          config.DefaultConsul(),
		Log:             config.DefaultLog(),
		Zone:            "example.test.",
		HTTP:            ":80",
		Engine:          defaultEngine,
		Admin:           "127.0.0.1:9180",
		ACME:            defaultACME(),
		TLS:             defaultTLS(),
		HTTP2:           defaultHTTP2(),
		DrainDelay:      5 * time.Second,
		ShutdownTimeout: 30 * time.Second,
		Register: Register{
			CheckInterval:           2 * time.Second,
			CheckTimeout:            time.Second,
			DeregisterCriticalAfter: time.Minute,
		},
		Policy:        router.PolicyRoundRobin,
		PassiveHealth: router.DefaultPassiveHealth(),
		Timeouts: Timeouts{
			Dial:              2 * time.Second,
			ResponseHeader:    60 * time.Second,
			UpstreamIdle:      60 * time.Second,
			UpstreamKeepalive: 30 * time.Second,
			ClientHeader:      10 * time.Second,
			ClientBody:        60 * time.Second,
			ClientWrite:       60 * time.Second,
			ClientIdle:        120 * time.Second,
			WebSocketIdle:     10 * time.Minute,
		},
		Limits: Limits{
			MaxHeaderBytes:      16 << 10,
			MaxBodyBytes:        100 << 20,
			BufferBytes:         128 << 10,
			MaxConnsPerEndpoint: 1024,
		},
		Retries: Retries{
			Max:                2,
			BudgetRatio:        0.2,
			BudgetMinPerSecond: 10,
			BudgetWindow:       10 * time.Second,
		},
		TenantLimits: TenantLimits{QueueTimeout: 50 * time.Millisecond},
		RetryAfter:   5 * time.Second,
		AccessLog:    AccessLog{Enabled: true, BufferBytes: 64 << 10, FlushInterval: 200 * time.Millisecond},
	}
}

// Validate checks every key and names the first bad one, with what is wrong.
func (c *Config) Validate() error {
	if err := c.Consul.Validate(); err != nil {
		return err
	}
	if _, err := c.Log.Logger(nil); err != nil {
		return err
	}
	if _, err := router.New(router.Config{Zone: c.Zone}); err != nil {
		return fmt.Errorf("zone: %w", err)
	}
	if c.Pod == "" {
		return errors.New("pod: required (the pod this edge serves)")
	}
	if err := router.CheckLabel(c.Pod); err != nil {
		return fmt.Errorf("pod: %w", err)
	}
	if err := checkAddr("http", c.HTTP, false); err != nil {
		return err
	}
	if c.Engine != EngineLoop && c.Engine != EngineFasthttp {
		return fmt.Errorf("engine: %q is neither %q nor %q", c.Engine, EngineLoop, EngineFasthttp)
	}
	if c.Engine == EngineLoop && defaultEngine != EngineLoop {
		return fmt.Errorf("engine: %q needs Linux (epoll); use %q", EngineLoop, EngineFasthttp)
	}
	if err := checkAddr("https", c.HTTPS, true); err != nil {
		return err
	}
	if err := checkAddr("admin", c.Admin, false); err != nil {
		return err
	}
	if c.PublicIP == "" {
		return errors.New("public_ip: required (the IPv4 address DNS hands out for this edge)")
	}
	if ip, err := netip.ParseAddr(c.PublicIP); err != nil || !ip.Is4() {
		return fmt.Errorf("public_ip: %q is not an IPv4 address", c.PublicIP)
	}
	if c.PublicIPv6 != "" {
		if ip, err := netip.ParseAddr(c.PublicIPv6); err != nil || !ip.Is6() || ip.Is4In6() {
			return fmt.Errorf("public_ipv6: %q is not an IPv6 address", c.PublicIPv6)
		}
	}
	if c.ACME.Directory != "" && !strings.HasPrefix(c.ACME.Directory, "https://") && !strings.HasPrefix(c.ACME.Directory, "http://") {
		return fmt.Errorf("acme.directory: %q is not an http(s) URL", c.ACME.Directory)
	}
	if err := c.HTTP2.validate(); err != nil {
		return err
	}
	if err := c.Register.validate(); err != nil {
		return err
	}
	if c.DrainDelay < 0 {
		return fmt.Errorf("drain_delay: %s is negative", c.DrainDelay)
	}
	if c.ShutdownTimeout <= 0 {
		return fmt.Errorf("shutdown_timeout: must be positive, got %s", c.ShutdownTimeout)
	}
	if _, err := router.SelectorFor(c.Policy); err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	if err := c.PassiveHealth.Validate(); err != nil {
		return fmt.Errorf("passive_health.%w", err)
	}
	if _, err := ParsePrefixes(c.TrustedProxies); err != nil {
		return fmt.Errorf("trusted_proxies: %w", err)
	}
	if err := c.Timeouts.validate(); err != nil {
		return err
	}
	if err := c.TenantLimits.validate(); err != nil {
		return err
	}
	if err := c.Limits.validate(); err != nil {
		return err
	}
	if err := c.Retries.validate(); err != nil {
		return err
	}
	if c.RetryAfter < time.Second {
		return fmt.Errorf("retry_after: must be at least 1s, got %s", c.RetryAfter)
	}
	if c.AccessLog.BufferBytes < 0 {
		return fmt.Errorf("access_log.buffer_bytes: %d is negative", c.AccessLog.BufferBytes)
	}
	if c.AccessLog.BufferBytes > 0 && c.AccessLog.FlushInterval <= 0 {
		return fmt.Errorf("access_log.flush_interval: must be positive when buffer_bytes is set, got %s", c.AccessLog.FlushInterval)
	}
	return nil
}

// checkAddr checks a host:port listener address; an empty one is an error
// unless optional.
func checkAddr(key, addr string, optional bool) error {
	if addr == "" {
		if optional {
			return nil
		}
		return fmt.Errorf("%s: required (host:port)", key)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s: %q is not host:port", key, addr)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("%s: %q has an invalid port", key, addr)
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil && !router.ValidLabel(strings.ToLower(host)) && host != "localhost" {
			if _, err := router.NormalizeDomain(host); err != nil {
				return fmt.Errorf("%s: %q has an invalid host", key, addr)
			}
		}
	}
	return nil
}

func (r Register) validate() error {
	if r.Address != "" {
		host, _, err := net.SplitHostPort(r.Address)
		if err != nil || host == "" {
			return fmt.Errorf("register.address: %q is not host:port", r.Address)
		}
		if err := checkAddr("register.address", r.Address, false); err != nil {
			return err
		}
	}
	if strings.ContainsAny(r.ServiceID, "/ ") {
		return fmt.Errorf("register.service_id: %q must not hold '/' or spaces", r.ServiceID)
	}
	switch {
	case r.CheckInterval <= 0:
		return fmt.Errorf("register.check_interval: must be positive, got %s", r.CheckInterval)
	case r.CheckTimeout <= 0:
		return fmt.Errorf("register.check_timeout: must be positive, got %s", r.CheckTimeout)
	case r.DeregisterCriticalAfter < time.Minute:
		return fmt.Errorf("register.deregister_critical_after: Consul's minimum is 1m, got %s", r.DeregisterCriticalAfter)
	}
	return nil
}

func (t Timeouts) validate() error {
	for _, d := range []struct {
		key string
		v   time.Duration
	}{
		{"dial", t.Dial}, {"response_header", t.ResponseHeader}, {"upstream_idle", t.UpstreamIdle},
		{"upstream_keepalive", t.UpstreamKeepalive}, {"client_header", t.ClientHeader},
		{"client_body", t.ClientBody}, {"client_write", t.ClientWrite}, {"client_idle", t.ClientIdle},
		{"websocket_idle", t.WebSocketIdle},
	} {
		if d.v <= 0 {
			return fmt.Errorf("timeouts.%s: must be positive, got %s", d.key, d.v)
		}
	}
	return nil
}

func (l Limits) validate() error {
	switch {
	case l.MaxHeaderBytes < 1024:
		return fmt.Errorf("limits.max_header_bytes: must be at least 1024, got %d", l.MaxHeaderBytes)
	case l.MaxBodyBytes < 0:
		return fmt.Errorf("limits.max_body_bytes: %d is negative", l.MaxBodyBytes)
	case l.BufferBytes < 0:
		return fmt.Errorf("limits.buffer_bytes: %d is negative", l.BufferBytes)
	case l.MaxConnsPerEndpoint <= 0:
		return fmt.Errorf("limits.max_conns_per_endpoint: must be positive, got %d", l.MaxConnsPerEndpoint)
	}
	return nil
}

func (r Retries) validate() error {
	switch {
	case r.Max < 0 || r.Max > 10:
		return fmt.Errorf("retries.max: %d is outside [0, 10]", r.Max)
	case r.BudgetRatio < 0 || r.BudgetRatio > 1:
		return fmt.Errorf("retries.budget_ratio: %v is outside [0, 1]", r.BudgetRatio)
	case r.BudgetMinPerSecond < 0:
		return fmt.Errorf("retries.budget_min_per_second: %v is negative", r.BudgetMinPerSecond)
	case r.BudgetWindow < time.Second:
		return fmt.Errorf("retries.budget_window: must be at least 1s, got %s", r.BudgetWindow)
	}
	return nil
}

// ParsePrefixes parses CIDRs and single addresses ("10.0.0.0/8",
// "192.0.2.7", "2001:db8::/32").
func ParsePrefixes(list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	for _, s := range list {
		if strings.Contains(s, "/") {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("%q is not a CIDR", s)
			}
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not an address or CIDR", s)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// advertised is the address registered in Consul for edges of other pods:
// register.address, else the HTTP listener, with public_ip in place of an
// unspecified host.
func (c *Config) advertised(httpAddr string) string {
	if c.Register.Address != "" {
		return c.Register.Address
	}
	host, port, err := net.SplitHostPort(httpAddr)
	if err != nil {
		return httpAddr
	}
	if ip, err := netip.ParseAddr(host); host == "" || err == nil && ip.IsUnspecified() {
		host = c.PublicIP
	}
	return net.JoinHostPort(host, port)
}

// serviceID is register.service_id, else one derived from the pod and the
// advertised address, so that two edges on one agent never collide.
func (c *Config) serviceID(advertised string) string {
	if c.Register.ServiceID != "" {
		return c.Register.ServiceID
	}
	r := strings.NewReplacer(":", "-", ".", "-", "[", "", "]", "")
	return "edge-" + c.Pod + "-" + r.Replace(advertised)
}
