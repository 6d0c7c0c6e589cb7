package edge

import (
	"bufio"
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"testing"
	"time"

	"github.com/podedge/podedge/router"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
)

// fuzzSeeds are requests of every kind the edge treats apart.
var fuzzSeeds = []string{
	"GET / HTTP/1.1\r\nHost: acme.example.test\r\n\r\n",
	"GET /a?b=c HTTP/1.1\r\nHost: unknown.example\r\n\r\n",
	"POST /x HTTP/1.1\r\nHost: acme.example.test\r\nContent-Length: 5\r\n\r\nhello",
	"POST /x HTTP/1.1\r\nHost: acme.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
	"HEAD / HTTP/1.0\r\nHost: acme.com\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\r\nGET /2 HTTP/1.1\r\nHost: acme.com\r\n\r\n",
	"HEAD / HTTP/1.1\r\nHost: acme.com\r\n\r\nGET /2 HTTP/1.1\r\nHost: acme.com\r\nContent-Length: 2\r\n\r\nhi",
	"GET / HTTP/1.1\r\nHost: acme.example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
	"GET http://evil.example/ HTTP/1.1\r\nHost: globex.example.test\r\nVia: 1.1 podedge\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: globex.example.test\r\nX-Forwarded-For: 1.2.3.4\r\nX-Request-Id: \x01\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: acme.example.test\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
	"CONNECT acme.example.test:443 HTTP/1.1\r\nHost: acme.example.test\r\n\r\n",
	"\x00\xff\r\n\r\n garbage",
}

// fuzzApp is the fuzz tests' app server: it answers every request with a
// hop-by-hop header to drop and a short body.
func fuzzApp(ctx *fasthttp.RequestCtx) {
	ctx.Response.Header.Set("Connection", "X-Drop")
	ctx.Response.Header.Set("X-Drop", "1")
	ctx.SetBodyString("app says hi\n")
}

// fuzzState is pod-1 (tenant acme) served by app, and pod-2 (tenant globex)
// served by the edge at otherEdge.
func fuzzState(app, otherEdge string) router.State {
	st := withApps(onePod(), app)
	st.Pods = append(st.Pods, router.Pod{Name: "pod-2"})
	st.Tenants = append(st.Tenants, router.Tenant{Name: "globex", Pod: "pod-2"})
	st.Edges = append(st.Edges, router.EdgeEndpoint{Endpoint: router.Endpoint{ID: "e2", Pod: "pod-2", Addr: otherEdge, Weight: 1, Passing: true}})
	return st
}

// FuzzServe feeds raw bytes to the edge's server, wired to an in-memory app
// server and to an in-memory edge of another pod: whatever arrives, nothing
// panics and everything the edge writes back parses as HTTP responses.
func FuzzServe(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}

	up := fasthttputil.NewInmemoryListener()
	app := &fasthttp.Server{Handler: fuzzApp}
	go func() { _ = app.Serve(up) }()
	f.Cleanup(func() { _ = app.Shutdown() })

	p := fuzzProxy()
	p.Dial = func(string) (net.Conn, error) { return up.Dial() }
	publish(f, p, fuzzState("10.0.0.1:80", "10.0.0.2:80"))

	ln := fasthttputil.NewInmemoryListener()
	srv := p.newServer(p.ServeHTTP, slog.New(slog.DiscardHandler))
	go func() { _ = srv.Serve(ln) }()
	f.Cleanup(func() { _ = srv.Shutdown() })

	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := ln.Dial()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		checkResponses(t, in, fuzzAnswer(t, c, in, false))
	})
}

// fuzzProxy is the proxy both fuzz tests serve with: short client
// timeouts, so that every input ends soon.
func fuzzProxy() *Proxy {
	short := 20 * time.Millisecond
	return &Proxy{
		Pod:      "pod-1",
		Logger:   slog.New(slog.DiscardHandler),
		Timeouts: Timeouts{ClientHeader: short, ClientBody: short, ClientIdle: short, WebSocketIdle: short, ResponseHeader: time.Second},
		Limits:   Limits{MaxBodyBytes: 1 << 20},
	}
}

// fuzzAnswer sends in on c and returns all the edge answers before it
// closes the connection, which it does once its short timeouts pass, or at
// once on a bad request. resetOK accepts a reset after the answers: the
// close of a TCP connection with input left unread.
func fuzzAnswer(t *testing.T, c net.Conn, in []byte, resetOK bool) []byte {
	t.Helper()
	go func() { _, _ = c.Write(in) }()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	out, err := io.ReadAll(c)
	if isTimeout(err) {
		t.Fatalf("the edge held the connection for 5s after the input %q", in)
	}
	if err != nil && !(resetOK && isReset(err)) {
		t.Fatalf("reading: %v", err)
	}
	return out
}

// checkResponses parses out as a sequence of HTTP/1.x responses. A response
// to HEAD declares a length without a body; it is recognised by the next
// response (or the end) following its head directly.
func checkResponses(t *testing.T, in, out []byte) {
	t.Helper()
	for len(out) > 0 {
		end := bytes.Index(out, []byte("\r\n\r\n"))
		if end < 0 {
			t.Fatalf("input %q: response head without an end: %q", in, out)
		}
		head := out[:end+4]
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(head)), &http.Request{Method: http.MethodHead})
		if err != nil {
			t.Fatalf("input %q: response head %q does not parse: %v", in, head, err)
		}
		out = out[end+4:]
		if resp.StatusCode < 200 || resp.StatusCode == 204 || resp.StatusCode == 304 ||
			len(out) == 0 || bytes.HasPrefix(out, []byte("HTTP/1.")) {
			continue
		}
		switch {
		case resp.ContentLength >= 0:
			if int64(len(out)) < resp.ContentLength {
				t.Fatalf("input %q: body shorter than its Content-Length %d: %q", in, resp.ContentLength, out)
			}
			out = out[resp.ContentLength:]
		case len(resp.TransferEncoding) > 0 && strings.EqualFold(resp.TransferEncoding[0], "chunked"):
			br := bufio.NewReader(bytes.NewReader(out))
			if _, err := io.Copy(io.Discard, httputil.NewChunkedReader(br)); err != nil {
				t.Fatalf("input %q: bad chunked body: %v", in, err)
			}
			// The chunked reader stops after the last chunk; its empty
			// trailer line remains.
			rest, _ := io.ReadAll(br)
			out = bytes.TrimPrefix(rest, []byte("\r\n"))
		default:
			t.Fatalf("input %q: response with a body and no framing: %q", in, head)
		}
	}
}
