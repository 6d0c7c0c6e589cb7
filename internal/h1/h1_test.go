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
	if head, err := CompleteHead(msg[:20], 64, true); head != nil || err != nil {
		t.Fatalf("incomplete head: %q %v", head, err)
	}
	head, err := CompleteHead(msg, 64, true)
	if string(head) != "GET / HTTP/1.1\r\nHost: a\r\n\r\n" || err != nil {
		t.Fatalf("head %q, err %v", head, err)
	}
	if _, err := CompleteHead(msg, 10, true); err != ErrHeadTooLarge {
		t.Fatalf("a 27-byte head and a 10-byte limit: %v", err)
	}
	if _, err := CompleteHead(bytes.Repeat([]byte("x"), 65), 64, true); err != ErrHeadTooLarge {
		t.Fatalf("65 bytes without a blank line and a 64-byte limit: %v", err)
	}
}

func TestHeadFraming(t *testing.T) {
	cases := []struct {
		name    string
		head    string
		request bool
		want    error
	}{
		{"plain", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b c\r\n\r\n", true, nil},
		{"no header", "GET / HTTP/1.1\r\n\r\n", true, nil},
		{"tab and obs-text in a value", "GET / HTTP/1.1\r\nX-A: a\tb\xff\r\n\r\n", true, nil},
		{"chunked in any case", "POST / HTTP/1.1\r\nTransfer-Encoding:  Chunked \r\n\r\n", true, nil},
		{"a response's coding is not checked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false, nil},
		{"bare LF blank line", "GET / HTTP/1.1\r\nHost: a\r\n\n", true, ErrBareLF},
		{"LF CR LF", "GET / HTTP/1.1\r\nHost: a\n\r\n", true, ErrBareLF},
		{"bare LF start line", "GET / HTTP/1.1\nHost: a\r\n\r\n", true, ErrBareLF},
		{"blank first line", "\r\nGET / HTTP/1.1\r\n\r\n", true, ErrBareLF},
		{"bare CR", "GET / HTTP/1.1\r\nHost: a\rX-B: c\r\n\r\n", true, ErrBareCR},
		{"bare CR in the start line", "GET /\r HTTP/1.1\r\n\r\n", true, ErrBareCR},
		{"obs-fold", "GET / HTTP/1.1\r\nX-A: 1\r\n 2\r\n\r\n", true, ErrObsFold},
		{"obs-fold by tab", "GET / HTTP/1.1\r\nX-A: 1\r\n\t2\r\n\r\n", true, ErrObsFold},
		{"start line begins with a space", " GET / HTTP/1.1\r\n\r\n", true, ErrObsFold},
		{"space before the colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", true, ErrFieldName},
		{"space in a name", "GET / HTTP/1.1\r\nX A: a\r\n\r\n", true, ErrFieldName},
		{"no colon", "GET / HTTP/1.1\r\nHost\r\n\r\n", true, ErrFieldName},
		{"empty name", "GET / HTTP/1.1\r\n: a\r\n\r\n", true, ErrFieldName},
		{"NUL in a name", "GET / HTTP/1.1\r\nX\x00A: a\r\n\r\n", true, ErrFieldName},
		{"coding identity", "POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n", true, ErrCoding},
		{"codings listed", "POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n", true, ErrCoding},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			head, err := CompleteHead([]byte(c.head), 1024, c.request)
			if err != c.want {
				t.Fatalf("err %v, want %v", err, c.want)
			}
			if err == nil && string(head) != c.head {
				t.Fatalf("head %q, want the whole input", head)
			}
			// A parser's copy of the header lines gets the same verdict.
			if _, lines, ok := strings.Cut(c.head, "\n"); ok && c.name != "blank first line" && !strings.Contains(c.name, "start line") {
				if err := CheckFields([]byte(lines), c.request); err != c.want {
					t.Fatalf("CheckFields: err %v, want %v", err, c.want)
				}
			}
		})
	}
}

// A head that arrives a few bytes at a time gets the verdict it gets whole,
// whatever the cuts, and each line is checked once.
func TestHeadScannerResumes(t *testing.T) {
	for _, head := range []string{
		"GET /x HTTP/1.1\r\nHost: a\r\nX-Long: " + strings.Repeat("v", 300) + "\r\n\r\n",
		"GET /x HTTP/1.1\r\nHost: a\r\n\nX-B: 1\r\n\r\n",
	} {
		_, whole := CompleteHead([]byte(head), 4096, true)
		for step := 1; step <= 7; step++ {
			var s HeadScanner
			var got []byte
			var err error
			for n := step; ; n += step {
				n = min(n, len(head))
				got, err = s.Scan([]byte(head[:n]), 4096, true)
				if got != nil || err != nil || n == len(head) {
					break
				}
			}
			if err != whole || (err == nil && string(got) != head) {
				t.Fatalf("step %d: %q %v, want the verdict %v", step, got, err, whole)
			}
		}
	}
}

func TestSkipEmptyLines(t *testing.T) {
	for in, want := range map[string]int{"": 0, "GET": 0, "\r\nGET": 2, "\r\n\r\n\r": 4, "\nGET": 0, "\r\n\n": 2} {
		if got := SkipEmptyLines([]byte(in)); got != want {
			t.Errorf("%q: %d, want %d", in, got, want)
		}
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
		"x\r\n",                          // not a size
		"\r\n",                           // no size
		"5\r\nhelloX",                    // no CRLF after the data
		"5\rX",                           // a CR without its LF
		"1000000000000000\r\n",           // 16 hex digits
		"5\r\nhello\r\n0\r\n\rX",         // a broken final CRLF
		"0 00\r\n",                       // blanks, then no extension
		"5;x\nhello",                     // an extension line without its CR
		"0\r\nX-A: 1\r\n folded\r\n\r\n", // an obsolete line folding in the trailers
		"0\r\n X-A: 1\r\n\r\n",           // a trailer line that begins with a blank
		"0\r\nX-A : 1\r\n\r\n",           // a blank before the colon
		"0\r\nX(A): 1\r\n\r\n",           // a name that is no token
		"0\r\n: 1\r\n\r\n",               // an empty name
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

// BenchmarkHeadScan checks a browser-sized request head.
func BenchmarkHeadScan(b *testing.B) {
	head := []byte("GET /products/42?ref=home HTTP/1.1\r\nHost: acme.example.test\r\n" +
		"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\n" +
		"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\nAccept-Language: en-GB,en;q=0.9\r\n" +
		"Accept-Encoding: gzip, deflate, br\r\nCookie: session=0123456789abcdef0123456789abcdef; theme=dark\r\n" +
		"Connection: keep-alive\r\nUpgrade-Insecure-Requests: 1\r\n\r\n")
	b.SetBytes(int64(len(head)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := CompleteHead(head, 16<<10, true); err != nil {
			b.Fatal(err)
		}
	}
}

// A bare CR is refused as soon as its line is whole, not once the head
// ends: a head that never ends would otherwise wait for client_header
// where fasthttp's parser refuses it at once.
func TestBareCRRefusedBeforeTheHeadEnds(t *testing.T) {
	var s HeadScanner
	in := []byte("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\x01\r\nabc")
	if head, err := s.Scan(in, 4096, true); err != ErrBareCR || head != nil {
		t.Fatalf("Scan: %q, %v; want ErrBareCR", head, err)
	}
}
