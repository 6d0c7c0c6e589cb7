package leader

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/consultest"
)

// BenchmarkSignup measures sign-ups per second through the API against a
// Consul dev agent: each one POST /v1/tenants, placement and one fenced
// transaction, with two replicas watching Consul as in production. It is
// sent to the leader or to a standby that forwards it, by one client or by
// 16 at once, with no tenant stored before or with 10,000. Each case runs on
// a fresh agent and cluster; use a fixed count so every case stores the same
// number of tenants:
//
//	flock /tmp/podedge-heavy.lock go test -run '^$' -bench BenchmarkSignup -benchtime 2000x ./leader/
func BenchmarkSignup(b *testing.B) {
	for _, stored := range []int{0, 10000} {
		for _, via := range []string{"leader", "standby"} {
			for _, clients := range []int{1, 16} {
				b.Run(fmt.Sprintf("stored-%d/clients-%d/via-%s", stored, clients, via), func(b *testing.B) {
					benchSignups(b, stored, clients, via == "leader")
				})
			}
		}
	}
}

func benchSignups(b *testing.B, stored, clients int, toLeader bool) {
	agent := consultest.Start(b)
	seedTenants(b, agent, stored)
	rs := startCluster(b, agent, 2)
	target := waitLeader(b, rs)
	if !toLeader {
		target = standby(b, rs)
	}
	expect(b, 201, "PUT", target.url+"/v1/pods/dublin", podBody(dublin, maxCapacity), "")
	expect(b, 201, "PUT", target.url+"/v1/pods/london", podBody(london, maxCapacity), "")
	edges(b, agent, "dublin", "london")
	waitEdges(b, rs, "dublin", 1)
	waitEdges(b, rs, "london", 1)

	client := &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: clients},
	}
	var seq atomic.Int64
	signup := func() {
		name := fmt.Sprintf("b%07d", seq.Add(1))
		body := `{"name":"` + name + `","lat":53.3,"lon":-6.2}`
		resp, err := client.Post(target.url+"/v1/tenants", "application/json", strings.NewReader(body))
		if err != nil {
			b.Error(err)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			b.Errorf("%s: %d", name, resp.StatusCode)
		}
	}

	// One goroutine per client takes the next sign-up from the loop; the
	// rate counts until the last answer is in.
	work := make(chan struct{})
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for range work {
				signup()
			}
		})
	}
	start := time.Now()
	for b.Loop() {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "signups/s")
	checkSeats(b, agent)
}

// seedTenants stores n tenants in a far pod directly in KV, 128 to a
// transaction, as an existing platform would have them. The leader counts
// their seats when it wins the lock.
func seedTenants(b *testing.B, agent *consultest.Agent, n int) {
	b.Helper()
	if n == 0 {
		return
	}
	agent.Put(b, "podedge/pods/sydney", fmt.Sprintf(`{"name":"sydney","lat":%v,"lon":%v,"capacity":%d}`, sydney[0], sydney[1], maxCapacity))
	var ops api.TxnOps
	flush := func() {
		if ok, resp, _, err := agent.Client.Txn().Txn(ops, nil); err != nil || !ok {
			b.Fatalf("seed: %v %+v", err, resp)
		}
		ops = ops[:0]
	}
	for i := range n {
		name := fmt.Sprintf("seed%06d", i)
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: "podedge/tenants/" + name,
			Value: fmt.Appendf(nil, `{"name":%q,"pod":"sydney","domains":["%s.example.com"],"created":"2024-01-01T00:00:00Z"}`, name, name)}})
		if len(ops) == maxTxnOps {
			flush()
		}
	}
	if len(ops) > 0 {
		flush()
	}
}
