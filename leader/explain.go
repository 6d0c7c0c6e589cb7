package leader

import (
	"context"
	"math"
	"net/netip"
	"slices"

	"github.com/podedge/podedge/router"
)

// Location is where a sign-up is placed from.
type Location struct {
	Lat float64 `json:"lat"`
	Lon float64 `json:"lon"`
	// Source is "request" (lat and lon given), "ip" (found for the
	// address in the GeoIP database) or "fallback" (geoip.fallback, for an
	// address that could not be located).
	Source string `json:"source"`
}

// Placement explains a placement: where from, the pod chosen (its distance
// and its usage before the new tenant), and the pods that were eligible
// and near, best first.
type Placement struct {
	Location   Location        `json:"location"`
	DistanceKm float64         `json:"distance_km"`
	PodUsage   float64         `json:"pod_usage"`
	Candidates []candidateJSON `json:"candidates"`
}

// candidateJSON is an eligible, near pod as a placement shows it.
type candidateJSON struct {
	Pod        string  `json:"pod"`
	DistanceKm float64 `json:"distance_km"`
	Tenants    int     `json:"tenants"`
	Capacity   int     `json:"capacity"`
	Usage      float64 `json:"usage"`
}

// Placed is a sign-up as stored, with the explanation of its placement.
type Placed struct {
	Tenant    router.Tenant
	Placement Placement
}

// Explain places a tenant signing up at loc as Place does, and explains
// the choice. Unlike Place it allocates: it is for answers, not for loops.
func Explain(pods []Candidate, loc Location, nearKm float64) (Candidate, Placement, bool) {
	chosen, ok := Place(pods, loc.Lat, loc.Lon, nearKm)
	pl := Placement{Location: loc, Candidates: []candidateJSON{}}
	if !ok {
		return chosen, pl, false
	}
	type near struct {
		c Candidate
		d float64
	}
	nearest := math.Inf(1)
	var all []near
	for _, p := range pods {
		if p.Eligible() {
			d := DistanceKm(loc.Lat, loc.Lon, p.Lat, p.Lon)
			nearest = min(nearest, d)
			all = append(all, near{p, d})
		}
	}
	all = slices.DeleteFunc(all, func(n near) bool { return n.d > nearest+nearKm })
	slices.SortFunc(all, func(a, b near) int {
		switch {
		case better(a.c, a.d, b.c, b.d):
			return -1
		case better(b.c, b.d, a.c, a.d):
			return 1
		}
		return 0
	})
	for _, n := range all {
		pl.Candidates = append(pl.Candidates, candidateJSON{
			Pod: n.c.Name, DistanceKm: round(n.d, 1), Tenants: n.c.Tenants, Capacity: n.c.Capacity,
			Usage: round(float64(n.c.Tenants)/float64(n.c.Capacity), 4),
		})
	}
	pl.DistanceKm = round(DistanceKm(loc.Lat, loc.Lon, chosen.Lat, chosen.Lon), 1)
	pl.PodUsage = round(float64(chosen.Tenants)/float64(chosen.Capacity), 4)
	return chosen, pl, true
}

// round rounds x to n decimals, for answers people read.
func round(x float64, n int) float64 {
	p := math.Pow(10, float64(n))
	return math.Round(x*p) / p
}

// DryRun places su as SignUp would, from the same reads, and writes
// nothing. It returns the pod and the explanation, and the index of the
// state it read.
func (s *Store) DryRun(ctx context.Context, su Signup) (string, Placement, uint64, error) {
	var pod string
	var pl Placement
	index, err := s.write(ctx, "placement", func(string) error {
		pods, err := s.loadPods(ctx)
		if err != nil {
			return err
		}
		view := s.view()
		if !view.Synced {
			return &Error{Kind: KindUnavailable, Msg: "the leader has no view of edge health yet; retry"}
		}
		c, p, ok := Explain(candidates(pods, view), su.Location(), s.nearKm)
		if !ok {
			return &Error{Kind: KindNoCapacity, Msg: "no pod has a free seat and a passing edge"}
		}
		pod, pl = c.Name, p
		return nil
	})
	return pod, pl, index, err
}

// locate finds where a sign-up given as an IP address is placed from.
func (s *Server) locate(raw string) (Location, error) {
	ip, err := netip.ParseAddr(raw)
	if err != nil {
		return Location{}, invalid("ip: %q is not an IPv4 or IPv6 address", raw)
	}
	if ip.Zone() != "" {
		return Location{}, invalid("ip: %q has a zone; give the customer's public address", raw)
	}
	ip = ip.Unmap()
	why, result := "", "located"
	var lat, lon float64
	switch u := unroutable(ip); {
	case u != "":
		why, result = ip.String()+" is "+u, "unroutable"
	case s.geo == nil:
		why, result = errNoDatabase.Error(), "no_database"
	default:
		lat, lon, err = s.geo.locate(ip)
		switch {
		case err == errNotFound:
			why, result = "the GeoIP database has no location for "+ip.String(), "not_found"
		case err != nil:
			s.m.geoLookups.WithLabelValues("error").Inc()
			return Location{}, &Error{Kind: KindUnavailable, Msg: err.Error()}
		}
	}
	s.m.geoLookups.WithLabelValues(result).Inc()
	if why == "" {
		return Location{Lat: lat, Lon: lon, Source: "ip"}, nil
	}
	if fb := s.cfg.GeoIP.Fallback; fb != nil {
		return Location{Lat: *fb.Lat, Lon: *fb.Lon, Source: "fallback"}, nil
	}
	return Location{}, invalid("ip: %s; send lat and lon instead", why)
}
