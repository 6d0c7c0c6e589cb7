package backend

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
)

func TestBytesPathAnswersThatManyBytes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := New(Config{Name: "app-1", Pod: "pod-1", Size: 10})
	go srv.Serve(ln)
	defer srv.Shutdown(context.Background())
	for _, c := range []struct {
		path   string
		status int
		size   int
	}{
		{"/bytes/0", 200, 0},
		{"/bytes/64", 200, 64},
		{"/bytes/102400", 200, 102400},
		{"/bytes/1048576", 200, 1 << 20},
		// Not a size: the fixed-size body of -size.
		{"/bytes/1048577", 200, 10},
		{"/bytes/12x", 200, 10},
		{"/", 200, 10},
	} {
		resp, err := http.Get("http://" + ln.Addr().String() + c.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.status || len(body) != c.size || resp.Header.Get("X-App-Server") != "app-1" {
			t.Errorf("%s: %d with %d bytes from %q, want %d with %d", c.path, resp.StatusCode, len(body), resp.Header.Get("X-App-Server"), c.status, c.size)
		}
	}
}

func BenchmarkSizeOf(b *testing.B) {
	path := []byte("/bytes/102400")
	b.ReportAllocs()
	for b.Loop() {
		if n, ok := sizeOf(path); !ok || n != 102400 {
			b.Fatal(n, ok)
		}
	}
}
