package leader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/oschwald/maxminddb-golang/v2"
)

// geoDB locates IP addresses in a MaxMind-format database (GeoLite2-City,
// DB-IP City Lite, any .mmdb with city coordinates) and opens the file
// again when it is replaced, as geoipupdate does, without a restart.
type geoDB struct {
	path string
	log  *slog.Logger
	m    *metrics

	mu     sync.RWMutex
	reader *maxminddb.Reader // nil until opened
	file   os.FileInfo       // what reader was opened from
}

// Why an address has no location; each is a 400 unless the configuration
// names a fallback.
var (
	errNoDatabase = errors.New("no GeoIP database is configured (geoip.database)")
	errNotFound   = errors.New("the GeoIP database does not know it")
)

// openGeo opens the database at path.
func openGeo(path string, log *slog.Logger, m *metrics) (*geoDB, error) {
	g := &geoDB{path: path, log: log, m: m}
	if err := g.reopen(); err != nil {
		return nil, err
	}
	return g, nil
}

// reopen opens the file at g.path if it is not the one already open, and
// swaps it in. Lookups in flight finish on the old reader before it closes.
func (g *geoDB) reopen() error {
	fi, err := os.Stat(g.path)
	if err != nil {
		return err
	}
	g.mu.RLock()
	same := g.file != nil && os.SameFile(g.file, fi) && g.file.ModTime().Equal(fi.ModTime()) && g.file.Size() == fi.Size()
	g.mu.RUnlock()
	if same {
		return nil
	}
	r, err := maxminddb.Open(g.path)
	if err != nil {
		return err
	}
	if r.Metadata.IPVersion != 6 && r.Metadata.IPVersion != 4 {
		r.Close()
		return fmt.Errorf("%s: IP version %d", g.path, r.Metadata.IPVersion)
	}
	g.mu.Lock()
	old := g.reader
	g.reader, g.file = r, fi
	g.mu.Unlock()
	if old != nil {
		old.Close()
	}
	g.log.Info("geoip database opened", "path", g.path, "type", r.Metadata.DatabaseType,
		"built", r.Metadata.BuildTime().UTC().Format(time.RFC3339), "nodes", r.Metadata.NodeCount)
	return nil
}

// watch checks the file every interval until ctx ends and opens it again
// when it was replaced. A file that is missing or does not open leaves the
// last one in use.
func (g *geoDB) watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		g.mu.RLock()
		before := g.file
		g.mu.RUnlock()
		err := g.reopen()
		g.mu.RLock()
		reopened := g.file != before
		g.mu.RUnlock()
		switch {
		case err != nil:
			g.m.geoReloads.WithLabelValues("error").Inc()
			if !failing {
				g.log.Warn("geoip database could not be opened again; the last one stays in use", "path", g.path, "error", err.Error())
			}
			failing = true
		case reopened:
			g.m.geoReloads.WithLabelValues("ok").Inc()
			failing = false
		default:
			failing = false
		}
	}
}

// close closes the database.
func (g *geoDB) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.reader != nil {
		g.reader.Close()
		g.reader = nil
	}
}

// cityRecord is the part of a City record placement needs. The fields
// start as NaN: a record without coordinates leaves them so.
type cityRecord struct {
	Location struct {
		Latitude  float64 `maxminddb:"latitude"`
		Longitude float64 `maxminddb:"longitude"`
	} `maxminddb:"location"`
}

// locate returns the coordinates of ip; errNotFound when the database has
// none for it.
func (g *geoDB) locate(ip netip.Addr) (lat, lon float64, err error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.reader == nil {
		return 0, 0, errNoDatabase
	}
	res := g.reader.Lookup(ip)
	if err := res.Err(); err != nil {
		return 0, 0, fmt.Errorf("geoip lookup: %w", err)
	}
	if !res.Found() {
		return 0, 0, errNotFound
	}
	var rec cityRecord
	rec.Location.Latitude, rec.Location.Longitude = math.NaN(), math.NaN()
	if err := res.Decode(&rec); err != nil {
		return 0, 0, fmt.Errorf("geoip record of %s: %w", ip, err)
	}
	lat, lon = rec.Location.Latitude, rec.Location.Longitude
	if math.IsNaN(lat) || math.IsNaN(lon) || lat < -90 || lat > 90 || lon < -180 || lon > 180 {
		return 0, 0, errNotFound
	}
	return lat, lon, nil
}

// unroutable names why ip cannot be located, or returns "" for an address
// of the public internet.
func unroutable(ip netip.Addr) string {
	switch {
	case ip.IsLoopback():
		return "a loopback address"
	case ip.IsPrivate():
		return "a private address"
	case ip.IsLinkLocalUnicast():
		return "a link-local address"
	case ip.IsUnspecified():
		return "the unspecified address"
	case ip.IsMulticast():
		return "a multicast address"
	case cgnat.Contains(ip):
		return "a carrier-grade NAT address (RFC 6598)"
	}
	return ""
}

var cgnat = netip.MustParsePrefix("100.64.0.0/10")
