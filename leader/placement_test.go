package leader

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

func TestDistanceKm(t *testing.T) {
	cases := []struct {
		name      string
		a, b      [2]float64
		want, tol float64
	}{
		{"same place", dublin, dublin, 0, 0.001},
		{"Dublin to London", dublin, london, 464, 3},
		{"London to Frankfurt", london, frankfurt, 638, 3},
		{"Dublin to Frankfurt", dublin, frankfurt, 1088, 5},
		{"London to New York", london, newYork, 5570, 15},
		{"London to Sydney", london, sydney, 16990, 30},
		{"antipodes", [2]float64{0, 0}, [2]float64{0, 180}, math.Pi * earthRadiusKm, 0.01},
		{"pole to pole", [2]float64{90, 0}, [2]float64{-90, 0}, math.Pi * earthRadiusKm, 0.01},
		{"across the date line", [2]float64{0, 179.5}, [2]float64{0, -179.5}, 111.2, 0.5},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := DistanceKm(c.a[0], c.a[1], c.b[0], c.b[1])
			if math.Abs(got-c.want) > c.tol {
				t.Fatalf("got %.1f km, want %.1f±%.1f", got, c.want, c.tol)
			}
			if back := DistanceKm(c.b[0], c.b[1], c.a[0], c.a[1]); math.Abs(back-got) > 1e-6 {
				t.Fatalf("not symmetric: %.3f vs %.3f", got, back)
			}
		})
	}
}

// pod is a candidate at a city with tenants of capacity and one passing edge.
func pod(name string, at [2]float64, tenants, capacity int) Candidate {
	return Candidate{Name: name, Lat: at[0], Lon: at[1], Tenants: tenants, Capacity: capacity, PassingEdges: 1}
}

func noEdges(c Candidate) Candidate { c.PassingEdges = 0; return c }

func cordoned(c Candidate) Candidate { c.Cordoned = true; return c }

func TestPlace(t *testing.T) {
	cases := []struct {
		name   string
		pods   []Candidate
		at     [2]float64
		nearKm float64
		want   string // "" when no pod is eligible
	}{
		{
			name: "nearest wins when usage ties",
			pods: []Candidate{pod("dublin", dublin, 0, 10), pod("london", london, 0, 10), pod("frankfurt", frankfurt, 0, 10)},
			at:   dublin, nearKm: 500, want: "dublin",
		},
		{
			name: "a near pod that is less used wins over the nearest",
			pods: []Candidate{pod("dublin", dublin, 1, 10), pod("london", london, 0, 10)},
			at:   dublin, nearKm: 500, want: "london",
		},
		{
			name: "usage is tenants over capacity",
			pods: []Candidate{pod("dublin", dublin, 5, 10), pod("london", london, 4, 5)},
			at:   dublin, nearKm: 500, want: "dublin",
		},
		{
			name: "a bigger pod with more tenants can be less used",
			pods: []Candidate{pod("dublin", dublin, 3, 4), pod("london", london, 20, 30)},
			at:   dublin, nearKm: 500, want: "london",
		},
		{
			name: "a far pod does not count as near however empty",
			pods: []Candidate{pod("dublin", dublin, 9, 10), pod("frankfurt", frankfurt, 0, 10)},
			at:   dublin, nearKm: 500, want: "dublin",
		},
		{
			name: "near_km 0 means strictly the nearest",
			pods: []Candidate{pod("dublin", dublin, 9, 10), pod("london", london, 0, 10)},
			at:   dublin, nearKm: 0, want: "dublin",
		},
		{
			name: "a full pod is skipped for the next nearest",
			pods: []Candidate{pod("dublin", dublin, 10, 10), pod("london", london, 10, 10), pod("frankfurt", frankfurt, 5, 10), pod("new-york", newYork, 0, 10)},
			at:   dublin, nearKm: 500, want: "frankfurt",
		},
		{
			name: "over-full pod (capacity lowered) is skipped",
			pods: []Candidate{pod("dublin", dublin, 12, 10), pod("london", london, 9, 10)},
			at:   dublin, nearKm: 500, want: "london",
		},
		{
			name: "a pod without a passing edge is never chosen",
			pods: []Candidate{noEdges(pod("dublin", dublin, 0, 10)), pod("sydney", sydney, 9, 10)},
			at:   dublin, nearKm: 500, want: "sydney",
		},
		{
			name: "a pod of capacity 0 takes no one",
			pods: []Candidate{pod("dublin", dublin, 0, 0), pod("london", london, 5, 10)},
			at:   dublin, nearKm: 500, want: "london",
		},
		{
			name: "nearness is measured from the nearest eligible pod",
			// London is full; Dublin (464 km) is the nearest eligible,
			// Frankfurt (638 km) is within 500 km of it and emptier.
			pods: []Candidate{pod("london", london, 10, 10), pod("dublin", dublin, 5, 10), pod("frankfurt", frankfurt, 1, 10)},
			at:   london, nearKm: 500, want: "frankfurt",
		},
		{
			name: "the other side of the world when nothing else is eligible",
			pods: []Candidate{pod("dublin", dublin, 10, 10), noEdges(pod("london", london, 0, 10)), pod("sydney", sydney, 0, 10)},
			at:   london, nearKm: 500, want: "sydney",
		},
		{
			name: "equal usage and distance goes to the first name",
			pods: []Candidate{pod("b", dublin, 1, 2), pod("a", dublin, 2, 4)},
			at:   dublin, nearKm: 500, want: "a",
		},
		{
			name: "a cordoned pod takes no one, however near and empty",
			pods: []Candidate{cordoned(pod("dublin", dublin, 0, 10)), pod("london", london, 9, 10)},
			at:   dublin, nearKm: 500, want: "london",
		},
		{
			name: "a cordoned pod is not the nearest that nearness is measured from",
			// Dublin is cordoned: London (464 km) is the nearest eligible,
			// and Frankfurt, 638 km from Dublin but 1088-464 > 500 km
			// beyond London, is not near.
			pods: []Candidate{cordoned(pod("dublin", dublin, 0, 10)), pod("london", london, 5, 10), pod("frankfurt", frankfurt, 0, 10)},
			at:   dublin, nearKm: 500, want: "london",
		},
		{
			name: "only cordoned pods: nothing eligible",
			pods: []Candidate{cordoned(pod("dublin", dublin, 0, 10)), cordoned(pod("sydney", sydney, 0, 10))},
			at:   dublin, nearKm: 500, want: "",
		},
		{
			name: "nothing eligible",
			pods: []Candidate{pod("dublin", dublin, 10, 10), noEdges(pod("london", london, 0, 10))},
			at:   dublin, nearKm: 500, want: "",
		},
		{name: "no pods", at: dublin, nearKm: 500, want: ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for i := 0; i < 10; i++ {
				pods := append([]Candidate(nil), c.pods...)
				rand.Shuffle(len(pods), func(i, j int) { pods[i], pods[j] = pods[j], pods[i] })
				got, ok := Place(pods, c.at[0], c.at[1], c.nearKm)
				if ok != (c.want != "") || got.Name != c.want {
					t.Fatalf("order %v: got %q (ok %v), want %q", names(pods), got.Name, ok, c.want)
				}
			}
		})
	}
}

func names(cs []Candidate) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Name
	}
	return out
}

func BenchmarkPlace(b *testing.B) {
	pods := make([]Candidate, 0, 100)
	for i := range 100 {
		pods = append(pods, Candidate{Name: string(rune('a'+i%26)) + string(rune('a'+i/26)), Lat: float64(i%180 - 90), Lon: float64(i*7%360 - 180), Capacity: 1000, Tenants: i * 9, PassingEdges: 2})
	}
	b.ReportAllocs()
	for b.Loop() {
		Place(pods, dublin[0], dublin[1], 500)
	}
}

// TestExplain: the explanation names the pod Place chooses first, then the
// other eligible, near pods in the order the rule ranks them, and leaves
// out the far, full, cordoned and edgeless ones.
func TestExplain(t *testing.T) {
	pods := []Candidate{
		pod("dublin", dublin, 9, 10), pod("london", london, 2, 10), pod("frankfurt", frankfurt, 0, 10),
		cordoned(pod("cork", [2]float64{51.8985, -8.4756}, 0, 10)), noEdges(pod("belfast", [2]float64{54.5973, -5.9301}, 0, 10)),
		pod("full", dublin, 10, 10), pod("sydney", sydney, 0, 10),
	}
	c, pl, ok := Explain(pods, Location{Lat: dublin[0], Lon: dublin[1], Source: "request"}, 500)
	if !ok || c.Name != "london" {
		t.Fatalf("chose %q (%v)", c.Name, ok)
	}
	var got []string
	for _, x := range pl.Candidates {
		got = append(got, x.Pod)
	}
	if fmt.Sprint(got) != "[london dublin]" {
		t.Fatalf("candidates %v, want [london dublin] (frankfurt is 1,088 km away, beyond 0 + 500)", got)
	}
	first := pl.Candidates[0]
	if pl.DistanceKm != first.DistanceKm || pl.PodUsage != 0.2 || first.Usage != 0.2 || first.Tenants != 2 || first.Capacity != 10 {
		t.Fatalf("placement %+v", pl)
	}
	if d := pl.DistanceKm; d < 460 || d > 467 {
		t.Fatalf("Dublin to London: %v km", d)
	}
	if pl.Location != (Location{Lat: dublin[0], Lon: dublin[1], Source: "request"}) {
		t.Fatalf("location %+v", pl.Location)
	}
	if _, pl, ok := Explain(pods[3:6], pl.Location, 500); ok || len(pl.Candidates) != 0 {
		t.Fatalf("nothing eligible: %v %+v", ok, pl)
	}
}
