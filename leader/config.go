package leader

import (
	"fmt"
	"math"
	"net"
	"strings"
	"time"

	"github.com/podedge/podedge/internal/config"
	"github.com/podedge/podedge/router"
)

// Config is the leader's configuration file. Zero fields of a Config made
// by hand take the defaults of DefaultConfig when New validates it.
type Config struct {
	// Listen is where the HTTP API, /healthz and /metrics are served.
	Listen string `yaml:"listen"`
	// Advertise is the address other replicas forward writes to and the
	// Consul agent checks: Listen when empty, which is then required to name
	// a host (not 0.0.0.0 or ::).
	Advertise string `yaml:"advertise"`
	// PIDFile, if set, is written with the process ID once the replica
	// serves, again by each process an upgrade (SIGUSR2) starts, so that
	// a supervisor follows the new one. Empty: none.
	PIDFile string `yaml:"pid_file"`
	// Zone is the DNS zone tenants live in.
	Zone string `yaml:"zone"`
	// NearKm: eligible pods no farther than the nearest one plus NearKm
	// count as equally near; of those the least used wins.
	NearKm float64 `yaml:"near_km"`
	// ReservedNames are tenant names refused at sign-up, because the
	// platform uses them (pods.<zone>) or people expect them to be its own.
	ReservedNames []string `yaml:"reserved_names"`
	// MaxBodyBytes bounds a request body.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// MaxDomains bounds the custom domains of one tenant. It also keeps
	// every write within Consul's 128 operations per transaction.
	MaxDomains int `yaml:"max_domains"`
	// WriteRetries bounds how often a write whose transaction was rolled
	// back by a concurrent change is re-read and tried again.
	WriteRetries int `yaml:"write_retries"`
	// WriteTimeout bounds one API write, retries and forwarding included.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// ReconcileInterval is how often the active leader checks its internal
	// keys (seat counts, the domain index) against the tenants in KV and
	// repairs them. They are also checked whenever leadership is won.
	// 0 checks only then.
	ReconcileInterval time.Duration `yaml:"reconcile_interval"`
	// AuditInterval is the least time between two reads of the pods/ or
	// tenants/ folder by the active leader, which looks there for values
	// written or deleted outside it and logs them for every reader: such
	// a change reaches the readers within about this long.
	AuditInterval time.Duration `yaml:"audit_interval"`
	// LogRing is the number of slots of the change log's ring: a reader
	// that falls more changes behind than this reads the folders again.
	// Changing it starts a new log (every reader reads the folders once).
	LogRing uint64 `yaml:"log_ring"`
	// ViewMinWait is the least time between two refreshes of one part of
	// the replica's view (the change log, edge health): changes that come
	// meanwhile are read together. The leader's reads and placement can
	// lag this much behind Consul.
	ViewMinWait time.Duration `yaml:"view_min_wait"`
	// ReadWait bounds how long a read given an index (?index= or
	// X-Podedge-Index), or following a write this replica answered, waits
	// for the replica's view to reach it before answering 503.
	ReadWait time.Duration `yaml:"read_wait"`
	// MaxQueryTime caps the wait of a blocking read (?index=N&wait=...),
	// as Consul's own max_query_time does.
	MaxQueryTime time.Duration `yaml:"max_query_time"`
	// GeoIP locates sign-ups given by their IP address.
	GeoIP GeoIP `yaml:"geoip"`
	// Election tunes the Consul lock.
	Election Election `yaml:"election"`
	// Consul is the shared consul section.
	Consul config.Consul `yaml:"consul"`
	// Log is the shared log section.
	Log config.Log `yaml:"log"`
}

// GeoIP configures the location of sign-ups given by their IP address.
type GeoIP struct {
	// Database is the path of a MaxMind-format database with city
	// coordinates (GeoLite2-City, DB-IP City Lite); empty: none, and a
	// sign-up by address is refused unless Fallback is set.
	Database string `yaml:"database"`
	// CheckInterval is how often the file is checked for a new version
	// (geoipupdate replaces it); a new one is opened without a restart.
	CheckInterval time.Duration `yaml:"check_interval"`
	// Fallback, when set, is where a sign-up whose address cannot be
	// located (unknown, private, loopback, no database) is placed from.
	Fallback *GeoPoint `yaml:"fallback"`
}

// GeoPoint is a position; both fields are required.
type GeoPoint struct {
	Lat *float64 `yaml:"lat"`
	Lon *float64 `yaml:"lon"`
}

func (g *GeoIP) validate() error {
	if g.CheckInterval < 100*time.Millisecond || g.CheckInterval > 24*time.Hour {
		return fmt.Errorf("geoip.check_interval: %s is outside [100ms, 24h]", g.CheckInterval)
	}
	if f := g.Fallback; f != nil {
		switch {
		case f.Lat == nil:
			return fmt.Errorf("geoip.fallback.lat: required with geoip.fallback")
		case f.Lon == nil:
			return fmt.Errorf("geoip.fallback.lon: required with geoip.fallback")
		}
		if err := router.CheckCoordinates(*f.Lat, *f.Lon); err != nil {
			return fmt.Errorf("geoip.fallback: %w", err)
		}
	}
	return nil
}

// Election tunes leader election on Consul.
type Election struct {
	// Service is the Consul service each replica registers through its
	// local agent, with the TTL check its session is bound to.
	Service string `yaml:"service"`
	// ID is the replica's service ID; empty means "<service>-<advertise>".
	ID string `yaml:"id"`
	// SessionTTL is the session's own TTL, renewed at half of it: the
	// backstop should the agent keep the check passing but lose the
	// replica. Consul accepts 10s to 24h and invalidates a session only
	// after twice its TTL.
	SessionTTL time.Duration `yaml:"session_ttl"`
	// CheckTTL is the TTL of the replica's health check, refreshed every
	// quarter of it. A killed leader's check turns critical CheckTTL after
	// its last refresh, which invalidates its session and frees the lock:
	// this is what bounds failover.
	CheckTTL time.Duration `yaml:"check_ttl"`
	// LockDelay is Consul's lock-delay after an invalidated session. Every
	// write is fenced by the session, so a deposed leader cannot write and
	// no delay is needed; 1ms is the least the Consul client can send (0
	// would mean Consul's default of 15s).
	LockDelay time.Duration `yaml:"lock_delay"`
	// DeregisterAfter removes a replica's service from Consul once its
	// check has been critical this long (Consul's minimum is 1m).
	DeregisterAfter time.Duration `yaml:"deregister_after"`
}

// DefaultReservedNames are tenant names the platform keeps for itself.
func DefaultReservedNames() []string {
	return []string{
		"pods", "www", "ns", "ns1", "ns2", "ns3", "ns4", "dns", "mail", "mx",
		"smtp", "imap", "pop", "pop3", "webmail", "api", "admin", "leader",
		"edge", "dnsd", "app", "status", "autoconfig", "autodiscover",
		"localhost", "ftp", "cdn", "static", "assets", "help", "support",
		"billing", "login", "signup", "account", "dashboard", "console",
	}
}

// DefaultConfig is what an operator gets without a configuration file.
func DefaultConfig() Config {
	return Config{
		Listen:            "127.0.0.1:8480",
		Zone:              "example.test.",
		NearKm:            500,
		ReservedNames:     DefaultReservedNames(),
		MaxBodyBytes:      64 << 10,
		MaxDomains:        20,
		WriteRetries:      10,
		WriteTimeout:      10 * time.Second,
		ReconcileInterval: 5 * time.Minute,
		AuditInterval:     2 * time.Second,
		LogRing:           DefaultLogRing,
		ViewMinWait:       250 * time.Millisecond,
		ReadWait:          2 * time.Second,
		MaxQueryTime:      10 * time.Minute,
		GeoIP:             GeoIP{CheckInterval: time.Minute},
		Election: Election{
			Service:         "leader",
			SessionTTL:      10 * time.Second,
			CheckTTL:        time.Second,
			LockDelay:       time.Millisecond,
			DeregisterAfter: time.Minute,
		},
		Consul: config.DefaultConsul(),
		Log:    config.DefaultLog(),
	}
}

// Validate names the first key that is wrong and why, on one line.
func (c *Config) Validate() error {
	if err := validateListen("listen", c.Listen); err != nil {
		return err
	}
	if c.Advertise != "" {
		if err := validateAdvertise("advertise", c.Advertise); err != nil {
			return err
		}
	}
	if _, err := router.New(router.Config{Zone: c.Zone}); err != nil {
		return err
	}
	switch {
	case math.IsNaN(c.NearKm) || c.NearKm < 0 || c.NearKm > 20100:
		return fmt.Errorf("near_km: %v is outside [0, 20100]", c.NearKm)
	case c.MaxBodyBytes < 256:
		return fmt.Errorf("max_body_bytes: %d is below 256", c.MaxBodyBytes)
	case c.MaxDomains < 0 || c.MaxDomains > 100:
		return fmt.Errorf("max_domains: %d is outside [0, 100]", c.MaxDomains)
	case c.WriteRetries < 1 || c.WriteRetries > 1000:
		return fmt.Errorf("write_retries: %d is outside [1, 1000]", c.WriteRetries)
	case c.WriteTimeout <= 0:
		return fmt.Errorf("write_timeout: must be positive, got %s", c.WriteTimeout)
	case c.ReconcileInterval < 0:
		return fmt.Errorf("reconcile_interval: %s is negative", c.ReconcileInterval)
	case c.AuditInterval <= 0:
		return fmt.Errorf("audit_interval: must be positive, got %s", c.AuditInterval)
	case c.LogRing < 16 || c.LogRing > 1<<20:
		return fmt.Errorf("log_ring: %d is outside [16, 1048576]", c.LogRing)
	case c.ViewMinWait < 10*time.Millisecond || c.ViewMinWait > 10*time.Second:
		return fmt.Errorf("view_min_wait: %s is outside [10ms, 10s]", c.ViewMinWait)
	case c.ReadWait <= 0 || c.ReadWait > time.Minute:
		return fmt.Errorf("read_wait: %s is outside (0, 1m]", c.ReadWait)
	case c.MaxQueryTime < time.Second || c.MaxQueryTime > time.Hour:
		return fmt.Errorf("max_query_time: %s is outside [1s, 1h]", c.MaxQueryTime)
	}
	for _, n := range c.ReservedNames {
		if err := router.CheckLabel(n); err != nil {
			return fmt.Errorf("reserved_names: %w", err)
		}
	}
	if err := c.GeoIP.validate(); err != nil {
		return err
	}
	if err := c.Election.validate(); err != nil {
		return err
	}
	if err := c.Consul.Validate(); err != nil {
		return err
	}
	if _, err := c.Log.Logger(nil); err != nil {
		return err
	}
	if c.Advertise == "" && !hasHost(c.Listen) {
		return fmt.Errorf("advertise: required when listen %q names no host other replicas can reach", c.Listen)
	}
	return nil
}

func (e *Election) validate() error {
	switch {
	case !router.ValidLabel(e.Service):
		return fmt.Errorf("election.service: %q is not a service name of a-z, 0-9 and '-'", e.Service)
	case strings.ContainsAny(e.ID, " /"):
		return fmt.Errorf("election.id: %q may not hold spaces or '/'", e.ID)
	case e.SessionTTL < 10*time.Second || e.SessionTTL > 24*time.Hour:
		return fmt.Errorf("election.session_ttl: %s is outside Consul's [10s, 24h]", e.SessionTTL)
	case e.CheckTTL < 100*time.Millisecond || e.CheckTTL > e.SessionTTL:
		return fmt.Errorf("election.check_ttl: %s is outside [100ms, session_ttl]", e.CheckTTL)
	case e.LockDelay < time.Millisecond || e.LockDelay > time.Minute:
		return fmt.Errorf("election.lock_delay: %s is outside [1ms, 1m]", e.LockDelay)
	case e.DeregisterAfter < time.Minute:
		return fmt.Errorf("election.deregister_after: %s is below Consul's minimum of 1m", e.DeregisterAfter)
	}
	return nil
}

func validateListen(key, addr string) error {
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
		return fmt.Errorf("%s: %q is not host:port", key, addr)
	}
	return nil
}

func validateAdvertise(key, addr string) error {
	if err := validateListen(key, addr); err != nil {
		return err
	}
	if _, port, _ := net.SplitHostPort(addr); !hasHost(addr) || port == "0" {
		return fmt.Errorf("%s: %q must name a host and port other replicas can reach", key, addr)
	}
	return nil
}

// hasHost reports whether addr names a host, not a wildcard.
func hasHost(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return false
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return false
	}
	return true
}

// Load reads the YAML file at path over DefaultConfig; an empty path gives
// the defaults. Validation is separate, so that flags can override the file
// first.
func Load(path string) (Config, error) {
	cfg := DefaultConfig()
	if path == "" {
		return cfg, nil
	}
	if err := config.Load(path, &cfg); err != nil {
		return cfg, err
	}
	return cfg, nil
}
