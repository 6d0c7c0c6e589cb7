package leader

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDefaultsAreValid(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

// The example in configs/ must be complete: it loads strictly, validates,
// and states every default.
func TestExampleConfig(t *testing.T) {
	cfg, err := Load(filepath.Join("..", "configs", "leader.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if want := DefaultConfig(); !reflect.DeepEqual(cfg, want) {
		t.Fatalf("configs/leader.yaml differs from the defaults:\n got %+v\nwant %+v", cfg, want)
	}
}

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		name  string
		yaml  string
		tweak func(*Config)
		want  string
	}{
		{name: "unknown key", yaml: "listne: 1.2.3.4:5\n", want: `unknown key "listne"`},
		{name: "bad duration", yaml: "write_timeout: soon\n", want: `line 1: write_timeout: invalid value "soon"`},
		{name: "listen not host:port", tweak: func(c *Config) { c.Listen = "8480" }, want: `listen: "8480" is not host:port`},
		{name: "wildcard listen without advertise", tweak: func(c *Config) { c.Listen = "0.0.0.0:8480" }, want: "advertise: required"},
		{name: "advertise a wildcard", tweak: func(c *Config) { c.Advertise = "[::]:8480" }, want: "advertise:"},
		{name: "advertise port 0", tweak: func(c *Config) { c.Advertise = "10.0.0.1:0" }, want: "advertise:"},
		{name: "zone", tweak: func(c *Config) { c.Zone = "bad_zone." }, want: "zone:"},
		{name: "near_km", tweak: func(c *Config) { c.NearKm = -1 }, want: "near_km:"},
		{name: "reserved name", tweak: func(c *Config) { c.ReservedNames = []string{"WWW"} }, want: "reserved_names:"},
		{name: "max_body_bytes", tweak: func(c *Config) { c.MaxBodyBytes = 10 }, want: "max_body_bytes:"},
		{name: "max_domains", tweak: func(c *Config) { c.MaxDomains = 101 }, want: "max_domains:"},
		{name: "write_retries", tweak: func(c *Config) { c.WriteRetries = 0 }, want: "write_retries:"},
		{name: "write_timeout", tweak: func(c *Config) { c.WriteTimeout = 0 }, want: "write_timeout:"},
		{name: "reconcile_interval", tweak: func(c *Config) { c.ReconcileInterval = -time.Second }, want: "reconcile_interval:"},
		{name: "view_min_wait", tweak: func(c *Config) { c.ViewMinWait = time.Millisecond }, want: "view_min_wait:"},
		{name: "session_ttl below Consul's minimum", tweak: func(c *Config) { c.Election.SessionTTL = 5 * time.Second }, want: "election.session_ttl:"},
		{name: "check_ttl too short", tweak: func(c *Config) { c.Election.CheckTTL = 10 * time.Millisecond }, want: "election.check_ttl:"},
		{name: "check_ttl above session_ttl", tweak: func(c *Config) { c.Election.CheckTTL = time.Minute }, want: "election.check_ttl:"},
		{name: "lock_delay", tweak: func(c *Config) { c.Election.LockDelay = 0 }, want: "election.lock_delay:"},
		{name: "deregister_after", tweak: func(c *Config) { c.Election.DeregisterAfter = time.Second }, want: "election.deregister_after:"},
		{name: "service", tweak: func(c *Config) { c.Election.Service = "Leader" }, want: "election.service:"},
		{name: "consul address", tweak: func(c *Config) { c.Consul.Address = "" }, want: "consul.address:"},
		{name: "log level", tweak: func(c *Config) { c.Log.Level = "loud" }, want: "log.level:"},
		{name: "read_wait", tweak: func(c *Config) { c.ReadWait = 0 }, want: "read_wait:"},
		{name: "max_query_time", tweak: func(c *Config) { c.MaxQueryTime = time.Millisecond }, want: "max_query_time:"},
		{name: "geoip check_interval", tweak: func(c *Config) { c.GeoIP.CheckInterval = 0 }, want: "geoip.check_interval:"},
		{name: "geoip fallback without lon", yaml: "geoip:\n  fallback: {lat: 50}\n", want: "geoip.fallback.lon: required"},
		{name: "geoip fallback off the map", yaml: "geoip:\n  fallback: {lat: 91, lon: 0}\n", want: "geoip.fallback: lat 91 is outside"},
		{name: "geoip fallback unknown key", yaml: "geoip:\n  fallback: {lat: 1, lng: 2}\n", want: `unknown key "lng"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var err error
			cfg := DefaultConfig()
			if c.yaml != "" {
				path := filepath.Join(t.TempDir(), "leader.yaml")
				if err := os.WriteFile(path, []byte(c.yaml), 0o600); err != nil {
					t.Fatal(err)
				}
				cfg, err = Load(path)
			}
			if err == nil && c.tweak != nil {
				c.tweak(&cfg)
			}
			if err == nil {
				err = cfg.Validate()
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if msg := err.Error(); !strings.Contains(msg, c.want) || strings.Contains(msg, "\n") {
				t.Fatalf("error %q: want one line mentioning %q", msg, c.want)
			}
		})
	}
}
