package dnsd

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// TestZonemaster runs Zonemaster's DNSSEC tests (Debian package
// zonemaster-cli) against dnsd signing the zone, undelegated, with the DS
// given as the parent would hold it. Zonemaster speaks to port 53 only:
// dnsd listens on 127.0.0.77:53, which needs root or
// CAP_NET_BIND_SERVICE. It must report no WARNING, ERROR or CRITICAL.
func TestZonemaster(t *testing.T) {
	bin, err := exec.LookPath("zonemaster-cli")
	if err != nil {
		t.Fatalf("zonemaster-cli is needed (Debian package zonemaster-cli): %v", err)
	}
	l, err := net.ListenPacket("udp", "127.0.0.77:53")
	if err != nil {
		t.Skipf("cannot listen on port 53 for Zonemaster: %v", err)
	}
	l.Close()
	pemKey, _ := generateKey(dns.ECDSAP256SHA256)
	keyFile := filepath.Join(t.TempDir(), "key.pem")
	os.WriteFile(keyFile, pemKey, 0o600)
	ts := startServer(t, nil, func(c *Config) {
		c.Listen = "127.0.0.77:53"
		c.DNSSEC.Enabled, c.DNSSEC.KeyFile = true, keyFile
		c.NS = []NameServer{{Name: "ns1", Addresses: []string{"127.0.0.77"}}}
	})
	ts.Router().Publish(benchState())
	ds, _ := dns.NewRR(ts.Handler().DS())
	d := ds.(*dns.DS)
	out, err := exec.Command(bin, "--no-ipv6", "--level", "INFO", "--test", "DNSSEC",
		"--ns", "ns1.example.test/127.0.0.77",
		"--ds", fmt.Sprintf("%d,%d,%d,%s", d.KeyTag, d.Algorithm, d.DigestType, strings.ToLower(d.Digest)),
		"example.test").CombinedOutput()
	t.Logf("zonemaster-cli:\n%s", out)
	if err != nil {
		t.Fatalf("zonemaster-cli: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 2 && (f[1] == "WARNING" || f[1] == "ERROR" || f[1] == "CRITICAL") {
			t.Errorf("Zonemaster: %s", line)
		}
	}
}
