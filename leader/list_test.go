package leader

import (
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/consultest"
	"github.com/podedge/podedge/router"
)

// rareAt are the positions of the tenants of pod "rare" among those
// TestListTenants stores: a pod holding few of many.
var rareAt = []int{7, 4000, 9999, 10000, 11990}

// storeTenants writes n tenants t00000… straight into KV, 128 to a
// transaction, those at rareAt in pod rare and the others in pod common.
func storeTenants(t testing.TB, agent *consultest.Agent, n int) {
	t.Helper()
	var ops api.TxnOps
	flush := func() {
		if ok, resp, _, err := agent.Client.Txn().Txn(ops, nil); err != nil || !ok {
			t.Fatalf("store tenants: %v %+v", err, resp)
		}
		ops = ops[:0]
	}
	for i := range n {
		pod := "common"
		if slices.Contains(rareAt, i) {
			pod = "rare"
		}
		name := fmt.Sprintf("t%05d", i)
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: "podedge/tenants/" + name,
			Value: fmt.Appendf(nil, `{"name":%q,"pod":%q,"domains":[],"created":"2026-01-01T00:00:00Z"}`, name, pod)}})
		if len(ops) == maxTxnOps {
			flush()
		}
	}
	if len(ops) > 0 {
		flush()
	}
}

// listAll pages through GET /v1/tenants with query q and returns the names
// in order and the pages it took.
func listAll(t *testing.T, base, q string) ([]string, int) {
	t.Helper()
	var names []string
	cursor := ""
	for pages := 1; ; pages++ {
		u := base + "/v1/tenants?" + q
		if cursor != "" {
			u += "&cursor=" + url.QueryEscape(cursor)
		}
		out := expect(t, 200, "GET", u, nil, "")
		list, _ := out["tenants"].([]any)
		for _, x := range list {
			names = append(names, x.(map[string]any)["name"].(string))
		}
		cursor, _ = out["next_cursor"].(string)
		if cursor == "" {
			return names, pages
		}
		if pages > 100 {
			t.Fatalf("%s: no end after 100 pages", q)
		}
	}
}

// TestListTenants pages through 12,001 tenants on two replicas: in order of
// name, by pod and by prefix, with a pod holding 5 of them found within the
// scan bound of each page.
func TestListTenants(t *testing.T) {
	agent := consultest.Start(t)
	const n = 12_000
	storeTenants(t, agent, n)
	agent.Put(t, "podedge/tenants/t01", `{"name":"t01","pod":"common","domains":[]}`)
	rs := startCluster(t, agent, 2)
	for _, r := range rs {
		consultest.WaitFor(t, 30*time.Second, "every tenant in the view", func() bool {
			return len(r.srv.router.Snapshot().Tenants()) == n+1
		})
	}
	all := make([]string, 0, n+1)
	for i := range n {
		all = append(all, fmt.Sprintf("t%05d", i))
	}
	all = append(all, "t01")
	slices.Sort(all)

	for _, r := range rs {
		out := expect(t, 200, "GET", r.url+"/v1/tenants", nil, "")
		list := out["tenants"].([]any)
		first := list[0].(map[string]any)
		if len(list) != defaultPageSize || first["name"] != "t00000" || first["pod"] != "common" || first["cname"] != "common.pods.example.test" || out["next_cursor"] == "" {
			t.Fatalf("first page on %s: %d tenants, first %v, next %v", r.addr, len(list), first, out["next_cursor"])
		}
		names, pages := listAll(t, r.url, "limit=1000")
		if !slices.Equal(names, all) || pages != 13 {
			t.Fatalf("limit=1000 on %s: %d names in %d pages, in order %v", r.addr, len(names), pages, slices.IsSorted(names))
		}
	}
	sb := standby(t, rs)

	t.Run("prefix", func(t *testing.T) {
		names, _ := listAll(t, sb.url, "prefix=t01&limit=70")
		var want []string
		for _, x := range all {
			if strings.HasPrefix(x, "t01") {
				want = append(want, x)
			}
		}
		if !slices.Equal(names, want) || names[0] != "t01" {
			t.Fatalf("prefix t01: %d names %v…, want %d", len(names), names[:min(3, len(names))], len(want))
		}
		if names, pages := listAll(t, sb.url, "prefix=zz"); len(names) != 0 || pages != 1 {
			t.Fatalf("prefix zz: %v in %d pages", names, pages)
		}
	})

	t.Run("a pod that holds few: every page bounded", func(t *testing.T) {
		names, pages := listAll(t, sb.url, "pod=rare")
		var want []string
		for _, i := range rareAt {
			want = append(want, fmt.Sprintf("t%05d", i))
		}
		if !slices.Equal(names, want) || pages < 2 {
			t.Fatalf("pod=rare: %v in %d pages, want %v in at least 2 (at most %d tenants looked at a page)", names, pages, want, maxPageScan)
		}
		names, _ = listAll(t, sb.url, "pod=rare&limit=2&prefix=t0")
		if !slices.Equal(names, want[:3]) {
			t.Fatalf("pod=rare, prefix t0, limit 2: %v", names)
		}
		if names, _ := listAll(t, sb.url, "pod=nowhere"); len(names) != 0 {
			t.Fatalf("pod=nowhere: %v", names)
		}
	})

	t.Run("a cursor from another replica", func(t *testing.T) {
		out := expect(t, 200, "GET", rs[0].url+"/v1/tenants?limit=3", nil, "")
		next := expect(t, 200, "GET", rs[1].url+"/v1/tenants?limit=3&cursor="+out["next_cursor"].(string), nil, "")
		if got := next["tenants"].([]any)[0].(map[string]any)["name"]; got != "t00003" {
			t.Fatalf("second page starts at %v", got)
		}
	})

	t.Run("bad parameters", func(t *testing.T) {
		bad := base64.RawURLEncoding.EncodeToString([]byte("Not A Name"))
		for _, c := range []struct{ q, want string }{
			{"limit=0", `limit: "0" is not a whole number from 1 to 1000`},
			{"limit=1001", `limit: "1001"`},
			{"limit=ten", `limit: "ten"`},
			{"limit=", `limit: ""`},
			{"pod=Bad_Pod", "pod: name"},
			{"prefix=T0", `prefix: "T0"`},
			{"cursor=%21%21", `cursor: "!!" is not a next_cursor`},
			{"cursor=" + bad, "cursor:"},
			{"limit=1&limit=2", `parameter "limit" is given 2 times`},
			{"sort=name", `unknown parameter "sort"`},
		} {
			expect(t, 400, "GET", sb.url+"/v1/tenants?"+c.q, nil, c.want)
		}
	})
}

// BenchmarkListTenants serves one page of GET /v1/tenants from a view of
// 100,000 tenants, in 100 pods:
//
//	go test -run '^$' -bench BenchmarkListTenants -benchmem ./leader/
func BenchmarkListTenants(b *testing.B) {
	rt, err := router.New(router.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	const n = 100_000
	st := router.State{LogIndex: 1, Index: 1}
	for i := range n {
		st.Tenants = append(st.Tenants, router.Tenant{Name: fmt.Sprintf("t%06d", i), Pod: fmt.Sprintf("pod-%d", i%100), Domains: []string{}})
	}
	rt.Publish(st)
	cfg := DefaultConfig()
	srv, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	srv.router = rt
	for _, c := range []struct{ name, query string }{
		{"first-page-100", ""},
		{"middle-page-1000", "limit=1000&cursor=" + base64.RawURLEncoding.EncodeToString([]byte("t050000"))},
		{"pod-filter-1000", "limit=1000&pod=pod-7"},
		{"prefix-100", "prefix=t0777"},
	} {
		b.Run(c.name, func(b *testing.B) {
			req := httptest.NewRequest(http.MethodGet, "/v1/tenants?"+c.query, nil)
			for b.Loop() {
				w := httptest.NewRecorder()
				srv.listTenants(w, req)
				if w.Code != 200 {
					b.Fatalf("%d %s", w.Code, w.Body)
				}
			}
		})
	}
}
