package dnsd

import (
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/podedge/podedge/router"
)

// randomPlatform is a platform that a test changes at random: tenants by
// name, pods with edges.
type randomPlatform struct {
	rng     *rand.Rand
	tenants map[string]string // tenant → pod
	list    []string          // the tenants' names, in no order
	at      map[string]int    // where each is in list
	pods    map[string][]router.EdgeEndpoint
	index   uint64
	next    int // for new tenant names
}

func newRandomPlatform(seed uint64, tenants int) *randomPlatform {
	p := &randomPlatform{rng: rand.New(rand.NewPCG(seed, seed^0x9e37)), tenants: map[string]string{}, pods: map[string][]router.EdgeEndpoint{}, at: map[string]int{}}
	for i := 0; i < 5; i++ {
		p.addPod()
	}
	for i := 0; i < tenants; i++ {
		p.addTenant()
	}
	return p
}

func (p *randomPlatform) podNames() []string { return slices.Sorted(maps.Keys(p.pods)) }

func (p *randomPlatform) addPod() {
	pod := fmt.Sprintf("pod-%d", p.rng.IntN(12))
	var edges []router.EdgeEndpoint
	for i := 0; i < p.rng.IntN(16); i++ {
		edges = append(edges, p.newEdge(pod))
	}
	p.pods[pod] = edges
}

func (p *randomPlatform) newEdge(pod string) router.EdgeEndpoint {
	ip := netip.AddrFrom4([4]byte{10, byte(p.rng.IntN(4)), byte(p.rng.IntN(4)), byte(1 + p.rng.IntN(250))})
	e := router.EdgeEndpoint{
		Endpoint: router.Endpoint{ID: ip.String(), Node: "n", Pod: pod, Addr: ip.String() + ":80", Weight: 1, Passing: p.rng.IntN(4) > 0},
		PublicIP: ip,
	}
	if p.rng.IntN(3) == 0 {
		e.PublicIPv6 = netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", p.rng.IntN(1000)))
	}
	return e
}

func (p *randomPlatform) addTenant() string {
	name := fmt.Sprintf("t%d", p.next)
	p.next++
	switch p.rng.IntN(200) {
	case 0:
		name = "pods" // taken by the zone
	case 1:
		name = "ns1"
	}
	pods := p.podNames()
	pod := fmt.Sprintf("gone-%d", p.rng.IntN(2)) // a pod the router may not know
	if len(pods) > 0 && p.rng.IntN(20) > 0 {
		pod = pods[p.rng.IntN(len(pods))]
	}
	p.tenants[name] = pod
	if _, ok := p.at[name]; !ok {
		p.at[name] = len(p.list)
		p.list = append(p.list, name)
	}
	return name
}

func (p *randomPlatform) anyTenant() string {
	if len(p.list) == 0 {
		return p.addTenant()
	}
	return p.list[p.rng.IntN(len(p.list))]
}

func (p *randomPlatform) removeTenant(name string) {
	delete(p.tenants, name)
	if i, ok := p.at[name]; ok {
		last := p.list[len(p.list)-1]
		p.list[i], p.at[last] = last, i
		p.list = p.list[:len(p.list)-1]
		delete(p.at, name)
	}
}

// step changes the platform at random and returns the tenants it added,
// moved or removed.
func (p *randomPlatform) step() []string {
	p.index += uint64(1 + p.rng.IntN(3))
	if p.rng.IntN(50) == 0 {
		p.index -= 10 // Consul's index going backwards
	}
	changed := map[string]bool{}
	for range 1 + p.rng.IntN(3) {
		switch k := p.rng.IntN(22); {
		case k < 5: // sign-ups
			for range 1 + p.rng.IntN(30) {
				changed[p.addTenant()] = true
			}
		case k < 10: // deletions
			for range 1 + p.rng.IntN(30) {
				name := p.anyTenant()
				p.removeTenant(name)
				changed[name] = true
			}
		case k < 12: // moves
			pods := p.podNames()
			for range 1 + p.rng.IntN(5) {
				if len(pods) > 0 {
					name := p.anyTenant()
					p.tenants[name] = pods[p.rng.IntN(len(pods))]
					changed[name] = true
				}
			}
		case k < 13: // a change written again unchanged
			changed[p.anyTenant()] = true
		case k < 18: // health
			for _, pod := range p.podNames() {
				edges := slices.Clone(p.pods[pod])
				if len(edges) > 0 && p.rng.IntN(3) == 0 {
					i := p.rng.IntN(len(edges))
					edges[i].Passing = !edges[i].Passing
				}
				p.pods[pod] = edges
			}
		case k < 20: // edges come and go
			pods := p.podNames()
			if len(pods) == 0 {
				break
			}
			pod := pods[p.rng.IntN(len(pods))]
			edges := slices.Clone(p.pods[pod])
			if len(edges) > 0 && p.rng.IntN(2) == 0 {
				edges = slices.Delete(edges, 0, 1)
			} else {
				edges = append(edges, p.newEdge(pod))
			}
			p.pods[pod] = edges
		case k < 21:
			p.addPod()
		default:
			if pods := p.podNames(); len(pods) > 0 {
				delete(p.pods, pods[p.rng.IntN(len(pods))])
			}
		}
	}
	return slices.Sorted(maps.Keys(changed))
}

// state is the platform as the router's input: new slices every time, as
// the watcher gives them.
func (p *randomPlatform) state() router.State {
	st := router.State{Index: p.index}
	for _, pod := range p.podNames() {
		st.Pods = append(st.Pods, router.Pod{Name: pod})
		st.Edges = append(st.Edges, p.pods[pod]...)
	}
	for _, name := range slices.Sorted(maps.Keys(p.tenants)) {
		st.Tenants = append(st.Tenants, router.Tenant{Name: name, Pod: p.tenants[name]})
	}
	return st
}

// zoneDump is a zone's content in comparable form.
type zoneDump struct {
	serial  uint32
	names   map[string]string // relative name → its sets' types and data
	tenants map[string]string // tenant → pod key
	n       int
	sum     uint64
}

func dumpZone(z *zone) zoneDump {
	d := zoneDump{serial: z.serial, names: map[string]string{}, tenants: map[string]string{}, n: z.tenants.n, sum: z.tenants.sum}
	for k, n := range z.names {
		var sb strings.Builder
		for _, s := range n.sets {
			fmt.Fprintf(&sb, "%d/%d/%d:%x;", s.rtype, s.n, s.show, s.data)
			if s.failOpen != nil {
				sb.WriteString("fail-open;")
			}
		}
		d.names[k] = sb.String()
	}
	z.tenants.each(func(name string, rec *tenantRec) { d.tenants[name] = rec.pod })
	return d
}

func (d zoneDump) diff(o zoneDump) string {
	var out []string
	for k, v := range d.names {
		if o.names[k] != v {
			out = append(out, fmt.Sprintf("name %q: %q vs %q", k, v, o.names[k]))
		}
	}
	for k := range o.names {
		if _, ok := d.names[k]; !ok {
			out = append(out, fmt.Sprintf("name %q only in the second", k))
		}
	}
	for k, v := range d.tenants {
		if o.tenants[k] != v {
			out = append(out, fmt.Sprintf("tenant %q: %q vs %q", k, v, o.tenants[k]))
		}
	}
	for k := range o.tenants {
		if _, ok := d.tenants[k]; !ok {
			out = append(out, fmt.Sprintf("tenant %q only in the second", k))
		}
	}
	if d.n != o.n || d.sum != o.sum {
		out = append(out, fmt.Sprintf("count/sum %d/%x vs %d/%x", d.n, d.sum, o.n, o.sum))
	}
	slices.Sort(out)
	if len(out) > 10 {
		out = append(out[:10], "...")
	}
	return strings.Join(out, "\n")
}

// sameContent reports whether d and o answer the same: whether the answers
// come from failing edges is not part of them.
func (d zoneDump) sameContent(o zoneDump) bool { return d.served().diff(o.served()) == "" }

func (d zoneDump) served() zoneDump {
	c := d
	c.names = map[string]string{}
	for k, v := range d.names {
		c.names[k] = strings.ReplaceAll(v, "fail-open;", "")
	}
	return c
}

// TestIncrementalMatchesFull applies a long random sequence of changes as
// deltas (sign-ups, deletions, moves, tenants named like the zone's own
// names, health, edges and pods coming and going, Consul's index going
// backwards) and checks after each that the zone is exactly the one a full
// build of the same snapshot gives, that every tenant is found and every
// removed one is not, that the serial moved exactly when the content did,
// and that the zone published before is unchanged.
func TestIncrementalMatchesFull(t *testing.T) {
	steps := 1500
	if testing.Short() {
		steps = 300
	}
	quiet := slog.New(slog.DiscardHandler)
	p := newRandomPlatform(1, 400)
	r, err := router.New(router.Config{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	inc, err := NewHandler(DefaultConfig(), nil, quiet)
	if err != nil {
		t.Fatal(err)
	}
	// Leaves of 8 make a deep trie of a few hundred tenants, which
	// splits and shrinks all along.
	inc.builder.tenants.leafMax = 8
	inc.apply(r.Publish(p.state()), nil, true)
	prev := inc.zone.Load()
	prevDump := dumpZone(prev)
	removed := map[string]bool{}
	for i := 0; i < steps; i++ {
		changed := p.step()
		s := r.Publish(p.state())
		full := i%500 == 499 // now and then, a resync
		inc.apply(s, changed, full)
		got := inc.zone.Load()

		ref, err := NewHandler(DefaultConfig(), nil, quiet)
		if err != nil {
			t.Fatal(err)
		}
		ref.builder.tenants.seed = inc.builder.tenants.seed // for equal sums
		ref.apply(s, nil, true)
		gotDump, want := dumpZone(got), dumpZone(ref.zone.Load())
		if d := gotDump.diff(want); d != "" {
			t.Fatalf("step %d (changed %v): the zone differs from a full build:\n%s", i, changed, d)
		}
		if d := dumpZone(prev).diff(prevDump); d != "" || dumpZone(prev).serial != prevDump.serial {
			t.Fatalf("step %d: the previous zone changed under its readers:\n%s", i, d)
		}
		if moved := got.serial != prevDump.serial; moved == gotDump.sameContent(prevDump) {
			t.Fatalf("step %d: serial %d → %d, content changed: %v\n%s", i, prevDump.serial, got.serial, !gotDump.sameContent(prevDump), gotDump.diff(prevDump))
		}
		if got.serial != prevDump.serial && int32(got.serial-prevDump.serial) <= 0 {
			t.Fatalf("step %d: serial went from %d to %d", i, prevDump.serial, got.serial)
		}
		for _, name := range changed {
			_, present := gotDump.tenants[name]
			removed[name] = !present
		}
		for name, gone := range removed {
			rec := got.tenants.get([]byte(name))
			if gone != (rec == nil) || !gone && rec.pod != gotDump.tenants[name] {
				t.Fatalf("step %d: lookup of %q gives %v (removed: %v)", i, name, rec, gone)
			}
		}
		prev, prevDump = got, gotDump
	}
	for name, pod := range prevDump.tenants {
		if rec := prev.tenants.get([]byte(name)); rec == nil || rec.pod != pod {
			t.Fatalf("tenant %q: lookup gives %v, want %q", name, rec, pod)
		}
	}
	if depth := trieDepth(prev.tenants.root); depth < 4 {
		t.Errorf("the trie never split (depth %d): the test does not cover splits", depth)
	}
}

func trieDepth(n *tnode) int {
	if !n.internal {
		return 1
	}
	d := 0
	for _, c := range n.kids {
		d = max(d, trieDepth(c))
	}
	return d + 1
}

// bigState is 100 pods of 13 edges and n tenants spread over them.
func bigState(n int) router.State {
	var st router.State
	for p := 0; p < 100; p++ {
		pod := fmt.Sprintf("pod-%d", p)
		st.Pods = append(st.Pods, router.Pod{Name: pod})
		for e := 0; e < 13; e++ {
			ip := fmt.Sprintf("10.%d.0.%d", p, e+1)
			st.Edges = append(st.Edges, router.EdgeEndpoint{
				Endpoint: router.Endpoint{ID: ip, Node: "n", Pod: pod, Addr: ip + ":80", Weight: 1, Passing: true},
				PublicIP: netip.MustParseAddr(ip),
			})
		}
	}
	st.Tenants = make([]router.Tenant, n)
	for i := range st.Tenants {
		st.Tenants[i] = router.Tenant{Name: fmt.Sprintf("tenant-%d", i), Pod: fmt.Sprintf("pod-%d", i%100)}
	}
	st.Index = 1
	return st
}

var benchSizes = []struct {
	name string
	n    int
}{{"100k", 100_000}, {"1M", 1_000_000}}

// BenchmarkDelta measures what one change costs dnsd with 100,000 and
// 1,000,000 tenants in 100 pods of 13 edges. "tenant" is a tenant moved to
// another pod and back, given as a delta of one name; "health" an edge
// failing and recovering. The snapshot pairs come from Router.Publish with
// states that differ in that one tenant or edge.
func BenchmarkDelta(b *testing.B) {
	quiet := slog.New(slog.DiscardHandler)
	for _, size := range benchSizes {
		if testing.Short() && size.n > 100_000 {
			continue
		}
		st := bigState(size.n)
		r, err := router.New(router.Config{Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		h, err := NewHandler(DefaultConfig(), nil, quiet)
		if err != nil {
			b.Fatal(err)
		}
		h.apply(r.Publish(st), nil, true)

		moved := slices.Clone(st.Tenants)
		moved[7].Pod = "pod-8"
		stMoved := st
		stMoved.Tenants, stMoved.Index = moved, 2
		tenantPair := [2]*router.Snapshot{r.Publish(stMoved), nil}
		st.Index = 3
		tenantPair[1] = r.Publish(st)
		name := []string{st.Tenants[7].Name}

		failing := slices.Clone(st.Edges)
		failing[5].Passing = false
		stFailing := st
		stFailing.Edges, stFailing.Index = failing, 4
		healthPair := [2]*router.Snapshot{r.Publish(stFailing), nil}
		st.Index = 5
		healthPair[1] = r.Publish(st)

		b.Run("tenant/"+size.name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				h.apply(tenantPair[i&1], name, false)
				i++
			}
		})
		b.Run("health/"+size.name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				h.apply(healthPair[i&1], nil, false)
				i++
			}
		})
		if got := answerOf(b, h, "tenant-7.example.test.", 1); len(got.Answer) != 14 {
			b.Fatalf("tenant-7 answers %v", got.Answer)
		}
		runtime.KeepAlive(r)
	}
}

// BenchmarkFullBuild measures a zone built from every tenant (the first
// snapshot, a resync) and reports the zone's memory per tenant: the heap
// it holds beyond the router's snapshot, whose strings it shares.
func BenchmarkFullBuild(b *testing.B) {
	quiet := slog.New(slog.DiscardHandler)
	for _, size := range benchSizes {
		if testing.Short() && size.n > 100_000 {
			continue
		}
		b.Run(size.name, func(b *testing.B) {
			r, err := router.New(router.Config{Logger: quiet})
			if err != nil {
				b.Fatal(err)
			}
			s := r.Publish(bigState(size.n))
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			h, err := NewHandler(DefaultConfig(), nil, quiet)
			if err != nil {
				b.Fatal(err)
			}
			h.apply(s, nil, true)
			runtime.GC()
			runtime.ReadMemStats(&after)
			perTenant := float64(after.HeapAlloc-before.HeapAlloc) / float64(size.n)
			b.ReportAllocs()
			for b.Loop() {
				h.apply(s, nil, true)
			}
			b.ReportMetric(perTenant, "zone-B/tenant")
			runtime.KeepAlive(h)
		})
	}
}

// BenchmarkTenantLookup is the trie's share of a tenant query.
func BenchmarkTenantLookup(b *testing.B) {
	quiet := slog.New(slog.DiscardHandler)
	r, _ := router.New(router.Config{Logger: quiet})
	h, _ := NewHandler(DefaultConfig(), nil, quiet)
	h.apply(r.Publish(bigState(100_000)), nil, true)
	z := h.zone.Load()
	name := []byte("tenant-4242")
	b.ReportAllocs()
	for b.Loop() {
		if z.tenants.get(name) == nil {
			b.Fatal("not found")
		}
	}
}
