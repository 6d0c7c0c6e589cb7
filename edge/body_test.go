package edge

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestUpload8MiB(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		a := newBackend(t, "a", nil)
		h := newHarnessOn(t, engine, &Proxy{}, onePod(a))
		body := make([]byte, 8<<20)
		_, _ = rand.Read(body)
		sum := sha256.Sum256(body)
		want := hex.EncodeToString(sum[:])
		c := client(t)

		t.Run("content-length", func(t *testing.T) {
			code, hdr, _ := do(t, c, "POST", h.addr, "acme.example.test", "/upload", bytes.NewReader(body), nil)
			if got := a.lastRequest(); code != 200 || got.BodyLen != int64(len(body)) || got.BodySHA != want || hdr.Get("X-Body-Sha256") != want {
				t.Fatalf("status %d; app got %d bytes, sha %s; want 200, %d bytes, %s", code, got.BodyLen, got.BodySHA, len(body), want)
			}
		})
		t.Run("chunked", func(t *testing.T) {
			// A reader of unknown length makes net/http send chunks.
			code, _, _ := do(t, c, "PUT", h.addr, "acme.example.test", "/upload", io.MultiReader(bytes.NewReader(body)), nil)
			if got := a.lastRequest(); code != 200 || got.BodyLen != int64(len(body)) || got.BodySHA != want {
				t.Fatalf("status %d; app got %d bytes, sha %s", code, got.BodyLen, got.BodySHA)
			}
		})
	})
}

func TestBodyLimit(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		a := newBackend(t, "a", nil)
		h := newHarnessOn(t, engine, &Proxy{Limits: Limits{MaxBodyBytes: 1 << 20}}, onePod(a))
		big := bytes.Repeat([]byte("x"), 2<<20)

		t.Run("declared length over the limit", func(t *testing.T) {
			before := a.hits.Load()
			conn := rawConn(t, h.addr)
			// The edge answers once it has the head and the start of the body,
			// without reading a body it would refuse.
			_, _ = fmt.Fprintf(conn, "POST / HTTP/1.1\r\nHost: acme.example.test\r\nContent-Length: %d\r\n\r\n", len(big))
			_, _ = conn.Write(big[:16<<10])
			resp := readResponse(t, conn, "POST")
			if b, _ := io.ReadAll(resp.Body); resp.StatusCode != 413 || string(b) != "request body too large\n" {
				t.Fatalf("got %d %q, want 413", resp.StatusCode, b)
			}
			if a.hits.Load() != before {
				t.Fatal("a body declared too large still reached the app")
			}
		})
		t.Run("expect 100-continue refused from the head", func(t *testing.T) {
			conn := rawConn(t, h.addr)
			_, _ = fmt.Fprintf(conn, "POST / HTTP/1.1\r\nHost: acme.example.test\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n", len(big))
			if resp := readResponse(t, conn, "POST"); resp.StatusCode != 413 {
				t.Fatalf("got %d, want 413 before any body", resp.StatusCode)
			}
		})
		t.Run("chunked body over the limit", func(t *testing.T) {
			conn := rawConn(t, h.addr)
			w := bufio.NewWriter(conn)
			fmt.Fprintf(w, "POST /chunked HTTP/1.1\r\nHost: acme.example.test\r\nTransfer-Encoding: chunked\r\n\r\n")
			go func() {
				for i := 0; i < 64; i++ {
					fmt.Fprintf(w, "%x\r\n%s\r\n", 64<<10, big[:64<<10])
				}
				fmt.Fprintf(w, "0\r\n\r\n")
				_ = w.Flush()
			}()
			if resp := readResponse(t, conn, "POST"); resp.StatusCode != 413 {
				t.Fatalf("got %d, want 413", resp.StatusCode)
			}
			// The body streamed to the app until it passed the limit; the app
			// must see it cut there, never whole. It records the request once
			// it stops reading the body.
			deadline := time.Now().Add(10 * time.Second)
			for a.lastRequest().URI != "/chunked" {
				if time.Now().After(deadline) {
					t.Fatal("the app never finished reading the cut request")
				}
				time.Sleep(10 * time.Millisecond)
			}
			if got := a.lastRequest().BodyLen; got > 1<<20 {
				t.Fatalf("the app read %d bytes of a body over the 1 MiB limit", got)
			}
		})
		t.Run("under the limit", func(t *testing.T) {
			code, _, _ := do(t, client(t), "POST", h.addr, "acme.example.test", "/", bytes.NewReader(big[:1<<20]), nil)
			if code != 200 || a.lastRequest().BodyLen != 1<<20 {
				t.Fatalf("got %d, app got %d bytes", code, a.lastRequest().BodyLen)
			}
		})
	})
}

// zeros is an endless reader of zero bytes that allocates nothing.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestLargeDownloadStreamsInBoundedMemory(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		size := int64(1 << 30)
		if raceEnabled || testing.Short() {
			size = 256 << 20
		}
		a := newBackend(t, "a", func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Query().Get("chunked") == "" {
				w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
			}
			buf := make([]byte, 64<<10)
			_, _ = io.CopyBuffer(w, io.LimitReader(zeros{}, size), buf)
		})
		h := newHarnessOn(t, engine, &Proxy{}, onePod(a))
		c := client(t)
		for _, q := range []string{"", "?chunked=1"} {
			t.Run("query"+q, func(t *testing.T) {
				runtime.GC()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				req, _ := http.NewRequest("GET", "http://"+h.addr+"/big"+q, nil)
				req.Host = "acme.example.test"
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				n, err := io.CopyBuffer(io.Discard, resp.Body, make([]byte, 64<<10))
				resp.Body.Close()
				if err != nil || n != size {
					t.Fatalf("got %d bytes (%v), want %d", n, err, size)
				}
				runtime.ReadMemStats(&after)
				// Everything allocated in this process while the body went
				// through: backend, edge and client together. Buffering the
				// body anywhere would allocate at least its size.
				if grew := after.TotalAlloc - before.TotalAlloc; grew > 32<<20 {
					t.Fatalf("%d MiB allocated while streaming %d MiB", grew>>20, size>>20)
				}
			})
		}
	})
}

func TestSlowClientIsCutOff(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		a := newBackend(t, "a", nil)
		h := newHarnessOn(t, engine, &Proxy{Timeouts: Timeouts{ClientHeader: 300 * time.Millisecond, ClientBody: 300 * time.Millisecond}}, onePod(a))

		t.Run("head sent too slowly", func(t *testing.T) {
			conn := rawConn(t, h.addr)
			start := time.Now()
			_, _ = conn.Write([]byte("GET / HTTP/1.1\r\nHost: acme.exa"))
			// The rest never comes: the edge must answer 408 or close within
			// its header timeout, not wait for us.
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			b, _ := io.ReadAll(conn)
			if took := time.Since(start); took > 3*time.Second {
				t.Fatalf("connection held for %s", took)
			}
			if len(b) > 0 && !strings.HasPrefix(string(b), "HTTP/1.1 408") {
				t.Fatalf("got %q", b)
			}
		})
		t.Run("body sent too slowly", func(t *testing.T) {
			conn := rawConn(t, h.addr)
			start := time.Now()
			_, _ = conn.Write([]byte("POST / HTTP/1.1\r\nHost: acme.example.test\r\nContent-Length: 100000\r\n\r\n"))
			_, _ = conn.Write(make([]byte, 20000))
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			b, _ := io.ReadAll(conn)
			if took := time.Since(start); took > 3*time.Second {
				t.Fatalf("connection held for %s", took)
			}
			if !strings.HasPrefix(string(b), "HTTP/1.1 408") {
				t.Fatalf("got %q, want a 408", b)
			}
		})
		t.Run("idle keep-alive connection closed", func(t *testing.T) {
			h := newHarnessOn(t, engine, &Proxy{Timeouts: Timeouts{ClientIdle: 300 * time.Millisecond}}, onePod(a))
			conn := rawConn(t, h.addr)
			_, _ = conn.Write([]byte("GET / HTTP/1.1\r\nHost: acme.example.test\r\n\r\n"))
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("%v %v", resp, err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			start := time.Now()
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := br.ReadByte(); err != io.EOF || time.Since(start) > 3*time.Second {
				t.Fatalf("idle connection: %v after %s, want EOF within the idle timeout", err, time.Since(start))
			}
		})
	})
}
