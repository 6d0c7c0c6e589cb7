package leader

import (
	"strconv"
)

// IndexHeader carries a Consul index. Every write answers with the index it
// committed at; every read answers with the index its view reflects; a read
// that sends it (or ?index=) back sees that index or later.
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

// parseIndex parses a Consul index given as a decimal.
func parseIndex(v string) (uint64, bool) {
	n, err := strconv.ParseUint(v, 10, 64)
	return n, err == nil
}
