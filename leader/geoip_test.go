package leader

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"
	"github.com/prometheus/client_golang/prometheus"
)

// Networks of the test databases, on three continents and in IPv6. The
// addresses are public ones; the database is made up.
const (
	europeNet  = "81.2.69.0/24"    // London
	sydneyNet  = "1.128.0.0/16"    // Sydney
	seattleNet = "216.160.83.0/24" // Seattle
	berlinNet  = "2a02:cf40::/32"  // Berlin, IPv6
	countryNet = "89.160.20.0/24"  // a record without coordinates
)

var (
	londonAt  = [2]float64{51.5142, -0.0931}
	sydneyAt  = [2]float64{-33.8591, 151.2002}
	seattleAt = [2]float64{47.6034, -122.3414}
	berlinAt  = [2]float64{52.5200, 13.4050}
)

// writeGeoDB writes a City database mapping each network to a position to
// path, as geoipupdate does: into a new file, renamed over the old one.
func writeGeoDB(t testing.TB, path string, networks map[string][2]float64) {
	t.Helper()
	tree, err := mmdbwriter.New(mmdbwriter.Options{DatabaseType: "GeoLite2-City", RecordSize: 28, IPVersion: 6})
	if err != nil {
		t.Fatal(err)
	}
	for cidr, at := range networks {
		_, network, err := net.ParseCIDR(cidr)
		if err != nil {
			t.Fatal(err)
		}
		if err := tree.Insert(network, mmdbtype.Map{
			"city":     mmdbtype.Map{"names": mmdbtype.Map{"en": mmdbtype.String(cidr)}},
			"location": mmdbtype.Map{"latitude": mmdbtype.Float64(at[0]), "longitude": mmdbtype.Float64(at[1]), "accuracy_radius": mmdbtype.Uint16(20)},
		}); err != nil {
			t.Fatal(err)
		}
	}
	_, network, _ := net.ParseCIDR(countryNet)
	if err := tree.Insert(network, mmdbtype.Map{"country": mmdbtype.Map{"iso_code": mmdbtype.String("SE")}}); err != nil {
		t.Fatal(err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "geo-*.mmdb")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tree.WriteTo(tmp); err != nil {
		t.Fatal(err)
	}
	if err := tmp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		t.Fatal(err)
	}
}

func threeContinents() map[string][2]float64 {
	return map[string][2]float64{europeNet: londonAt, sydneyNet: sydneyAt, seattleNet: seattleAt, berlinNet: berlinAt}
}

func testGeoDB(t testing.TB) *geoDB {
	t.Helper()
	path := filepath.Join(t.TempDir(), "city.mmdb")
	writeGeoDB(t, path, threeContinents())
	g, err := openGeo(path, slog.New(slog.DiscardHandler), newMetrics(prometheus.NewRegistry(), nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.close)
	return g
}

func TestGeoLookup(t *testing.T) {
	g := testGeoDB(t)
	for _, c := range []struct {
		name, ip string
		want     [2]float64
		found    bool
	}{
		{"Europe", "81.2.69.160", londonAt, true},
		{"Sydney", "1.128.200.1", sydneyAt, true},
		{"North America", "216.160.83.56", seattleAt, true},
		{"IPv6", "2a02:cf40:add:1::1", berlinAt, true},
		{"IPv4 in IPv6", "::ffff:81.2.69.160", londonAt, true},
		{"unknown", "8.8.8.8", [2]float64{}, false},
		{"unknown IPv6", "2001:4860::8888", [2]float64{}, false},
		{"a record without coordinates", "89.160.20.112", [2]float64{}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			lat, lon, err := g.locate(netip.MustParseAddr(c.ip).Unmap())
			if !c.found {
				if err != errNotFound {
					t.Fatalf("got %v, %v, %v; want not found", lat, lon, err)
				}
				return
			}
			if err != nil || lat != c.want[0] || lon != c.want[1] {
				t.Fatalf("got %v, %v, %v; want %v", lat, lon, err, c.want)
			}
		})
	}
}

// TestLocate: every way an address can fail to give a location is a 400
// saying which, and the fallback, when configured, places it instead.
func TestLocate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "city.mmdb")
	writeGeoDB(t, path, threeContinents())
	server := func(db string, fallback *GeoPoint) *Server {
		cfg := DefaultConfig()
		cfg.GeoIP.Database, cfg.GeoIP.Fallback = db, fallback
		s, err := New(cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		if s.geo != nil {
			t.Cleanup(s.geo.close)
		}
		return s
	}
	lat, lon := 50.11, 8.68
	with, without, fallback := server(path, nil), server("", nil), server(path, &GeoPoint{Lat: &lat, Lon: &lon})
	cases := []struct {
		name, ip string
		s        *Server
		want     string // the 400's message; "" when located
	}{
		{"located", "81.2.69.160", with, ""},
		{"IPv6 located", "2a02:cf40::1", with, ""},
		{"unknown", "8.8.8.8", with, "ip: the GeoIP database has no location for 8.8.8.8"},
		{"private", "10.1.2.3", with, "ip: 10.1.2.3 is a private address"},
		{"private IPv6", "fd00::1", with, "fd00::1 is a private address"},
		{"loopback", "127.0.0.1", with, "127.0.0.1 is a loopback address"},
		{"loopback IPv6", "::1", with, "::1 is a loopback address"},
		{"IPv4-mapped loopback", "::ffff:127.0.0.1", with, "127.0.0.1 is a loopback address"},
		{"link-local", "169.254.1.1", with, "is a link-local address"},
		{"carrier-grade NAT", "100.64.1.1", with, "carrier-grade NAT"},
		{"unspecified", "0.0.0.0", with, "the unspecified address"},
		{"multicast", "ff02::1", with, "a multicast address"},
		{"zone", "fe80::1%eth0", with, "has a zone"},
		{"not an address", "81.2.69", with, `ip: "81.2.69" is not an IPv4 or IPv6 address`},
		{"a name", "example.com", with, "is not an IPv4 or IPv6 address"},
		{"no database", "81.2.69.160", without, "ip: no GeoIP database is configured (geoip.database)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			loc, err := c.s.locate(c.ip)
			if c.want == "" {
				if err != nil || loc.Source != "ip" {
					t.Fatalf("got %+v, %v", loc, err)
				}
				return
			}
			if e := asError(err); err == nil || e.Kind != KindInvalid || !strings.Contains(e.Msg, c.want) {
				t.Fatalf("got %+v, %v; want a 400 saying %q", loc, err, c.want)
			}
			if c.name == "not an address" || c.name == "a name" || c.name == "zone" {
				return // malformed: refused whatever the configuration
			}
			loc, err = fallback.locate(c.ip)
			if c.s == without {
				loc, err = server("", &GeoPoint{Lat: &lat, Lon: &lon}).locate(c.ip)
			}
			if err != nil || loc != (Location{Lat: lat, Lon: lon, Source: "fallback"}) {
				t.Fatalf("with a fallback: %+v, %v", loc, err)
			}
		})
	}
}

// BenchmarkGeoLookup locates an address in a City database of 20,000
// networks:
//
//	go test -run '^$' -bench BenchmarkGeoLookup -benchmem ./leader/
func BenchmarkGeoLookup(b *testing.B) {
	networks := threeContinents()
	for i := range 20_000 {
		networks[fmt.Sprintf("%d.%d.%d.0/24", 11+i/65536, i/256%256, i%256)] = [2]float64{float64(i%180) - 90, float64(i%360) - 180}
	}
	path := filepath.Join(b.TempDir(), "city.mmdb")
	writeGeoDB(b, path, networks)
	g, err := openGeo(path, slog.New(slog.DiscardHandler), newMetrics(prometheus.NewRegistry(), nil))
	if err != nil {
		b.Fatal(err)
	}
	defer g.close()
	for _, c := range []struct{ name, ip string }{{"ipv4", "81.2.69.160"}, {"ipv6", "2a02:cf40::1"}, {"many-ipv4", "11.7.13.9"}, {"unknown", "8.8.8.8"}} {
		ip := netip.MustParseAddr(c.ip)
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				_, _, _ = g.locate(ip)
			}
		})
	}
}
