package leader

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/podedge/podedge/router"
)

// IndexHeader carries a Consul index. Every write answers with the index it
// committed at and every read with the index its view reflects; a read that
// sends it back (or ?index=) sees that index or later.
const IndexHeader = "X-Podedge-Index"

// wrote records that this replica answered a write committed at index, so
// that its own next reads reflect it without the client asking.
func (s *Server) wrote(index uint64) {
	for {
		cur := s.lastWrite.Load()
		if index <= cur || s.lastWrite.CompareAndSwap(cur, index) {
			return
		}
	}
}

// viewPublished follows the indexes of the views published. Consul's
// indexes go backwards only when its state was replaced (a snapshot
// restored, a new cluster): the writes this replica answered are gone with
// it, and its reads stop waiting for them.
func (s *Server) viewPublished(v *router.Snapshot) {
	if prev := s.viewIndex.Swap(v.LogIndex); v.LogIndex < prev && s.lastWrite.Load() > v.LogIndex {
		s.lastWrite.Store(0)
		s.log.Warn("consul's index went backwards; reads no longer wait for the writes answered before", "was", prev, "now", v.LogIndex)
	}
}

// parseIndex parses a Consul index given as a decimal.
func parseIndex(v string) (uint64, bool) {
	n, err := strconv.ParseUint(v, 10, 64)
	return n, err == nil
}

// readQuery is what a read asks of the view.
type readQuery struct {
	// index is the newest index the client has seen (?index= or
	// X-Podedge-Index, the higher of both): the view must reflect it.
	index uint64
	// wait, when positive, makes the read block until the view is newer
	// than index, for at most that long.
	wait time.Duration
	// params are the route's own query parameters.
	params url.Values
}

// parseRead validates a read's query string: the route's own parameters
// (allowed) and index and wait, each at most once.
func (s *Server) parseRead(r *http.Request, allowed ...string) (readQuery, error) {
	q := readQuery{params: url.Values{}}
	values, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return q, invalid("malformed query string: %v", err)
	}
	hasIndex := false
	for key, vs := range values {
		if len(vs) > 1 {
			return q, invalid("parameter %q is given %d times", key, len(vs))
		}
		v := vs[0]
		switch {
		case key == "index":
			n, ok := parseIndex(v)
			if !ok {
				return q, invalid("index: %q is not an index (a decimal integer, the %s of an earlier answer)", v, IndexHeader)
			}
			q.index, hasIndex = max(q.index, n), true
		case key == "wait":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return q, invalid("wait: %q is not a positive duration such as 30s or 5m", v)
			}
			q.wait = min(d, s.conf().MaxQueryTime)
		case slices.Contains(allowed, key):
			q.params.Set(key, v)
		default:
			return q, invalid("unknown parameter %q; %s takes %s", key, r.URL.Path, strings.Join(append(slices.Clone(allowed), "index", "wait"), ", "))
		}
	}
	if hs := r.Header.Values(IndexHeader); len(hs) > 0 {
		n, ok := parseIndex(hs[0])
		if !ok || len(hs) > 1 {
			return q, invalid("%s: %q is not one index (a decimal integer)", IndexHeader, strings.Join(hs, ", "))
		}
		q.index, hasIndex = max(q.index, n), true
	}
	if q.wait > 0 && !hasIndex {
		return q, invalid("wait: needs index, the %s of an earlier answer, to wait for something newer", IndexHeader)
	}
	return q, nil
}

// readView returns the replica's view for a read, once it reflects what
// the read asks for, with the read's own parameters; or answers the error
// itself and returns nil.
//
// A read waits, at most read_wait, until the view reflects the client's
// index and every write this replica answered; a blocking read (?wait=)
// waits until the view is newer than the client's index, at most wait.
func (s *Server) readView(w http.ResponseWriter, r *http.Request, allowed ...string) (*router.Snapshot, url.Values) {
	q, err := s.parseRead(r, allowed...)
	if err != nil {
		writeError(w, err)
		return nil, nil
	}
	need := max(q.index, s.lastWrite.Load())
	limit, kind := s.conf().ReadWait, "index"
	if q.wait > 0 {
		// As Consul does, up to a sixteenth more, so that clients that
		// began together do not all come back together.
		need, kind = max(need, q.index+1), "blocking"
		limit = q.wait + rand.N(q.wait/16+1)
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(limit + 10*time.Second))
	}
	v := s.router.Snapshot()
	if !v.Synced || v.LogIndex < need {
		ctx, cancel := context.WithTimeout(r.Context(), limit)
		defer cancel()
		if kind == "blocking" {
			// The replica stops: a blocking read answers the current
			// state now. A read waiting for a write to show (read_wait,
			// short) is finished, as any request in flight is.
			stop := context.AfterFunc(s.reads, cancel)
			defer stop()
		}
		v, err = s.router.WaitIndex(ctx, need)
		switch {
		case err == nil:
			s.m.readWaits.WithLabelValues(kind, "ok").Inc()
		case r.Context().Err() != nil:
			return nil, nil // the client left
		case kind == "blocking" && v.Synced && v.LogIndex >= q.index && v.LogIndex >= s.lastWrite.Load():
			// Nothing newer within wait: the answer is the current state.
			s.m.readWaits.WithLabelValues(kind, "unchanged").Inc()
		case !v.Synced:
			s.m.readWaits.WithLabelValues(kind, "timeout").Inc()
			writeError(w, &Error{Kind: KindUnavailable, Msg: "this replica has no view of Consul yet; retry"})
			return nil, nil
		default:
			s.m.readWaits.WithLabelValues(kind, "timeout").Inc()
			writeError(w, &Error{Kind: KindUnavailable, Msg: fmt.Sprintf("this replica's view is at index %d and has not reached index %d within %s; retry", v.LogIndex, need, s.conf().ReadWait)})
			return nil, nil
		}
	}
	w.Header().Set(IndexHeader, strconv.FormatUint(v.LogIndex, 10))
	return v, q.params
}
