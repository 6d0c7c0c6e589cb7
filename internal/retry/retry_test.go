package retry

import (
	"context"
	"testing"
	"time"
)

func TestBackoffDoublesToTheCapWithJitter(t *testing.T) {
	base, maxWait := 100*time.Millisecond, time.Second
	prev := time.Duration(0)
	for n := 1; n <= 12; n++ {
		for range 50 {
			d := Backoff(base, maxWait, n)
			ceil := min(base<<(n-1), maxWait)
			if d > ceil || d < ceil*3/4 {
				t.Fatalf("failure %d: backoff %s outside [%s, %s]", n, d, ceil*3/4, ceil)
			}
			if n > 1 && ceil > prev && d < prev*3/4 {
				t.Fatalf("backoff shrank: %s after %s", d, prev)
			}
		}
		prev = min(base<<(n-1), maxWait)
	}
	if d := Backoff(0, time.Second, 3); d != 0 {
		t.Fatalf("zero base: %s", d)
	}
}

func TestSleepEndsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	if !Sleep(ctx, 0) || !Sleep(ctx, time.Millisecond) {
		t.Fatal("a live context's sleep reported it ended")
	}
	done := make(chan bool)
	go func() { done <- Sleep(ctx, time.Hour) }()
	cancel()
	select {
	case ok := <-done:
		if ok {
			t.Fatal("a cancelled sleep reported the context live")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("sleep outlived its context")
	}
	if Sleep(ctx, 0) {
		t.Fatal("a cancelled context reported live")
	}
}
