package leader

import (
	"cmp"
	"math"
)

// earthRadiusKm is the mean radius of the Earth (IUGG), for great-circle
// distances.
const earthRadiusKm = 6371.0088

// DistanceKm is the great-circle distance between two points given in
// degrees, by the haversine formula.
func DistanceKm(lat1, lon1, lat2, lon2 float64) float64 {
	rad := math.Pi / 180
	dLat := (lat2 - lat1) * rad
	dLon := (lon2 - lon1) * rad
	a := math.Sin(dLat/2)*math.Sin(dLat/2) +
		math.Cos(lat1*rad)*math.Cos(lat2*rad)*math.Sin(dLon/2)*math.Sin(dLon/2)
	// Rounding can push a a hair above 1 for antipodal points.
	return 2 * earthRadiusKm * math.Asin(math.Sqrt(min(1, a)))
}

// Candidate is a pod as placement sees it.
type Candidate struct {
	Name     string
	Lat, Lon float64
	// Capacity is how many tenants the pod may hold; Tenants how many it
	// holds now.
	Capacity, Tenants int
	// PassingEdges is how many of its edges pass their health checks.
	PassingEdges int
	// Cordoned is true when the pod is not accepting new tenants.
	Cordoned bool
}

// Eligible reports whether the pod can take a tenant: it is accepting,
// has a free seat and at least one passing edge to serve it.
func (c Candidate) Eligible() bool {
	return !c.Cordoned && c.Tenants < c.Capacity && c.PassingEdges > 0
}

// Place picks the pod for a tenant signing up at lat, lon, and reports
// false when no pod is eligible. Among eligible pods, those no farther than
// the nearest one plus nearKm count as equally near; of those the least used
// (tenants/capacity) wins; a tie goes to the nearer pod, then to the first
// name, so the answer never depends on the order of pods.
func Place(pods []Candidate, lat, lon, nearKm float64) (Candidate, bool) {
	// Two passes, computing each distance twice, so that placing
	// allocates nothing.
	nearest := math.Inf(1)
	for _, p := range pods {
		if p.Eligible() {
			nearest = min(nearest, DistanceKm(lat, lon, p.Lat, p.Lon))
		}
	}
	best, bestDist := -1, 0.0
	for i, p := range pods {
		if !p.Eligible() {
			continue
		}
		d := DistanceKm(lat, lon, p.Lat, p.Lon)
		if d > nearest+nearKm {
			continue
		}
		if best < 0 || better(p, d, pods[best], bestDist) {
			best, bestDist = i, d
		}
	}
	if best < 0 {
		return Candidate{}, false
	}
	return pods[best], true
}

// better reports whether pod a at distance da beats pod b at db among the
// equally near. Usage is compared as exact fractions: a.T/a.C < b.T/b.C.
func better(a Candidate, da float64, b Candidate, db float64) bool {
	if c := cmp.Compare(a.Tenants*b.Capacity, b.Tenants*a.Capacity); c != 0 {
		return c < 0
	}
	if da != db {
		return da < db
	}
	return a.Name < b.Name
}
