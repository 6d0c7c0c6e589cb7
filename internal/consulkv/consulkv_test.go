package consulkv

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/consultest"
	"github.com/podedge/podedge/router"
)

func newLister(t *testing.T, addr string) *Lister {
	t.Helper()
	l, err := New(&api.Config{Address: addr})
	if err != nil || l == nil {
		t.Fatalf("New: %v %v", l, err)
	}
	return l
}

// The same keys, indexes and values as consul/api's List, escapes and all.
func TestListsWhatConsulAPIDoes(t *testing.T) {
	agent := consultest.Start(t)
	kv := agent.Client.KV()
	values := map[string]string{
		"podedge/tenants/acme":             `{"name":"acme","pod":"pod-1"}`,
		"podedge/tenants/a&b<c>":           "<&> \"quoted\" \\ é \u2028",
		"podedge/tenants/empty":            "",
		"podedge/tenants/bin":              "\x00\x01\xff",
		"podedge/pods/pod-1":               `{"name":"pod-1"}`,
		"podedge/tenants/nested/deeper/ok": "x",
	}
	for k, v := range values {
		if _, err := kv.Put(&api.KVPair{Key: k, Value: []byte(v)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := kv.Put(&api.KVPair{Key: "podedge/tenants/novalue"}, nil); err != nil {
		t.Fatal(err)
	}
	want, wantMeta, err := kv.List("podedge/tenants/", nil)
	if err != nil {
		t.Fatal(err)
	}
	l := newLister(t, agent.HTTPAddr)
	list, meta, err := l.ListKV("podedge/tenants/", &api.QueryOptions{AllowStale: true})
	if err != nil {
		t.Fatal(err)
	}
	defer list.Release()
	if meta.LastIndex != wantMeta.LastIndex || meta.LastIndex == 0 {
		t.Errorf("index %d, consul/api %d", meta.LastIndex, wantMeta.LastIndex)
	}
	if len(list.Entries) != len(want) {
		t.Fatalf("%d entries, consul/api %d", len(list.Entries), len(want))
	}
	for i, e := range list.Entries {
		w := want[i]
		if string(e.Key) != w.Key || e.ModifyIndex != w.ModifyIndex || !e.Base64 {
			t.Errorf("entry %d: %q@%d, consul/api %q@%d", i, e.Key, e.ModifyIndex, w.Key, w.ModifyIndex)
		}
		got, err := decode(e.Value)
		if err != nil || string(got) != string(w.Value) {
			t.Errorf("%s: value %q (%v), consul/api %q", w.Key, got, err, w.Value)
		}
	}
}

func decode(b []byte) ([]byte, error) { return base64.StdEncoding.DecodeString(string(b)) }

func TestEmptyFolderAndBlocking(t *testing.T) {
	agent := consultest.Start(t)
	l := newLister(t, agent.HTTPAddr)
	list, meta, err := l.ListKV("nothing/here/", nil)
	if err != nil || len(list.Entries) != 0 || meta.LastIndex == 0 {
		t.Fatalf("empty folder: %v %+v %v", list, meta, err)
	}
	// A blocking query returns when the folder changes.
	done := make(chan error, 1)
	go func() {
		list, _, err := l.ListKV("nothing/here/", &api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 30 * time.Second})
		if err == nil && (len(list.Entries) != 1 || string(list.Entries[0].Key) != "nothing/here/now") {
			err = fmt.Errorf("woke with %d entries", len(list.Entries))
		}
		done <- err
	}()
	agent.Put(t, "nothing/here/now", "1")
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the blocking query did not return after the write")
	}
	// A cancelled context ends a blocking query.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := l.ListKV("nothing/here/", (&api.QueryOptions{WaitIndex: meta.LastIndex + 100, WaitTime: time.Minute}).WithContext(ctx)); err == nil {
		t.Fatal("a cancelled query succeeded")
	}
}

// Bad answers are errors that name the folder and the problem.
func TestBadAnswers(t *testing.T) {
	for _, c := range []struct {
		name, body string
		status     int
		want       string
	}{
		{"server error", "rpc error: no leader", 500, "Consul answered 500 Internal Server Error: rpc error: no leader"},
		{"forbidden", "ACL not found", 403, "Consul answered 403 Forbidden: ACL not found"},
		{"not json", "<html>", 200, "answer is not a list of keys: at byte 0: want '[', found '<'"},
		{"not a list", `{"Key":"a"}`, 200, "answer is not a list of keys: at byte 0"},
		{"no key", `[{"ModifyIndex":1}]`, 200, "an entry without a Key"},
		{"no index", `[{"Key":"a/b"}]`, 200, `key "a/b" has no ModifyIndex`},
		{"cut short", `[{"Key":"a/b","ModifyIndex":1},{"Ke`, 200, "unterminated string"},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("X-Consul-Token") != "secret" || !strings.Contains(r.URL.RawQuery, "recurse") {
					http.Error(w, "bad request", 400)
					return
				}
				w.Header().Set("X-Consul-Index", "7")
				w.WriteHeader(c.status)
				fmt.Fprint(w, c.body)
			}))
			defer srv.Close()
			l, err := New(&api.Config{Address: strings.TrimPrefix(srv.URL, "http://"), Token: "secret"})
			if err != nil {
				t.Fatal(err)
			}
			_, _, err = l.ListKV("a/", nil)
			if err == nil || !strings.Contains(err.Error(), "list a/: ") || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one naming %q", err, c.want)
			}
		})
	}
	if l, err := New(&api.Config{Address: "unix:///run/consul.sock"}); l != nil || err != nil {
		t.Fatalf("unix socket: %v %v", l, err)
	}
	if l, err := New(&api.Config{Address: "https://consul.example:8501"}); err != nil || l.base.String() != "https://consul.example:8501" {
		t.Fatalf("address with its scheme: %v %v", l, err)
	}
	tokenFile := t.TempDir() + "/token"
	if err := os.WriteFile(tokenFile, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if l, err := New(&api.Config{Address: "127.0.0.1:8500", TokenFile: tokenFile}); err != nil || l.token != "from-file" {
		t.Fatalf("token file: %v %v", l, err)
	}
	if _, err := New(&api.Config{Address: "127.0.0.1:8500", TokenFile: tokenFile + ".missing"}); err == nil {
		t.Fatal("a missing token file was accepted")
	}
	if _, err := New(&api.Config{Address: "127.0.0.1:8500", Scheme: "ftp"}); err == nil || !strings.Contains(err.Error(), `scheme "ftp"`) {
		t.Fatalf("bad scheme: %v", err)
	}
}

// The router, fed through the lister, follows KV as it does through
// consul/api.
func TestRouterThroughLister(t *testing.T) {
	agent := consultest.Start(t)
	agent.Put(t, "podedge/pods/pod-1", `{"name":"pod-1","region":"eu","lat":53.3,"lon":-6.2,"capacity":10}`)
	agent.Put(t, "podedge/tenants/acme", `{"name":"acme","pod":"pod-1"}`)
	r, err := router.New(router.Config{Zone: "example.test", Prefix: "podedge/", KV: newLister(t, agent.HTTPAddr),
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx, agent.Client)
	routed := func(host string) bool {
		_, ok := r.Snapshot().LookupString(host)
		return ok
	}
	consultest.WaitFor(t, 10*time.Second, "acme routed", func() bool { return routed("acme.example.test") })
	agent.Put(t, "podedge/tenants/beta", `{"name":"beta","pod":"pod-1","domains":["shop.example.com"]}`)
	consultest.WaitFor(t, 10*time.Second, "beta's domain routed", func() bool { return routed("shop.example.com") })
	if _, err := agent.Client.KV().Delete("podedge/tenants/acme", nil); err != nil {
		t.Fatal(err)
	}
	consultest.WaitFor(t, 10*time.Second, "acme forgotten", func() bool { return !routed("acme.example.test") })
}

// GetKV gives the value and ModifyIndex consul/api's Get gives, without
// JSON or base64 on the way, and blocks as Get does.
func TestGetsWhatConsulAPIDoes(t *testing.T) {
	agent := consultest.Start(t)
	kv := agent.Client.KV()
	l := newLister(t, agent.HTTPAddr)
	values := map[string]string{
		"podedge/log/head": `{"epoch":"e","seq":1,"entries":[{"name":"a\u2028<b>"}]}`,
		"podedge/bin":      "\x00\x01\xff\r\n",
		"podedge/empty":    "",
		"podedge/a&b<c> é": "x",
	}
	for k, v := range values {
		if _, err := kv.Put(&api.KVPair{Key: k, Value: []byte(v)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	// Another write after them: a key's index is its own, not the store's.
	agent.Put(t, "podedge/later", "1")
	for k := range values {
		want, _, err := kv.Get(k, nil)
		if err != nil || want == nil {
			t.Fatalf("consul/api get %s: %v %v", k, want, err)
		}
		got, meta, err := l.GetKV(k, &api.QueryOptions{AllowStale: true})
		if err != nil || got == nil {
			t.Fatalf("get %s: %v %v", k, got, err)
		}
		if got.Key != k || string(got.Value) != string(want.Value) || got.ModifyIndex != want.ModifyIndex || meta.LastIndex != want.ModifyIndex {
			t.Errorf("get %q: %q@%d (meta %d), consul/api %q@%d", k, got.Value, got.ModifyIndex, meta.LastIndex, want.Value, want.ModifyIndex)
		}
	}
	missing, meta, err := l.GetKV("podedge/nothing", nil)
	if err != nil || missing != nil || meta.LastIndex == 0 {
		t.Fatalf("missing key: %+v %+v %v, want no pair, an index and no error", missing, meta, err)
	}

	head, _, err := l.GetKV("podedge/log/head", nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		got, _, err := l.GetKV("podedge/log/head", &api.QueryOptions{WaitIndex: head.ModifyIndex, WaitTime: 30 * time.Second})
		if err == nil && (got == nil || string(got.Value) != "next" || got.ModifyIndex <= head.ModifyIndex) {
			err = fmt.Errorf("woke with %+v", got)
		}
		done <- err
	}()
	agent.Put(t, "podedge/log/head", "next")
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the blocking get did not return after the write")
	}
}
