package consulkv

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/podedge/podedge/router"
)

// streamed reads answer with a window of size bytes, through a reader
// that hands at most chunk bytes a call, and returns copies of the entries.
func streamed(answer string, size, chunk int, txn bool) ([]router.KVEntry, error) {
	var got []router.KVEntry
	fn := func(e *router.KVEntry) error {
		c := *e
		c.Key, c.Value = bytes.Clone(e.Key), bytes.Clone(e.Value)
		got = append(got, c)
		return nil
	}
	var r io.Reader = strings.NewReader(answer)
	if chunk > 0 {
		r = &chunked{r: r, n: chunk}
	}
	s := newStream(r, size)
	if txn {
		return got, streamTxn(s, fn)
	}
	return got, streamList(s, fn)
}

type chunked struct {
	r io.Reader
	n int
}

func (c *chunked) Read(p []byte) (int, error) { return c.r.Read(p[:min(len(p), c.n)]) }

func sameEntries(a, b []router.KVEntry) bool {
	return slices.EqualFunc(a, b, func(x, y router.KVEntry) bool {
		return bytes.Equal(x.Key, y.Key) && x.ModifyIndex == y.ModifyIndex && bytes.Equal(x.Value, y.Value) && x.Base64 == y.Base64
	})
}

// sameAsParsed fails t unless streaming answer, whatever the window and
// the reads, gives what parsing it whole does, or fails as it does.
func sameAsParsed(t *testing.T, answer string, txn bool) {
	t.Helper()
	parse := parseList
	if txn {
		parse = parseTxn
	}
	want, wantErr := parse([]byte(answer), nil)
	want = slices.Clone(want)
	for i := range want {
		want[i].Key, want[i].Value = bytes.Clone(want[i].Key), bytes.Clone(want[i].Value)
	}
	for _, size := range []int{16, 64, streamWindow} {
		for _, chunk := range []int{0, 1, 7} {
			got, err := streamed(answer, size, chunk, txn)
			if (err == nil) != (wantErr == nil) {
				t.Fatalf("window %d, reads of %d: error %v, parsed whole %v\n%s", size, chunk, err, wantErr, answer)
			}
			if err == nil && !sameEntries(got, want) {
				t.Fatalf("window %d, reads of %d: %+v, parsed whole %+v\n%s", size, chunk, got, want, answer)
			}
		}
	}
}

func TestStreamListReadsWhatParseListDoes(t *testing.T) {
	long := strings.Repeat("QUJD", 100)
	for _, answer := range []string{
		`[]`,
		` [ ] `,
		`[{"LockIndex":0,"Key":"podedge/tenants/acme","Flags":0,"Value":"eyJuYW1lIjoiYWNtZSJ9","CreateIndex":12,"ModifyIndex":15}]`,
		`[{"Key":"a","ModifyIndex":1,"Value":null},{"Session":"4ca8e74b","Key":"b","ModifyIndex":18446744073709551615,"Value":""}]`,
		`[{"Key":"a\u0026b\u003cc\u003e \"q\" \\ \/ \b\f\n\r\t é \u00e9 \u2028 \ud83d\ude00 \ud83d x \ude00","ModifyIndex":2,"Value":"AAE="}]`,
		`[{"Key":"\\\\","ModifyIndex":2,"Value":"AAE="},{"Key":"\\\"}","ModifyIndex":3}]`,
		"[\n  {\n    \"Key\": \"spaced\",\n    \"ModifyIndex\": 7,\n    \"Flags\": 1.5e3,\n    \"Ok\": true,\n    \"No\": false\n  }\n]\n",
		`[{"Key":"big","ModifyIndex":9,"Value":"` + long + `"},{"Key":"next","ModifyIndex":10,"Value":"` + long + `"}]`,
		// Refused, as parseList refuses them.
		``, `[`, `[{"Key":"a","ModifyIndex":1}`, `[{"Key":"a","ModifyIndex":1}] x`, `[{"Key":1,"ModifyIndex":1}]`,
		`[{"Key":"a","ModifyIndex":1,"Value":{}}]`, `[{"Key":"a\q","ModifyIndex":1}]`, `[{}]`, `[{"Key":"a\`,
		`[{"Key":"a","ModifyIndex":1}}]`, `[{"Key":"a","ModifyIndex":1}]]`, `[{"Key":"a","ModifyIndex":12`,
	} {
		sameAsParsed(t, answer, false)
	}
}

func TestStreamTxnReadsWhatParseTxnDoes(t *testing.T) {
	for _, answer := range []string{
		`{"Results":[{"KV":{"Key":"podedge/log/head","ModifyIndex":0,"Value":null}},{"KV":{"Key":"podedge/tenants/a","ModifyIndex":3,"Value":"e30="}}],"Errors":null}`,
		`{"Results":null,"Errors":null}`,
		`{"Results":[],"Errors":[]}`,
		`{"Errors":null,"Results":[{"KV":null},{"Other":{"x":[1,2]}},{"KV":{"Key":"k","ModifyIndex":1}}],"Index":5}`,
		` { } `,
		// Refused.
		`{"Results":[],"Errors":[{"OpIndex":0,"What":"no"}]}`,
		`{"Results":[{"KV":{"Key":"k"}}]}`,
		`{"Results":[{"KV":{"Key":"k","ModifyIndex":1}}]`,
		`{"Results":[{"KV":{"Key":"k","ModifyIndex":1}}] x`,
		`[]`,
	} {
		sameAsParsed(t, answer, true)
	}
}

// An error of the callback ends the read, and is what it returns.
func TestStreamStopsAtTheCallbacksError(t *testing.T) {
	stop := fmt.Errorf("enough")
	n := 0
	err := streamList(newStream(strings.NewReader(`[{"Key":"a","ModifyIndex":1},{"Key":"b","ModifyIndex":2}]`), 16),
		func(*router.KVEntry) error { n++; return stop })
	if err == nil || !strings.Contains(err.Error(), "enough") || n != 1 {
		t.Fatalf("error %v after %d entries", err, n)
	}
	// A reader that fails is the error, not the JSON it cut short.
	r := io.MultiReader(strings.NewReader(`[{"Key":"a","Mod`), iotest.ErrReader(fmt.Errorf("connection reset")))
	err = streamList(newStream(r, 16), func(*router.KVEntry) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("error %v, want the reader's", err)
	}
}

func FuzzStreamList(f *testing.F) {
	f.Add(`[{"LockIndex":0,"Key":"podedge/tenants/acme","Flags":0,"Value":"eyJ9","CreateIndex":12,"ModifyIndex":15}]`)
	f.Add(`[{"Key":"a\u0026\ud83d\ude00\n","ModifyIndex":2,"Value":null}]`)
	f.Add(`{"Results":[{"KV":{"Key":"k","ModifyIndex":1,"Value":"AA=="}}],"Errors":null}`)
	f.Fuzz(func(t *testing.T, answer string) {
		sameAsParsed(t, answer, false)
		sameAsParsed(t, answer, true)
	})
}

// BenchmarkStreamList100k reads the answer of BenchmarkParseList100k
// through the window: it holds a quarter of a megabyte, not 30 MB.
func BenchmarkStreamList100k(b *testing.B) {
	answer := listAnswer(100_000)
	b.SetBytes(int64(len(answer)))
	b.ReportAllocs()
	for b.Loop() {
		n := 0
		err := streamList(newStream(bytes.NewReader(answer), streamWindow), func(*router.KVEntry) error { n++; return nil })
		if err != nil || n != 100_000 {
			b.Fatal(err)
		}
	}
}

// listAnswer is a recursive list of n tenants as Consul writes it.
func listAnswer(n int) []byte {
	var sb strings.Builder
	sb.WriteByte('[')
	for i := range n {
		if i > 0 {
			sb.WriteByte(',')
		}
		v := base64.StdEncoding.EncodeToString(fmt.Appendf(nil, `{"name":"tenant-%d","pod":"pod-%d","domains":[],"created":"2026-11-26T16:05:00.123456789Z"}`, i, i%100))
		fmt.Fprintf(&sb, `{"LockIndex":0,"Key":"podedge/tenants/tenant-%d","Flags":0,"Value":"%s","CreateIndex":%d,"ModifyIndex":%d}`, i, v, 100+i, 100+i)
	}
	sb.WriteByte(']')
	return []byte(sb.String())
}

// BenchmarkStreamTxn100k reads a resync's answer of 100,000 tenants.
func BenchmarkStreamTxn100k(b *testing.B) {
	list := listAnswer(100_000)
	var sb bytes.Buffer
	sb.WriteString(`{"Results":[`)
	n := 0
	err := streamList(newStream(bytes.NewReader(bytes.Clone(list)), streamWindow), func(e *router.KVEntry) error {
		if n > 0 {
			sb.WriteByte(',')
		}
		n++
		fmt.Fprintf(&sb, `{"KV":{"LockIndex":0,"Key":%q,"Flags":0,"Value":"%s","CreateIndex":%d,"ModifyIndex":%d}}`, e.Key, e.Value, e.ModifyIndex, e.ModifyIndex)
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	sb.WriteString(`],"Errors":null}`)
	answer := sb.Bytes()
	b.SetBytes(int64(len(answer)))
	b.ReportAllocs()
	for b.Loop() {
		n := 0
		err := streamTxn(newStream(bytes.NewReader(answer), streamWindow), func(*router.KVEntry) error { n++; return nil })
		if err != nil || n != 100_000 {
			b.Fatal(err)
		}
	}
}
