package leader

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/changelog"
	"github.com/podedge/podedge/internal/consulkv"
	"github.com/podedge/podedge/internal/consultest"
	"github.com/podedge/podedge/router"
)

// reader is a router following the platform as an edge's or dnsd's does,
// through a proxy the test can cut (to hold the reader back).
type reader struct {
	r     *router.Router
	proxy *cutProxy
	stop  func()
}

func startReader(t testing.TB, agent *consultest.Agent) *reader {
	t.Helper()
	p := newCutProxy(t, agent.HTTPAddr)
	cfg := api.DefaultConfig()
	cfg.Address = p.addr
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lister, err := consulkv.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r, err := router.New(router.Config{KV: lister, Logger: testLogger(t), RetryBase: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond, WaitTime: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx, client) }()
	rd := &reader{r: r, proxy: p}
	var once sync.Once
	rd.stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(rd.stop)
	return rd
}

// cutProxy forwards TCP to Consul until cut, when it drops every connection
// and refuses new ones until healed.
type cutProxy struct {
	addr   string
	target string
	cut    atomic.Bool
	mu     sync.Mutex
	conns  map[net.Conn]bool
}

func newCutProxy(t testing.TB, target string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	p := &cutProxy{addr: ln.Addr().String(), target: target, conns: map[net.Conn]bool{}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if p.cut.Load() {
				c.Close()
				continue
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns[c], p.conns[up] = true, true
			p.mu.Unlock()
			go func() { io.Copy(up, c); up.Close() }()
			go func() { io.Copy(c, up); c.Close() }()
		}
	}()
	return p
}

func (p *cutProxy) setCut(on bool) {
	p.cut.Store(on)
	if !on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

// folders reads pods/ and tenants/ as the router would route them.
func folders(t testing.TB, agent *consultest.Agent) (map[string]router.Pod, map[string]router.Tenant) {
	t.Helper()
	pods, tenants := map[string]router.Pod{}, map[string]router.Tenant{}
	pairs, _, err := agent.Client.KV().List("podedge/", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pairs {
		if name, ok := strings.CutPrefix(p.Key, "podedge/pods/"); ok {
			if v, err := router.DecodePod(name, p.Value); err == nil {
				pods[name] = v
			}
		}
		if name, ok := strings.CutPrefix(p.Key, "podedge/tenants/"); ok {
			if v, err := router.DecodeTenant(name, p.Value); err == nil {
				tenants[name] = v
			}
		}
	}
	return pods, tenants
}

// differences lists how s differs from the folders.
func differences(s *router.Snapshot, pods map[string]router.Pod, tenants map[string]router.Tenant) []string {
	var out []string
	s.AscendTenants("", func(t *router.Tenant) bool {
		if want, ok := tenants[t.Name]; !ok {
			out = append(out, "extra tenant "+t.Name)
		} else if !want.Equal(*t) {
			out = append(out, fmt.Sprintf("tenant %s: %+v, folder %+v", t.Name, *t, want))
		}
		return true
	})
	for name := range tenants {
		if s.Tenant(name) == nil {
			out = append(out, "missing tenant "+name)
		}
	}
	for _, p := range s.Pods() {
		if want, ok := pods[p.Name]; p.Registered && (!ok || !want.Equal(p.Pod)) {
			out = append(out, fmt.Sprintf("pod %s: %+v, folder %+v", p.Name, p.Pod, want))
		}
	}
	for name := range pods {
		if p := s.Pod(name); p == nil || !p.Registered {
			out = append(out, "missing pod "+name)
		}
	}
	return out
}

// waitSame waits until every reader's snapshot holds exactly what the
// folders hold.
func waitSame(t testing.TB, agent *consultest.Agent, within time.Duration, readers ...*router.Router) {
	t.Helper()
	var diff []string
	deadline := time.Now().Add(within)
	for {
		pods, tenants := folders(t, agent)
		diff = nil
		for i, r := range readers {
			for _, d := range differences(r.Snapshot(), pods, tenants) {
				diff = append(diff, fmt.Sprintf("reader %d: %s", i, d))
			}
		}
		if len(diff) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("readers differ from the folders after %s:\n%s", within, strings.Join(diff[:min(len(diff), 20)], "\n"))
		}
		time.Sleep(20 * time.Millisecond) // polling, bounded by the deadline
	}
}

// Readers follow every kind of write through the change log, not the
// folders: after sign-ups, moves, domain changes and deletions they hold
// exactly what the folders hold, and none of them read the folders again.
func TestReadersFollowTheChangeLog(t *testing.T) {
	agent := consultest.Start(t)
	rs := startCluster(t, agent, 2)
	lead := waitLeader(t, rs)
	expect(t, 201, "PUT", lead.url+"/v1/pods/dub", podBody(dublin, 50), "")
	expect(t, 201, "PUT", lead.url+"/v1/pods/fra", podBody(frankfurt, 50), "")
	edges(t, agent, "dub", "fra")
	waitEdges(t, rs, "dub", 1)
	waitEdges(t, rs, "fra", 1)
	readers := []*reader{startReader(t, agent), startReader(t, agent)}
	for i := range 20 {
		expect(t, 201, "POST", rs[i%2].url+"/v1/tenants", signupBody(fmt.Sprintf("t%02d", i), dublin), "")
	}
	expect(t, 200, "PUT", lead.url+"/v1/tenants/t01/domains/shop.t01.com", nil, "")
	expect(t, 200, "POST", lead.url+"/v1/tenants/t02/move", map[string]any{"pod": "fra"}, "")
	expect(t, 204, "DELETE", lead.url+"/v1/tenants/t03", nil, "")
	expect(t, 200, "PUT", lead.url+"/v1/pods/dub", podBody(dublin, 60), "")
	expect(t, 204, "DELETE", lead.url+"/v1/tenants/t01/domains/shop.t01.com", nil, "")
	all := []*router.Router{rs[0].srv.router, rs[1].srv.router}
	for _, rd := range readers {
		all = append(all, rd.r)
	}
	waitSame(t, agent, 10*time.Second, all...)
	for i, r := range all {
		// The replicas started before the log did: they watched the
		// folders, and read them once more when it appeared. The readers
		// read them once, at their start.
		st, want := r.LogStatus(), map[string]uint64{"start": 1}
		if i < 2 {
			want = map[string]uint64{"log_started": 1}
		}
		if !st.Following || fmt.Sprint(st.Resyncs) != fmt.Sprint(want) {
			t.Errorf("reader %d: %+v; want it following, having read the folders %v", i, st, want)
		}
	}
}

// A value written or deleted straight in KV, bypassing the leader, reaches
// every reader through the leader's repair entries within 5 s; so do
// malformed values, which readers then stop routing, as they would have
// from the folders.
func TestOutOfBandWritesReachReaders(t *testing.T) {
	agent := consultest.Start(t)
	rs := startCluster(t, agent, 1, func(c *Config) { c.AuditInterval = 200 * time.Millisecond })
	lead := rs[0]
	expect(t, 201, "PUT", lead.url+"/v1/pods/dub", podBody(dublin, 50), "")
	edges(t, agent, "dub")
	waitEdges(t, rs, "dub", 1)
	for _, name := range []string{"kept", "deleted", "spoiled"} {
		expect(t, 201, "POST", lead.url+"/v1/tenants", signupBody(name, dublin), "")
	}
	rd := startReader(t, agent)
	waitSame(t, agent, 5*time.Second, rd.r)
	agent.Put(t, "podedge/tenants/manual", `{"name":"manual","pod":"dub","domains":["manual.example.com"]}`)
	agent.Put(t, "podedge/tenants/kept", `{"name":"kept","pod":"dub","domains":["kept.example.com"]}`)
	agent.Put(t, "podedge/tenants/spoiled", `{"name":"spoiled","pod":`)
	agent.Put(t, "podedge/pods/manual-pod", `{"name":"manual-pod","region":"eu","lat":1,"lon":2,"capacity":3}`)
	if _, err := agent.Client.KV().Delete("podedge/tenants/deleted", nil); err != nil {
		t.Fatal(err)
	}
	waitSame(t, agent, 5*time.Second, rd.r)
	if _, ok := rd.r.Snapshot().LookupString("manual.example.com"); !ok {
		t.Fatal("the domain of the tenant written by hand is not routed")
	}
	if st := rd.r.LogStatus(); !st.Following || len(st.Resyncs) != 1 {
		t.Fatalf("reader %+v; want it following, never reading the folders again", st)
	}
}

// A reader held back while more entries are written than the ring holds
// reads the folders again when it comes back, once, and ends exact; one
// held back for fewer catches up from the ring alone.
func TestReaderBehindTheRing(t *testing.T) {
	agent := consultest.Start(t)
	rs := startCluster(t, agent, 1, func(c *Config) { c.LogRing = 16 })
	lead := rs[0]
	expect(t, 201, "PUT", lead.url+"/v1/pods/dub", podBody(dublin, 500), "")
	edges(t, agent, "dub")
	waitEdges(t, rs, "dub", 1)
	rd := startReader(t, agent)
	waitSame(t, agent, 5*time.Second, rd.r)
	n := 0
	signups := func(k int) {
		for range k {
			expect(t, 201, "POST", lead.url+"/v1/tenants", signupBody(fmt.Sprintf("r%03d", n), dublin), "")
			n++
		}
	}
	rd.proxy.setCut(true)
	signups(12) // within the ring, beyond the head's inline entries
	rd.proxy.setCut(false)
	waitSame(t, agent, 10*time.Second, rd.r)
	if st := rd.r.LogStatus(); len(st.Resyncs) != 1 {
		t.Fatalf("after 12 entries behind: %+v; want no read of the folders", st)
	}
	rd.proxy.setCut(true)
	signups(40)
	rd.proxy.setCut(false)
	waitSame(t, agent, 10*time.Second, rd.r)
	if st := rd.r.LogStatus(); st.Resyncs["behind_ring"] != 1 {
		t.Fatalf("after 40 entries behind a ring of 16: %+v; want one read of the folders, behind_ring", st)
	}
}

// Consul restored from a snapshot taken earlier goes back in its indexes
// and in the log, in place or after an agent that lost everything: readers
// notice, read the folders again and end exact, and the leader goes on
// writing from there.
func TestReadersResyncAfterASnapshotRestore(t *testing.T) {
	for _, restart := range []bool{false, true} {
		t.Run(map[bool]string{false: "in place", true: "after a restart"}[restart], func(t *testing.T) {
			agent := consultest.Start(t)
			rs := startCluster(t, agent, 1)
			lead := rs[0]
			expect(t, 201, "PUT", lead.url+"/v1/pods/dub", podBody(dublin, 500), "")
			edges(t, agent, "dub")
			waitEdges(t, rs, "dub", 1)
			for i := range 5 {
				expect(t, 201, "POST", lead.url+"/v1/tenants", signupBody(fmt.Sprintf("before-%d", i), dublin), "")
			}
			snap, _, err := agent.Client.Snapshot().Save(nil)
			if err != nil {
				t.Fatal(err)
			}
			saved, err := io.ReadAll(snap)
			snap.Close()
			if err != nil {
				t.Fatal(err)
			}
			rd := startReader(t, agent)
			for i := range 5 {
				expect(t, 201, "POST", lead.url+"/v1/tenants", signupBody(fmt.Sprintf("after-%d", i), dublin), "")
			}
			waitSame(t, agent, 5*time.Second, rd.r)
			if restart {
				agent.Restart()
				consultest.WaitFor(t, 10*time.Second, "the new agent's leader", func() bool {
					l, err := agent.Client.Status().Leader()
					return err == nil && l != ""
				})
			}
			if err := agent.Client.Snapshot().Restore(nil, strings.NewReader(string(saved))); err != nil {
				t.Fatal(err)
			}
			if _, tenants := folders(t, agent); len(tenants) != 5 {
				t.Fatalf("%d tenants after the restore, want the 5 saved", len(tenants))
			}
			waitSame(t, agent, 10*time.Second, rd.r, lead.srv.router)
			if st := rd.r.LogStatus(); len(st.Resyncs) < 2 {
				t.Fatalf("reader %+v; want a read of the folders for the restore", st)
			}
			if restart {
				// A new dev agent cannot take its own services back from
				// an old one's snapshot (another node ID under the same
				// name): the writes after a restore are the in-place case's.
				t.Logf("reader's reads of the folders: %v", rd.r.LogStatus().Resyncs)
				return
			}
			// The leader writes on from the restored log, and readers follow.
			consultest.WaitFor(t, 20*time.Second, "a sign-up after the restore", func() bool {
				code, _, _ := tryCall("POST", lead.url+"/v1/tenants", `{"name":"after-restore","lat":53.3,"lon":-6.2}`)
				return code == 201 || code == 409
			})
			waitSame(t, agent, 10*time.Second, rd.r)
			t.Logf("reader's reads of the folders: %v", rd.r.LogStatus().Resyncs)
		})
	}
}

// FuzzDecodeHead: no input crashes the head's decoder, and a head it
// accepts holds a chain whose inline entries follow each other.
func FuzzDecodeHead(f *testing.F) {
	h := changelog.NewHead("e1", 16)
	h, _ = h.Next([]changelog.Change{{Kind: "tenant", Name: "a", Value: []byte(`{"name":"a"}`)}, {Kind: "pod", Name: "p"}}, 8)
	seed, _ := json.Marshal(h)
	f.Add(seed)
	f.Add([]byte(`{"epoch":"x","seq":1,"ring":1,"entries":[{"seq":1,"chain":"0","kind":"tenant","name":"a"}]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		h, err := changelog.DecodeHead(raw)
		if err != nil {
			return
		}
		for i := 1; i < len(h.Entries); i++ {
			if err := h.Entries[i].Follows(h.Entries[i-1].Seq, h.Entries[i-1].Chain); err != nil {
				t.Fatalf("accepted a head whose entries do not follow: %v", err)
			}
		}
		if h.Ring == 0 || uint64(len(h.Entries)) > h.Seq {
			t.Fatalf("accepted %+v", h)
		}
	})
}

// Clients sign up, move, delete and change domains at random, at once,
// through every replica, while the active leader is killed with SIGKILL
// and readers are restarted: once the writes stop, every reader holds
// exactly what the folders hold.
func TestChangeLogUnderFailover(t *testing.T) {
	agent := consultest.Start(t) // first: it skips under -short
	c := &cluster{t: t, bin: buildLeader(t), agent: agent}
	start := func() *proc { return startProc(t, c.bin, "-consul", c.agent.HTTPAddr) }
	for range 3 {
		c.procs = append(c.procs, start())
	}
	var lead *proc
	consultest.WaitFor(t, 15*time.Second, "a leader all replicas agree on", func() bool {
		lead = leaderOf(c.procs)
		return lead != nil
	})
	expect(t, 201, "PUT", lead.url+"/v1/pods/dub", podBody(dublin, 100000), "")
	expect(t, 201, "PUT", lead.url+"/v1/pods/fra", podBody(frankfurt, 100000), "")
	edges(t, agent, "dub", "fra")
	consultest.WaitFor(t, 10*time.Second, "edges in every view", func() bool {
		for _, p := range c.live() {
			_, out, _ := tryCall("GET", p.url+"/v1/pods/fra")
			if out["healthy_edges"] != 1.0 {
				return false
			}
		}
		return true
	})
	readers := []*reader{startReader(t, agent), startReader(t, agent), startReader(t, agent)}

	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var ops atomic.Int64
	for w := range 4 {
		wg.Go(func() {
			rng := newRand(uint64(w))
			for i := 0; ctx.Err() == nil; i++ {
				live := c.live()
				p := live[rng.IntN(len(live))]
				name := fmt.Sprintf("w%d-%d", w, rng.IntN(30))
				var code int
				var err error
				switch rng.IntN(6) {
				case 0, 1:
					code, _, err = tryCall("POST", p.url+"/v1/tenants", fmt.Sprintf(`{"name":%q,"lat":%v,"lon":%v}`, name, dublin[0], dublin[1]))
				case 2:
					code, _, err = tryCall("POST", p.url+"/v1/tenants/"+name+"/move", fmt.Sprintf(`{"pod":%q}`, []string{"dub", "fra"}[rng.IntN(2)]))
				case 3:
					code, _, err = tryCall("DELETE", p.url+"/v1/tenants/"+name)
				case 4:
					code, _, err = tryCall("PUT", p.url+"/v1/tenants/"+name+"/domains/"+name+".shop.example")
				case 5:
					code, _, err = tryCall("DELETE", p.url+"/v1/tenants/"+name+"/domains/"+name+".shop.example")
				}
				if err == nil && code < 500 {
					ops.Add(1)
				}
			}
		})
	}
	waitOps := func(n int64) {
		consultest.WaitFor(t, 20*time.Second, fmt.Sprintf("%d more writes answered", n), func() bool { return ops.Load() >= n })
	}
	waitOps(100)
	for round := range 2 {
		lead = nil
		consultest.WaitFor(t, 15*time.Second, "a leader to kill", func() bool {
			lead = leaderOf(c.live())
			return lead != nil
		})
		_ = lead.Signal(syscall.SIGKILL)
		lead.wait(t, 5*time.Second)
		c.mu.Lock()
		c.procs = append(c.procs, start())
		c.mu.Unlock()
		readers[round].stop()
		readers[round] = startReader(t, agent)
		waitOps(ops.Load() + 100)
	}
	stop()
	wg.Wait()
	rs := make([]*router.Router, len(readers))
	for i, rd := range readers {
		rs[i] = rd.r
	}
	waitSame(t, agent, 15*time.Second, rs...)
	_, tenants := folders(t, agent)
	t.Logf("%d writes answered; %d tenants in the end; readers' reads of the folders: %v, %v, %v",
		ops.Load(), len(tenants), rs[0].LogStatus().Resyncs, rs[1].LogStatus().Resyncs, rs[2].LogStatus().Resyncs)
	checkSeats(t, agent)
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 42)) }
