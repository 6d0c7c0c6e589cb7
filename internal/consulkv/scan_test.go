package consulkv

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/router"
)

// jsonEntry is what encoding/json makes of an entry, to compare with.
type jsonEntry struct {
	Key         *string
	ModifyIndex *uint64
	Value       []byte
}

// sameAsEncodingJSON fails t when parseList and encoding/json disagree on
// an answer both accept.
func sameAsEncodingJSON(t *testing.T, answer string) {
	t.Helper()
	var want []jsonEntry
	wantErr := json.Unmarshal([]byte(answer), &want)
	for _, e := range want {
		if e.Key == nil || e.ModifyIndex == nil {
			wantErr = errMissing
		}
	}
	got, err := parseList([]byte(answer), nil)
	if wantErr != nil || !utf8.ValidString(answer) {
		return // invalid for the comparison; parseList may refuse or not
	}
	if err != nil {
		t.Fatalf("parseList refused what encoding/json reads: %v\n%s", err, answer)
	}
	if len(got) != len(want) {
		t.Fatalf("%d entries, encoding/json %d", len(got), len(want))
	}
	for i, e := range got {
		v, err := base64.StdEncoding.DecodeString(string(e.Value))
		if string(e.Key) != *want[i].Key || e.ModifyIndex != *want[i].ModifyIndex || err != nil || string(v) != string(want[i].Value) {
			t.Fatalf("entry %d: %q@%d %q (%v), encoding/json %q@%d %q", i, e.Key, e.ModifyIndex, v, err,
				*want[i].Key, *want[i].ModifyIndex, want[i].Value)
		}
	}
}

var errMissing = jsonError("missing field")

type jsonError string

func (e jsonError) Error() string { return string(e) }

func TestParseListReadsWhatConsulWrites(t *testing.T) {
	for _, answer := range []string{
		`[]`,
		` [ ] `,
		`[{"LockIndex":0,"Key":"podedge/tenants/acme","Flags":0,"Value":"eyJuYW1lIjoiYWNtZSJ9","CreateIndex":12,"ModifyIndex":15}]`,
		`[{"Key":"a","ModifyIndex":1,"Value":null},{"Session":"4ca8e74b-6350-7587-addf-a18084928f3c","Key":"b","ModifyIndex":18446744073709551615,"Value":""}]`,
		`[{"Key":"a\u0026b\u003cc\u003e \"q\" \\ \/ \b\f\n\r\t é \u00e9 \u2028 \ud83d\ude00 \ud83d x \ude00","ModifyIndex":2,"Value":"AAE="}]`,
		"[\n  {\n    \"Key\": \"spaced\",\n    \"ModifyIndex\": 7,\n    \"Flags\": 1.5e3,\n    \"Ok\": true,\n    \"No\": false\n  }\n]\n",
	} {
		sameAsEncodingJSON(t, answer)
	}
}

func TestParseListRefusesBadAnswers(t *testing.T) {
	for answer, want := range map[string]string{
		``:                                `want '[', found the end`,
		`[`:                               `want '{', found the end`,
		`[{"Key":"a","ModifyIndex":1}`:    `want , or ] after an entry, found the end`,
		`[{"Key":"a","ModifyIndex":1}] x`: `'x' after the list`,
		`[{"Key":1,"ModifyIndex":1}]`:     `Key is not a string`,
		`[{"Key":"a","ModifyIndex":"1"}]`: `ModifyIndex "1" is not an index`,
		`[{"Key":"a","ModifyIndex":-1}]`:  `ModifyIndex "-1" is not an index`,
		`[{"Key":"a","ModifyIndex":1.5}]`: `ModifyIndex "1.5" is not an index`,
		`[{"Key":"a","ModifyIndex":1,"Value":{}}]`: `field Value: unexpected '{'`,
		`[{"Key":"a","ModifyIndex":1,"Value":3}]`:  `Value is neither a string nor null`,
		`[{"Key":"a\q","ModifyIndex":1}]`:          `bad escape \q`,
		`[{"Key":"a\u12","ModifyIndex":1}]`:        `bad \u escape`,
		"[{\"Key\":\"a\nb\",\"ModifyIndex\":1}]":   `control byte 0xa in a string`,
		`[{"Key":"a","ModifyIndex":1 "Flags":0}]`:  `want , or } in an entry, found '"'`,
		`[{}]`:        `an entry without a Key`,
		`[{"Key":"a\`: `unterminated string`,
	} {
		_, err := parseList([]byte(answer), nil)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one naming %q", answer, err, want)
		}
	}
}

func FuzzParseList(f *testing.F) {
	f.Add(`[{"LockIndex":0,"Key":"podedge/tenants/acme","Flags":0,"Value":"eyJ9","CreateIndex":12,"ModifyIndex":15}]`)
	f.Add(`[{"Key":"a\u0026\ud83d\ude00\n","ModifyIndex":2,"Value":null}]`)
	f.Add(`[]`)
	f.Fuzz(func(t *testing.T, answer string) {
		sameAsEncodingJSON(t, answer)
	})
}

// BenchmarkParseList100k reads an answer of 100,000 tenants as Consul
// writes it (about 30 MB); "consul-api" is what consul/api does with it.
func BenchmarkParseList100k(b *testing.B) {
	var sb strings.Builder
	sb.WriteByte('[')
	for i := range 100_000 {
		if i > 0 {
			sb.WriteByte(',')
		}
		v := base64.StdEncoding.EncodeToString(fmt.Appendf(nil, `{"name":"tenant-%d","pod":"pod-%d","domains":[],"created":"2026-11-26T16:05:00.123456789Z"}`, i, i%100))
		fmt.Fprintf(&sb, `{"LockIndex":0,"Key":"podedge/tenants/tenant-%d","Flags":0,"Value":"%s","CreateIndex":%d,"ModifyIndex":%d}`, i, v, 100+i, 100+i)
	}
	sb.WriteByte(']')
	answer := []byte(sb.String())
	b.Run("consulkv", func(b *testing.B) {
		b.SetBytes(int64(len(answer)))
		b.ReportAllocs()
		body := make([]byte, len(answer))
		var entries []router.KVEntry
		for b.Loop() {
			copy(body, answer) // parseList unescapes in place
			var err error
			if entries, err = parseList(body, entries[:0]); err != nil || len(entries) != 100_000 {
				b.Fatal(err)
			}
		}
	})
	b.Run("consul-api", func(b *testing.B) {
		b.SetBytes(int64(len(answer)))
		b.ReportAllocs()
		for b.Loop() {
			var pairs api.KVPairs
			if err := json.Unmarshal(answer, &pairs); err != nil || len(pairs) != 100_000 {
				b.Fatal(err)
			}
		}
	})
}
