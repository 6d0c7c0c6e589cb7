package edge

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// The trailer fields an app server sends after a chunked body reach an
// HTTP/2 client as trailers, declared or not; the Trailer field itself,
// hop-by-hop, does not.
func TestHTTP2RelaysTrailers(t *testing.T) {
	a := newBackend(t, "a", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		_, _ = io.WriteString(w, "hello, ")
		w.(http.Flusher).Flush() // chunked
		_, _ = io.WriteString(w, "world")
		w.Header().Set("X-Checksum", "sha256:abc")
		w.Header().Set(http.TrailerPrefix+"X-Undeclared", "yes")
	})
	h := newTLSHarness(t, &Proxy{}, onePod(a), defaultHTTP2())
	c := h.h2Client(t)
	for i := range 3 { // the stream's pooled state, reused
		resp, body := h2Do(t, c, "GET", h.addr, "acme.example.test", "/", nil, nil)
		if resp.ProtoMajor != 2 || resp.StatusCode != 200 || body != "hello, world" {
			t.Fatalf("request %d: %s %d %q", i, resp.Proto, resp.StatusCode, body)
		}
		if got := resp.Trailer.Get("X-Checksum"); got != "sha256:abc" {
			t.Fatalf("request %d: trailer X-Checksum %q, want sha256:abc (trailers %v)", i, got, resp.Trailer)
		}
		if got := resp.Trailer.Get("X-Undeclared"); got != "yes" {
			t.Fatalf("request %d: trailer X-Undeclared %q, want yes (trailers %v)", i, got, resp.Trailer)
		}
		if _, ok := resp.Header["Trailer"]; ok {
			t.Fatalf("request %d: the head carries Trailer: %v", i, resp.Header)
		}
	}
	// A chunked body without trailers gets none.
	plain := newBackend(t, "plain", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "a")
		w.(http.Flusher).Flush()
		_, _ = io.WriteString(w, "b")
	})
	h = newTLSHarness(t, &Proxy{}, onePod(plain), defaultHTTP2())
	resp, body := h2Do(t, h.h2Client(t), "GET", h.addr, "acme.example.test", "/", nil, nil)
	if resp.StatusCode != 200 || body != "ab" || len(resp.Trailer) != 0 {
		t.Fatalf("%d %q, trailers %v; want 200 \"ab\", none", resp.StatusCode, body, resp.Trailer)
	}
}

// A streamed body that fails part-way resets the stream: the client sees
// an error, never a complete response. So does a trailer section fasthttp
// refuses.
func TestHTTP2TruncatedBodyResetsTheStream(t *testing.T) {
	for _, tc := range []struct{ name, response string }{
		{"cut off", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"},
		{"forbidden trailer", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := rawBackend(t, func(_ int, _ *bufio.Reader, c net.Conn) bool {
				_, _ = io.WriteString(c, tc.response)
				return false
			})
			h := newTLSHarness(t, &Proxy{}, withApps(onePod(), addr), defaultHTTP2())
			req, _ := http.NewRequest("GET", "https://"+h.addr+"/", nil)
			req.Host = "acme.example.test"
			resp, err := h.h2Client(t).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err == nil {
				t.Fatalf("read %q and a clean end, want a reset stream", body)
			}
		})
	}
}

// Response fields reach each stream's client as its app server wrote them,
// with many streams at once on one connection sharing the edge's pooled
// state: values that change with every response (here, by path) and
// values that do not, bodies on either side of x/net's write buffer.
func TestHTTP2ResponseFieldsPerStream(t *testing.T) {
	a := newBackend(t, "a", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Path", r.URL.Path)
		w.Header().Set("X-Fixed", "same for all")
		w.Header().Add("Set-Cookie", "a=1")
		w.Header().Add("Set-Cookie", "b="+r.URL.Path)
		n := 10
		if strings.HasSuffix(r.URL.Path, "7") {
			n = 10 << 10
		}
		w.Header().Set("Content-Length", strconv.Itoa(n))
		_, _ = io.WriteString(w, strings.Repeat("x", n))
	})
	h := newTLSHarness(t, &Proxy{}, onePod(a), defaultHTTP2())
	c := h.h2Client(t)
	getAtOnce(t, c, h.addr, 400, func(path string, resp *http.Response, b []byte, err error) error {
		want := 10
		if strings.HasSuffix(path, "7") {
			want = 10 << 10
		}
		switch {
		case err != nil || resp.StatusCode != 200 || len(b) != want:
			return fmt.Errorf("%s: %d, %d bytes, %v", path, resp.StatusCode, len(b), err)
		case resp.Header.Get("X-Path") != path || resp.Header.Get("X-Fixed") != "same for all":
			return fmt.Errorf("%s: fields %v", path, resp.Header)
		case strings.Join(resp.Header["Set-Cookie"], " ") != "a=1 b="+path:
			return fmt.Errorf("%s: cookies %q", path, resp.Header["Set-Cookie"])
		case resp.ContentLength != int64(want):
			return fmt.Errorf("%s: Content-Length %d, want %d", path, resp.ContentLength, want)
		}
		return nil
	})
}
