package leader

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podedge/podedge/internal/consultest"
)

// callIndexed is call with request headers, returning the answer's
// X-Podedge-Index too.
func callIndexed(t testing.TB, method, url string, body any, header ...string) (int, map[string]any, uint64) {
	t.Helper()
	var raw string
	switch b := body.(type) {
	case nil:
	case string:
		raw = b
	default:
		t.Fatalf("body %T", body)
	}
	req, err := newRequest(method, url, raw)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = decodeBody(resp, &out)
	var idx uint64
	if h := resp.Header.Get(IndexHeader); h != "" {
		if idx, err = strconv.ParseUint(h, 10, 64); err != nil {
			t.Fatalf("%s %s: %s %q", method, url, IndexHeader, h)
		}
	}
	if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "" {
		t.Fatalf("%s %s: 503 without Retry-After", method, url)
	}
	return resp.StatusCode, out, idx
}

// TestReadYourWrites: every write answers the index it committed at; the
// replica that answered it shows it to its next reads at once, and any
// replica does to reads that send the index back.
func TestReadYourWrites(t *testing.T) {
	agent := consultest.Start(t)
	rs := startCluster(t, agent, 2, func(c *Config) { c.ReadWait = 4 * time.Second; c.MaxQueryTime = 2 * time.Second })
	lead := waitLeader(t, rs)
	sb := standby(t, rs)
	edges(t, agent, "dublin")
	waitEdges(t, rs, "dublin", 1)

	t.Run("writes answer the index they committed at", func(t *testing.T) {
		code, _, idx := callIndexed(t, "PUT", sb.url+"/v1/pods/dublin", `{"region":"eu","lat":53.35,"lon":-6.26,"capacity":1000}`)
		pair, _, err := agent.Client.KV().Get("podedge/pods/dublin", nil)
		if code != 201 || err != nil || pair == nil || idx != pair.ModifyIndex {
			t.Fatalf("PUT pod: %d, index %d; stored at %+v (%v)", code, idx, pair, err)
		}
		code, _, first := callIndexed(t, "POST", lead.url+"/v1/tenants", `{"name":"idx","lat":53.3,"lon":-6.2}`)
		pair, _, _ = agent.Client.KV().Get("podedge/tenants/idx", nil)
		if code != 201 || pair == nil || first != pair.ModifyIndex || first <= idx {
			t.Fatalf("sign-up: %d, index %d, stored at %+v", code, first, pair)
		}
		// A write that only deletes keys still answers its own index.
		code, _, del := callIndexed(t, "DELETE", sb.url+"/v1/tenants/idx", nil)
		if code != 204 || del <= first {
			t.Fatalf("delete: %d, index %d after %d", code, del, first)
		}
		expect(t, 201, "PUT", sb.url+"/v1/pods/gone", podBody(london, 1), "")
		code, _, delPod := callIndexed(t, "DELETE", sb.url+"/v1/pods/gone", nil)
		if code != 204 || delPod <= del {
			t.Fatalf("delete pod: %d, index %d after %d", code, delPod, del)
		}
	})

	t.Run("the replica that answered a write shows it at once", func(t *testing.T) {
		for i, r := range []*replica{sb, lead, sb, lead, sb, lead} {
			pod := fmt.Sprintf("own-%d", i)
			expect(t, 201, "PUT", r.url+"/v1/pods/"+pod, podBody(dublin, 0), "")
			_, out, _ := call(t, "GET", r.url+"/v1/pods", nil)
			if !strings.Contains(fmt.Sprint(out["pods"]), "name:"+pod+" ") {
				t.Fatalf("GET /v1/pods right after PUT %s on %s: %v", pod, r.addr, out)
			}
			expect(t, 200, "GET", r.url+"/v1/pods/"+pod, nil, "")
			name := fmt.Sprintf("own%d", i)
			expect(t, 201, "POST", r.url+"/v1/tenants", signupBody(name, dublin), "")
			expect(t, 200, "GET", r.url+"/v1/tenants/"+name, nil, "")
			expect(t, 204, "DELETE", r.url+"/v1/tenants/"+name, nil, "")
			expect(t, 404, "GET", r.url+"/v1/tenants/"+name, nil, "not found")
		}
	})

	t.Run("any replica, given the index", func(t *testing.T) {
		for i := range 6 {
			w, rd := rs[i%2], rs[(i+1)%2]
			name := fmt.Sprintf("other%d", i)
			_, _, idx := callIndexed(t, "POST", w.url+"/v1/tenants", `{"name":"`+name+`","lat":53.3,"lon":-6.2}`)
			var code int
			if i%3 == 0 {
				code, _, _ = callIndexed(t, "GET", rd.url+"/v1/tenants/"+name, nil, IndexHeader, strconv.FormatUint(idx, 10))
			} else {
				code, _, _ = callIndexed(t, "GET", fmt.Sprintf("%s/v1/tenants/%s?index=%d", rd.url, name, idx), nil)
			}
			if code != 200 {
				t.Fatalf("GET %s on the other replica with index %d: %d", name, idx, code)
			}
			_, _, idx = callIndexed(t, "DELETE", w.url+"/v1/tenants/"+name, nil)
			code, _, _ = callIndexed(t, "GET", fmt.Sprintf("%s/v1/tenants/%s?index=%d", rd.url, name, idx), nil)
			if code != 404 {
				t.Fatalf("GET %s on the other replica after its delete at %d: %d", name, idx, code)
			}
		}
	})

	t.Run("an index no view has reached: 503 after read_wait", func(t *testing.T) {
		start := time.Now()
		code, out, _ := callIndexed(t, "GET", sb.url+"/v1/pods?index=999999999", nil)
		if code != 503 || !strings.Contains(fmt.Sprint(out["error"]), "has not reached index 999999999") {
			t.Fatalf("got %d %v", code, out)
		}
		if took := time.Since(start); took < 4*time.Second {
			t.Fatalf("answered 503 after %s, before read_wait", took)
		}
	})

	t.Run("blocking read returns with the next change", func(t *testing.T) {
		_, _, now := callIndexed(t, "GET", sb.url+"/v1/tenants/later", nil)
		type answer struct {
			code int
			idx  uint64
		}
		done := make(chan answer, 1)
		go func() {
			// MaxQueryTime caps the 30s at 2s.
			code, _, idx := callIndexed(t, "GET", fmt.Sprintf("%s/v1/tenants/later?index=%d&wait=30s", sb.url, now), nil)
			done <- answer{code, idx}
		}()
		expect(t, 201, "POST", lead.url+"/v1/tenants", signupBody("later", dublin), "")
		a := <-done
		if a.code != 200 || a.idx <= now {
			t.Fatalf("blocking read answered %d at index %d (waited from %d)", a.code, a.idx, now)
		}
	})

	t.Run("blocking read with nothing new: the state after wait", func(t *testing.T) {
		_, _, now := callIndexed(t, "GET", lead.url+"/v1/pods/dublin", nil)
		start := time.Now()
		code, _, idx := callIndexed(t, "GET", fmt.Sprintf("%s/v1/pods/dublin?index=%d&wait=300ms", lead.url, now), nil)
		if took := time.Since(start); code != 200 || idx != now || took < 300*time.Millisecond {
			t.Fatalf("got %d at index %d (from %d) after %s", code, idx, now, took)
		}
		start = time.Now()
		code, _, _ = callIndexed(t, "GET", fmt.Sprintf("%s/v1/pods?index=%d&wait=2h", lead.url, now), nil)
		if took := time.Since(start); code != 200 || took > 10*time.Second {
			t.Fatalf("wait=2h capped by max_query_time 2s: %d after %s", code, took)
		}
	})

	t.Run("bad parameters", func(t *testing.T) {
		for _, c := range []struct{ path, want string }{
			{"/v1/pods?index=abc", `index: "abc" is not an index`},
			{"/v1/pods?index=-1", `index: "-1"`},
			{"/v1/pods/dublin?wait=30s", "wait: needs index"},
			{"/v1/pods?index=1&wait=-1s", `wait: "-1s" is not a positive duration`},
			{"/v1/pods?index=1&wait=30", `wait: "30" is not a positive duration`},
			{"/v1/tenants/x?index=1&index=2", `parameter "index" is given 2 times`},
			{"/v1/pods?limit=1", `unknown parameter "limit"`},
		} {
			expect(t, 400, "GET", sb.url+c.path, nil, c.want)
		}
		code, out, _ := callIndexed(t, "GET", sb.url+"/v1/pods", nil, IndexHeader, "x")
		if code != 400 || !strings.Contains(fmt.Sprint(out["error"]), IndexHeader) {
			t.Fatalf("bad %s header: %d %v", IndexHeader, code, out)
		}
	})
}

// decodeBody decodes a JSON answer into out, if there is one.
func decodeBody(resp *http.Response, out any) error {
	return json.NewDecoder(resp.Body).Decode(out)
}
