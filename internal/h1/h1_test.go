package h1

import (
	"bufio"
	"bytes"
	"io"
	"net/http/httputil"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

func TestCompleteHead(t *testing.T) {
	msg := []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next")
	if head, tooLarge := CompleteHead(msg[:20], 64); head != nil || tooLarge {
		t.Fatalf("incomplete head: %q %v", head, tooLarge)
	}
	head, tooLarge := CompleteHead(msg, 64)
	if string(head) != "GET / HTTP/1.1\r\nHost: a\r\n\r\n" || tooLarge {
		t.Fatalf("head %q, tooLarge %v", head, tooLarge)
	}
	if _, tooLarge := CompleteHead(msg, 10); !tooLarge {
		t.Fatal("a 27-byte head passed a 10-byte limit")
	}
	if _, tooLarge := CompleteHead(bytes.Repeat([]byte("x"), 65), 64); !tooLarge {
		t.Fatal("65 bytes without a blank line passed a 64-byte limit")
	}
}

func TestParserReadsHeadsWithoutAllocating(t *testing.T) {
	p := NewParser(4096)
	var h fasthttp.RequestHeader
	head := []byte("POST /x?y=1 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\n")
	if err := p.Parse(&h, head); err != nil {
		t.Fatal(err)
	}
	if string(h.Host()) != "example.com" || h.ContentLength() != 5 || string(h.RequestURI()) != "/x?y=1" {
		t.Fatalf("parsed %q", h.Header())
	}
	if err := p.Parse(&h, []byte("GARBAGE\r\n\r\n")); err == nil {
		t.Fatal("a malformed head parsed")
	}
	allocs := testing.AllocsPerRun(100, func() { _ = p.Parse(&h, head) })
	if allocs != 0 {
		t.Fatalf("%v allocations per parse", allocs)
	}
}

// chunkedBody is a body as Go's own chunked writer frames it, with the
// extensions and trailers a scanner must step over.
func chunkedBody(t *testing.T, data string) []byte {
	var b bytes.Buffer
	w := httputil.NewChunkedWriter(&b)
	for len(data) > 0 {
		n := min(len(data), 7)
		if _, err := io.WriteString(w, data[:n]); err != nil {
			t.Fatal(err)
		}
		data = data[n:]
	}
	w.Close()
	b.WriteString("\r\n")
	return b.Bytes()
}

func TestChunkedFindsTheEndWhateverTheCuts(t *testing.T) {
	bodies := map[string][]byte{
		"go writer":  chunkedBody(t, strings.Repeat("0123456789", 30)),
		"empty":      []byte("0\r\n\r\n"),
		"extensions": []byte("5;name=value\r\nhello\r\n0;last\r\n\r\n"),
		"trailers":   []byte("5\r\nhello\r\n0\r\nExpires: never\r\nX-Sum: 1\r\n\r\n"),
		"upper hex":  []byte("A\r\n0123456789\r\n0\r\n\r\n"),
	}
	for name, body := range bodies {
		msg := append(append([]byte{}, body...), "HTTP/1.1 200 OK\r\n"...)
		// Every way of cutting the message in two pieces.
		for cut := 0; cut <= len(msg); cut++ {
			var c Chunked
			n1, done, err := c.Scan(msg[:cut])
			if err != nil {
				t.Fatalf("%s, cut %d: %v", name, cut, err)
			}
			total := n1
			if !done {
				n2, done2, err := c.Scan(msg[cut:])
				if err != nil || !done2 {
					t.Fatalf("%s, cut %d: done %v, err %v", name, cut, done2, err)
				}
				total += n2
			}
			if total != len(body) {
				t.Fatalf("%s, cut %d: body of %d bytes, want %d", name, cut, total, len(body))
			}
		}
	}
}

func TestChunkedRefusesMalformedFraming(t *testing.T) {
	for _, bad := range []string{
		"x\r\n",                  // not a size
		"\r\n",                   // no size
		"5\r\nhelloX",            // no CRLF after the data
		"5\rX",                   // a CR without its LF
		"1000000000000000\r\n",   // 16 hex digits
		"5\r\nhello\r\n0\r\n\rX", // a broken final CRLF
		"0 00\r\n",               // blanks, then no extension
		"5;x\nhello",             // an extension line without its CR
	} {
		var c Chunked
		if _, _, err := c.Scan([]byte(bad)); err != ErrChunk {
			t.Errorf("%q: err %v, want ErrChunk", bad, err)
		}
	}
}

// The scanner agrees with fasthttp's reader of chunked bodies on where a
// body ends: it finds the end of every body fasthttp reads, and a body it
// finds whole, fasthttp reads too (trailer fields aside, which it checks
// more closely than framing needs). The scanner is the stricter one on line
// ends: a bare LF is malformed.
func FuzzChunked(f *testing.F) {
	f.Add([]byte("5\r\nhello\r\n0\r\n\r\n"))
	f.Add([]byte("3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n"))
	f.Fuzz(func(t *testing.T, body []byte) {
		var c Chunked
		n, done, err := c.Scan(body)
		if n > len(body) {
			t.Fatalf("took %d of %d bytes", n, len(body))
		}
		read := func(b []byte) error {
			var resp fasthttp.Response
			msg := append([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), b...)
			err := resp.ReadLimitBody(bufio.NewReader(bytes.NewReader(msg)), 64<<10)
			if err == fasthttp.ErrBodyTooLarge {
				t.Skip("a body larger than fasthttp is allowed to read here")
			}
			return err
		}
		// fasthttp takes a bare LF for a CRLF; the scanner does not.
		bareLF := bytes.Count(body, []byte("\n")) != bytes.Count(body, []byte("\r\n"))
		if ferr := read(body); ferr == nil && !bareLF && (!done || err != nil) {
			t.Fatalf("fasthttp read %q; the scanner: done %v, %v", body, done, err)
		}
		if done && err == nil {
			if ferr := read(body[:n]); ferr != nil && !strings.Contains(ferr.Error(), "header") {
				t.Fatalf("scanner took %q as a whole body; fasthttp: %v", body[:n], ferr)
			}
		}
	})
}
