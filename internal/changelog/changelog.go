// Package changelog is the format of the change log in Consul KV: the
// leader appends an entry for every change of a pod or a tenant, in the
// same fenced transaction as the change, and every reader (edges, dnsd,
// leader replicas) follows the log instead of reading the pods/ and
// tenants/ folders again at each change. Consul has no KV deltas
// (hashicorp/consul#4142): without the log each change of one tenant
// would make every reader fetch the whole folder.
//
// The log lives under <prefix>log/:
//
//	log/head         the head: the epoch, the newest sequence number, the
//	                 ring's size and the newest entries inline
//	log/ring/<slot>  entry seq is kept in slot seq % ring until the ring
//	                 comes round
//
// A reader blocks on the head (one small key) and applies the entries it
// has not applied; when it cannot (a new epoch, entries the ring no longer
// holds, a chain that does not follow, an index that went backwards), it
// reads the folders and the head again in one read-only transaction.
package changelog

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strconv"
)

// Kinds of entry: what changed.
const (
	KindTenant = "tenant"
	KindPod    = "pod"
)

// Entry is one change: the value now stored at <prefix><kind>s/<name>, or
// its deletion.
type Entry struct {
	// Seq numbers the entries of an epoch from 1, without gaps.
	Seq uint64 `json:"seq"`
	// Chain is a hash of every entry of the epoch up to this one
	// (ChainNext): a reader whose chain does not lead to it is on another
	// history (a restored snapshot) and must resync.
	Chain string `json:"chain"`
	Kind  string `json:"kind"`
	Name  string `json:"name"`
	// Value is the stored JSON, compact; nil for a deletion.
	Value json.RawMessage `json:"value,omitempty"`
	// Repair marks an entry the leader wrote after finding a value changed
	// in KV outside it.
	Repair bool `json:"repair,omitempty"`
}

// Deleted reports whether the entry deletes its key.
func (e *Entry) Deleted() bool { return len(e.Value) == 0 }

// Head is the value of log/head.
type Head struct {
	// Epoch names one history of the log; a new one means readers start
	// over from the folders.
	Epoch string `json:"epoch"`
	// Seq is the newest entry's; 0 before the first.
	Seq uint64 `json:"seq"`
	// Ring is the number of ring slots.
	Ring uint64 `json:"ring"`
	// Genesis is the chain before the epoch's first entry.
	Genesis string `json:"genesis"`
	// Entries are the newest entries, oldest first, the last one Seq's.
	Entries []Entry `json:"entries"`
}

// Chain returns the chain after the newest entry (Genesis without entries).
func (h *Head) Chain() string {
	if n := len(h.Entries); n > 0 {
		return h.Entries[n-1].Chain
	}
	return h.Genesis
}

// HeadKey and RingKey name the log's keys under prefix (with its slash).
func HeadKey(prefix string) string { return prefix + "log/head" }

// RingKey is the ring slot that holds entry seq.
func RingKey(prefix string, seq, ring uint64) string {
	return prefix + "log/ring/" + strconv.FormatUint(seq%ring, 10)
}

// Genesis is the chain an epoch starts from.
func Genesis(epoch string) string {
	h := fnv.New64a()
	h.Write([]byte(epoch))
	return strconv.FormatUint(h.Sum64(), 16)
}

// ChainNext is the chain after an entry of kind, name and value (nil for a
// deletion) that follows prev.
func ChainNext(prev, kind, name string, value []byte) string {
	p, _ := strconv.ParseUint(prev, 16, 64)
	h := fnv.New64a()
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], p)
	h.Write(b[:])
	h.Write([]byte(kind))
	h.Write([]byte{0})
	h.Write([]byte(name))
	h.Write([]byte{0})
	h.Write(value)
	return strconv.FormatUint(h.Sum64(), 16)
}

// Normalize returns value as a reader of an Entry will see it: compact,
// and escaped as encoding/json escapes, so that the writer's chain and the
// reader's agree. A value that is not JSON fails.
func Normalize(value []byte) (json.RawMessage, error) {
	if len(value) == 0 {
		return nil, nil
	}
	out, err := json.Marshal(json.RawMessage(value))
	if err != nil {
		return nil, fmt.Errorf("value is not JSON: %w", err)
	}
	return out, nil
}

// Follows checks that e is the entry after one whose sequence number and
// chain are seq and chain.
func (e *Entry) Follows(seq uint64, chain string) error {
	if e.Seq != seq+1 {
		return fmt.Errorf("entry %d where %d was due", e.Seq, seq+1)
	}
	if e.Kind != KindTenant && e.Kind != KindPod {
		return fmt.Errorf("entry %d: unknown kind %q", e.Seq, e.Kind)
	}
	if e.Name == "" {
		return fmt.Errorf("entry %d: no name", e.Seq)
	}
	if want := ChainNext(chain, e.Kind, e.Name, e.Value); e.Chain != want {
		return fmt.Errorf("entry %d: chain %s does not follow %s", e.Seq, e.Chain, chain)
	}
	return nil
}

// DecodeHead parses a head value and checks it is whole: its inline
// entries consecutive, ending at Seq, each following the one before.
func DecodeHead(raw []byte) (*Head, error) {
	var h Head
	if err := json.Unmarshal(raw, &h); err != nil {
		return nil, fmt.Errorf("log head: %w", err)
	}
	switch {
	case h.Epoch == "":
		return nil, fmt.Errorf("log head: no epoch")
	case h.Ring == 0:
		return nil, fmt.Errorf("log head: ring of 0 slots")
	case uint64(len(h.Entries)) > h.Seq:
		return nil, fmt.Errorf("log head: %d entries inline with seq %d", len(h.Entries), h.Seq)
	}
	if n := len(h.Entries); n > 0 && h.Entries[n-1].Seq != h.Seq {
		return nil, fmt.Errorf("log head: newest entry %d, seq %d", h.Entries[n-1].Seq, h.Seq)
	}
	for i := 1; i < len(h.Entries); i++ {
		prev := &h.Entries[i-1]
		if err := h.Entries[i].Follows(prev.Seq, prev.Chain); err != nil {
			return nil, fmt.Errorf("log head: %w", err)
		}
	}
	if len(h.Entries) > 0 && h.Entries[0].Seq == 1 {
		if err := h.Entries[0].Follows(0, h.Genesis); err != nil {
			return nil, fmt.Errorf("log head: %w", err)
		}
	}
	return &h, nil
}

// DecodeEntry parses a ring slot's value.
func DecodeEntry(raw []byte) (Entry, error) {
	var e Entry
	if err := json.Unmarshal(raw, &e); err != nil {
		return Entry{}, fmt.Errorf("log entry: %w", err)
	}
	return e, nil
}

// Change is what a writer records: a kind and name, and the value now
// stored (normalized with Normalize), nil for a deletion.
type Change struct {
	Kind   string
	Name   string
	Value  json.RawMessage
	Repair bool
}

// NewHead is the head of a new epoch with ring slots and no entry yet.
func NewHead(epoch string, ring uint64) Head {
	return Head{Epoch: epoch, Ring: ring, Genesis: Genesis(epoch)}
}

// Next returns the head after changes, and their entries: the new entries
// all stay inline, with as many older ones as keep the total at keep.
func (h Head) Next(changes []Change, keep int) (Head, []Entry) {
	chain := h.Chain()
	added := make([]Entry, len(changes))
	for i, c := range changes {
		h.Seq++
		chain = ChainNext(chain, c.Kind, c.Name, c.Value)
		added[i] = Entry{Seq: h.Seq, Chain: chain, Kind: c.Kind, Name: c.Name, Value: c.Value, Repair: c.Repair}
	}
	old := h.Entries
	if n := keep - len(added); n < len(old) {
		old = old[max(len(old)-max(n, 0), 0):]
	}
	h.Entries = append(append(make([]Entry, 0, len(old)+len(added)), old...), added...)
	return h, added
}
