package leader

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/podedge/podedge/internal/changelog"
)

// commitAt appends one change of a value of size bytes to lh as a commit
// at at, as commitLogged does, and returns how many entries the head holds.
func commitAt(lh *logHead, n int, size int, at time.Time) int {
	value := []byte(`"` + strings.Repeat("v", max(size-2, 0)) + `"`)
	c := tenantChange(fmt.Sprintf("t-%d", n), value)
	next, _ := lh.head.Next([]changelog.Change{c}, lh.inlineKeep([]changelog.Change{c}, at))
	lh.committed(next, uint64(n+10), 1, at)
	return len(next.Entries)
}

func TestHeadHoldsWhatReadersMissBetweenReads(t *testing.T) {
	t0 := time.Now()
	lh := &logHead{head: changelog.NewHead("e", 4096)}
	for i := range 20 {
		if got := commitAt(lh, i, 100, t0.Add(time.Duration(i)*time.Millisecond)); got != i+1 {
			t.Fatalf("commit %d within the window: %d entries inline, want every entry of the window (%d)", i, got, i+1)
		}
	}
	// Once the rate falls, the head shrinks back to the fewest.
	if got := commitAt(lh, 20, 100, t0.Add(time.Second)); got != inlineEntries {
		t.Errorf("a commit after a quiet second: %d entries inline, want %d", got, inlineEntries)
	}
	if len(lh.commits) > inlineEntries {
		t.Errorf("%d commit marks kept for %d entries", len(lh.commits), len(lh.head.Entries))
	}

	t.Run("at most inlineMax entries", func(t *testing.T) {
		lh := &logHead{head: changelog.NewHead("e", 4096)}
		got := 0
		for i := range inlineMax + 50 {
			got = commitAt(lh, i, 10, t0)
		}
		if got != inlineMax {
			t.Errorf("%d entries inline, want %d", got, inlineMax)
		}
	})
	t.Run("at most inlineBytes of values", func(t *testing.T) {
		lh := &logHead{head: changelog.NewHead("e", 4096)}
		got := 0
		for i := range 100 {
			got = commitAt(lh, i, 1024, t0)
		}
		if want := inlineBytes / 1024; got != want {
			t.Errorf("%d entries of 1 KiB inline, want %d", got, want)
		}
	})
	t.Run("another leader's entries count as old", func(t *testing.T) {
		h := changelog.NewHead("e", 4096)
		for i := range 30 {
			h, _ = h.Next([]changelog.Change{tenantChange(fmt.Sprintf("o-%d", i), []byte(`{}`))}, 30)
		}
		lh := &logHead{head: h}
		if got := commitAt(lh, 100, 10, t0); got != inlineEntries {
			t.Errorf("first commit over a head read from Consul: %d entries inline, want %d", got, inlineEntries)
		}
	})
}
