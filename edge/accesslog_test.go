package edge

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestAccessLogLine(t *testing.T) {
	forEngines(t, func(t *testing.T, engine string) {
		// The line is written on the goroutine serving the request.
		var out lockedBuffer
		a := newBackend(t, "a", nil)
		p := &Proxy{AccessLog: NewAccessLogHandler(&out)}
		h := newHarnessOn(t, engine, p, onePod(a))
		code, hdr, _ := do(t, client(t), "GET", h.addr, "acme.example.test", "/page?q=1", nil, nil)
		if code != 200 {
			t.Fatalf("status %d", code)
		}
		var line map[string]any
		if err := json.Unmarshal(bytes.TrimSpace([]byte(out.String())), &line); err != nil {
			t.Fatalf("access log %q: %v", out.String(), err)
		}
		want := map[string]any{
			"level": "INFO", "msg": "access", "host": "acme.example.test", "method": "GET", "path": "/page?q=1",
			"status": 200.0, "bytes": 1.0, "client_ip": "127.0.0.1", "request_id": hdr.Get("X-Request-Id"),
			"pod": "pod-1", "upstream": a.addr(),
		}
		for k, v := range want {
			if line[k] != v {
				t.Errorf("%s: got %v, want %v", k, line[k], v)
			}
		}
		if _, ok := line["duration_us"].(float64); !ok {
			t.Errorf("no duration_us in %v", line)
		}
		if _, err := time.Parse(time.RFC3339Nano, line["time"].(string)); err != nil {
			t.Errorf("time %v: %v", line["time"], err)
		}
	})
}

// The fast path writes what slog's own JSON handler writes, escaping
// included: hosts and paths are the client's bytes.
func TestAccessLogMatchesJSONHandler(t *testing.T) {
	x := &exchange{
		host:     []byte("acme.example.test"),
		method:   []byte("GET"),
		uri:      []byte("/a\"b\\c\nd\x01\xff\u2028é<>&"),
		clientIP: []byte("192.0.2.9"),
		reqID:    []byte("id-1"),
		status:   502, bytes: 30, elapsed: 1500 * time.Microsecond,
		pod: &podStats{name: "pod-1"}, upstreamAddr: "10.0.0.1:80", attempts: 3,
		err: errors.New("upstream 10.0.0.1:80: \"reset\""),
	}
	r := slog.NewRecord(time.Date(2026, 1, 2, 3, 4, 5, 6789, time.UTC), slog.LevelInfo, "access", 0)
	r.AddAttrs(slog.Attr{Value: slog.AnyValue((*accessEntry)(x))})
	var fast, std bytes.Buffer
	if err := NewAccessLogHandler(&fast).Handle(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	if err := slog.NewJSONHandler(&std, nil).Handle(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	if fast.String() != std.String() {
		t.Fatalf("fast path:\n%s\nslog:\n%s", fast.String(), std.String())
	}
	if strings.Count(fast.String(), "\n") != 1 {
		t.Fatalf("not one line: %q", fast.String())
	}
	// Other records still go through.
	var other bytes.Buffer
	slog.New(NewAccessLogHandler(&other)).Info("hello", "k", 1)
	var m map[string]any
	if err := json.Unmarshal(other.Bytes(), &m); err != nil || m["msg"] != "hello" || !reflect.DeepEqual(m["k"], 1.0) {
		t.Fatalf("other record: %q %v", other.String(), err)
	}
}

// sameAsJSONHandler fails t when the access log's own encoding of a line
// with this path, at this time, differs from slog's JSON handler's.
func sameAsJSONHandler(t *testing.T, path []byte, at time.Time) {
	t.Helper()
	x := &exchange{host: []byte("acme.example.test"), method: []byte("GET"), uri: path,
		clientIP: []byte("192.0.2.9"), reqID: []byte("id-1"), status: 200}
	r := slog.NewRecord(at, slog.LevelInfo, "access", 0)
	r.AddAttrs(slog.Attr{Value: slog.AnyValue((*accessEntry)(x))})
	var fast, std bytes.Buffer
	h := NewAccessLogHandler(&fast)
	for range 2 { // the second line takes the cached timestamp
		fast.Reset()
		if err := h.Handle(t.Context(), r); err != nil {
			t.Fatal(err)
		}
	}
	if err := slog.NewJSONHandler(&std, nil).Handle(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	if fast.String() != std.String() {
		t.Fatalf("fast path:\n%s\nslog:\n%s", fast.String(), std.String())
	}
}

func TestAccessLogEscapesAndTimes(t *testing.T) {
	paris, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		paris = time.FixedZone("CET", 3600)
	}
	base := time.Date(2026, 11, 26, 15, 54, 8, 0, time.UTC)
	for _, ns := range []int{0, 1, 10, 120_000_000, 123_456_789, 999_999_999} {
		for _, loc := range []*time.Location{time.UTC, paris, time.FixedZone("", -7*3600-30*60)} {
			sameAsJSONHandler(t, []byte("/"), base.Add(time.Duration(ns)).In(loc))
		}
	}
	// Every byte value at every position of an 8-byte word and around it.
	for c := range 256 {
		for pos := range 10 {
			p := []byte("/abcdefghijklmnop")
			p[pos] = byte(c)
			sameAsJSONHandler(t, p, base)
		}
	}
}

func FuzzAccessLogPath(f *testing.F) {
	f.Add([]byte("/index.html?q=1"), int64(0))
	f.Add([]byte("/a\"b\\c\nd\x01\xff\u2028é<>&"), int64(123456789))
	f.Fuzz(func(t *testing.T, path []byte, ns int64) {
		sameAsJSONHandler(t, path, time.Unix(1_790_000_000, ns%1e9).UTC())
	})
}
