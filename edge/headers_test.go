package edge

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/podedge/podedge/internal/h1"
	"github.com/valyala/fasthttp"
)

// clientFrom is a client whose connections come from the loopback address
// ip, so that tests can be a trusted or an untrusted peer.
func clientFrom(t *testing.T, ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	tr := &http.Transport{DisableCompression: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return d.DialContext(ctx, network, addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func TestRequestHeaders(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		a := newBackend(t, "a", nil)
		p := &Proxy{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}}
		h := newHarnessOn(t, engine, p, onePod(a))
		spoof := map[string]string{
			"X-Forwarded-For":   "1.2.3.4",
			"X-Forwarded-Proto": "https",
			"X-Forwarded-Host":  "spoofed.example",
			"Forwarded":         "for=1.2.3.4",
		}
		hop := map[string]string{
			"Connection":          "keep-alive, X-Secret",
			"X-Secret":            "must not pass",
			"Keep-Alive":          "timeout=5",
			"Proxy-Authorization": "Basic Zm9vOmJhcg==",
			"Proxy-Connection":    "keep-alive",
			"Te":                  "trailers",
			"Upgrade":             "h2c",
			"X-Kept":              "yes",
		}
		hex32 := regexp.MustCompile(`^[0-9a-f]{32}$`)

		t.Run("hop-by-hop headers do not reach the app", func(t *testing.T) {
			code, _, _ := do(t, clientFrom(t, "127.0.0.3"), "GET", h.addr, "acme.example.test", "/", nil, hop)
			if code != 200 {
				t.Fatalf("status %d", code)
			}
			got := a.lastRequest().Header
			for _, k := range []string{"Connection", "X-Secret", "Keep-Alive", "Proxy-Authorization", "Proxy-Connection", "Te", "Upgrade"} {
				if v := got.Values(k); len(v) > 0 {
					t.Errorf("app received %s: %q", k, v)
				}
			}
			if got.Get("X-Kept") != "yes" {
				t.Errorf("an end-to-end header was dropped: %v", got)
			}
		})
		t.Run("untrusted peer: forwarding headers replaced", func(t *testing.T) {
			code, hdr, _ := do(t, clientFrom(t, "127.0.0.3"), "GET", h.addr, "acme.example.test:8080", "/", nil, spoof)
			if code != 200 {
				t.Fatalf("status %d", code)
			}
			got := a.lastRequest()
			want := map[string]string{"X-Forwarded-For": "127.0.0.3", "X-Forwarded-Proto": "http", "X-Forwarded-Host": "acme.example.test:8080", "Forwarded": ""}
			for k, v := range want {
				if vs := got.Header.Values(k); v == "" && len(vs) > 0 || v != "" && (len(vs) != 1 || vs[0] != v) {
					t.Errorf("%s: app received %q, want %q", k, vs, v)
				}
			}
			if got.Host != "acme.example.test:8080" {
				t.Errorf("Host: app received %q", got.Host)
			}
			id := got.Header.Get("X-Request-Id")
			if !hex32.MatchString(id) || hdr.Get("X-Request-Id") != id {
				t.Errorf("request id: app got %q, client got %q; want the same fresh 32-hex id", id, hdr.Get("X-Request-Id"))
			}
		})
		t.Run("trusted peer: X-Forwarded-For appended, others kept", func(t *testing.T) {
			code, _, _ := do(t, clientFrom(t, "127.0.0.2"), "GET", h.addr, "acme.example.test", "/", nil, spoof)
			if code != 200 {
				t.Fatalf("status %d", code)
			}
			got := a.lastRequest().Header
			if v := got.Values("X-Forwarded-For"); len(v) != 1 || v[0] != "1.2.3.4, 127.0.0.2" {
				t.Errorf("X-Forwarded-For: %q", v)
			}
			if got.Get("X-Forwarded-Proto") != "https" || got.Get("X-Forwarded-Host") != "spoofed.example" || got.Get("Forwarded") != "for=1.2.3.4" {
				t.Errorf("trusted headers not kept: %v", got)
			}
		})
		t.Run("request id passed through", func(t *testing.T) {
			_, hdr, _ := do(t, client(t), "GET", h.addr, "acme.example.test", "/", nil, map[string]string{"X-Request-ID": "abc-123"})
			if got := a.lastRequest().Header.Get("X-Request-Id"); got != "abc-123" || hdr.Get("X-Request-Id") != "abc-123" {
				t.Errorf("app got %q, client got %q, want abc-123", got, hdr.Get("X-Request-Id"))
			}
			_, hdr, _ = do(t, client(t), "GET", h.addr, "acme.example.test", "/", nil, map[string]string{"X-Request-ID": "bad id\twith spaces"})
			if id := hdr.Get("X-Request-Id"); !hex32.MatchString(id) {
				t.Errorf("a malformed request id was not replaced: %q", id)
			}
		})
	})
}

func TestResponseHeaders(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		a := newBackend(t, "a", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Connection", "X-Internal")
			w.Header().Set("X-Internal", "secret")
			w.Header().Set("Keep-Alive", "timeout=5")
			w.Header().Set("Proxy-Authenticate", "Basic")
			w.Header().Set("Upgrade", "h2c")
			w.Header().Set("X-App", "kept")
			w.Header().Set("X-Request-Id", "app-chose-this")
			_, _ = w.Write([]byte("ok"))
		})
		h := newHarnessOn(t, engine, &Proxy{}, onePod(a))
		c := client(t)
		for i := range 2 {
			code, hdr, body := do(t, c, "GET", h.addr, "acme.example.test", "/", nil, map[string]string{"X-Request-Id": "req-1"})
			if code != 200 || body != "ok" {
				t.Fatalf("got %d %q", code, body)
			}
			for _, k := range []string{"X-Internal", "Keep-Alive", "Proxy-Authenticate", "Upgrade"} {
				if v := hdr.Values(k); len(v) > 0 {
					t.Errorf("client received %s: %q", k, v)
				}
			}
			if hdr.Get("X-App") != "kept" || hdr.Get("X-Request-Id") != "req-1" {
				t.Errorf("headers: %v", hdr)
			}
			// The app's Connection header must not close the client's
			// connection: the second request reuses it.
			_ = i
		}
	})
}

func TestHeadKeepsContentLength(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		a := newBackend(t, "a", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "12345")
			if r.Method != http.MethodHead {
				_, _ = w.Write(make([]byte, 12345))
			}
		})
		h := newHarnessOn(t, engine, &Proxy{}, onePod(a))
		conn := rawConn(t, h.addr)
		_, _ = conn.Write([]byte("HEAD / HTTP/1.1\r\nHost: acme.example.test\r\n\r\n"))
		resp := readResponse(t, conn, "HEAD")
		if resp.StatusCode != 200 || resp.ContentLength != 12345 {
			t.Fatalf("HEAD: %d, Content-Length %d; want 200 and the app's 12345", resp.StatusCode, resp.ContentLength)
		}
	})
}

// TestHeaderNamesReadOffTheRawHead checks that the names read off a head
// as received are those fasthttp parsed, cookies, case and folded lines
// included: requestKeys on a parsed request, headKeys on a response head
// as the loops read it.
func TestHeaderNamesReadOffTheRawHead(t *testing.T) {
	requests := []string{
		"GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1; b=2\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nconnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nkeep-alive: timeout=5\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\nVIA: 1.1 other\r\nX-Request-Id: r\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nExpect: 100-continue\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nTrailer: x\r\nForwarded: for=1.2.3.4\r\nProxy-Authorization: b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-Note: a\r\n\tConnection: folded\r\nX-Forwarded-Host: h\r\nX-Forwarded-Proto: https\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nProxy-Connection: close\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 6.6.6.6\r\nX_Custom: kept\r\n\r\n",
	}
	responses := []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nSet-Cookie: a=1\r\n\r\n",
		"HTTP/1.1 200 OK: fine\r\nconnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTrailer: x\r\nProxy-Authenticate: Basic\r\nx-request-id: r\r\nTransfer-Encoding: chunked\r\n\r\n",
	}
	parser := h1.NewParser(4096)
	check := func(head string, want, got uint32) {
		t.Helper()
		if got != want {
			t.Errorf("%q: read %015b, the parsed names give %015b", head, got, want)
		}
		if want == 0 && !strings.Contains(head, "Cookie") {
			t.Errorf("%q: no header of interest found", head)
		}
	}
	for _, head := range requests {
		// Two parses: listing the names collects the cookies, which
		// changes the head.
		var listed, raw fasthttp.RequestHeader
		if err := parser.Parse(&listed, []byte(head)); err != nil {
			t.Fatalf("%q: %v", head, err)
		}
		if err := parser.Parse(&raw, []byte(head)); err != nil {
			t.Fatalf("%q: %v", head, err)
		}
		want := scanKeys(listed.PeekKeys())
		check(head, want, requestKeys(&raw))
		check(head, want, headKeys([]byte(head)))
	}
	for _, head := range responses {
		var h fasthttp.ResponseHeader
		if err := parser.Parse(&h, []byte(head)); err != nil {
			t.Fatalf("%q: %v", head, err)
		}
		check(head, scanKeys(h.PeekKeys()), headKeys([]byte(head)))
	}
}

// A header named as one the edge sets or removes, with underscores for its
// dashes, never reaches the app server: a gateway that maps names to
// variables (HTTP_X_FORWARDED_FOR) would read it as the edge's own. Other
// names with underscores pass, as RFC 9110 allows.
func TestUnderscoredNamesOfTheEdgesHeadersDropped(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		a := newBackend(t, "a", nil)
		h := newHarnessOn(t, engine, &Proxy{}, onePod(a))
		conn := rawConn(t, h.addr)
		_, _ = conn.Write([]byte("GET / HTTP/1.1\r\nHost: acme.example.test\r\n" +
			"X_Forwarded_For: 6.6.6.6\r\nx_forwarded_proto: gopher\r\nX-Forwarded_Host: evil.test\r\n" +
			"X_Request_Id: spoofed\r\nProxy_Connection: x\r\nX_Custom_Name: kept\r\n\r\n"))
		if resp := readResponse(t, conn, "GET"); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		got := a.lastRequest().Header
		for name := range got {
			if strings.Contains(name, "_") && !strings.EqualFold(name, "X_Custom_Name") {
				t.Errorf("the app server received %s: %q", name, got[name])
			}
		}
		if got.Get("X_Custom_Name") != "kept" {
			t.Errorf("X_Custom_Name: %q, want it passed on", got.Get("X_Custom_Name"))
		}
		if xff := got.Get("X-Forwarded-For"); strings.Contains(xff, "6.6.6.6") {
			t.Errorf("X-Forwarded-For %q", xff)
		}
	})
}
