package leader

import (
	"errors"
	"fmt"
	"net/http"
)

// Kind is the class of a failed call, which fixes its HTTP status.
type Kind int

// The kinds of failure. The zero Kind is not used: an error that is not an
// *Error is a failure to reach Consul and counts as KindUnavailable.
const (
	// KindInvalid is bad input: 400.
	KindInvalid Kind = iota + 1
	// KindTooLarge is a body over max_body_bytes: 413.
	KindTooLarge
	// KindNotFound is an unknown pod or tenant: 404.
	KindNotFound
	// KindConflict is a name or domain already taken, a pod that still has
	// tenants, a move to a full pod: 409.
	KindConflict
	// KindNoCapacity is a sign-up that no pod can take: 503.
	KindNoCapacity
	// KindNotLeader is a write that found no leader to run it, or that
	// lost leadership while it ran (its transaction was fenced off): 503.
	KindNotLeader
	// KindUnavailable is Consul unreachable or a write that kept
	// conflicting past write_retries: 503.
	KindUnavailable
)

// Error is an outcome the API reports to the client as {"error": Msg}.
type Error struct {
	Kind Kind
	Msg  string
}

func (e *Error) Error() string { return e.Msg }

// Status is the HTTP status of the error.
func (e *Error) Status() int {
	switch e.Kind {
	case KindInvalid:
		return http.StatusBadRequest
	case KindTooLarge:
		return http.StatusRequestEntityTooLarge
	case KindNotFound:
		return http.StatusNotFound
	case KindConflict:
		return http.StatusConflict
	default:
		return http.StatusServiceUnavailable
	}
}

func invalid(format string, args ...any) error {
	return &Error{Kind: KindInvalid, Msg: fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) error {
	return &Error{Kind: KindNotFound, Msg: fmt.Sprintf(format, args...)}
}

func conflict(format string, args ...any) error {
	return &Error{Kind: KindConflict, Msg: fmt.Sprintf(format, args...)}
}

// asError classifies err: an *Error as it is, anything else as Consul being
// unavailable, with the cause in the message.
func asError(err error) *Error {
	if e, ok := errors.AsType[*Error](err); ok {
		return e
	}
	return &Error{Kind: KindUnavailable, Msg: "consul unavailable: " + err.Error()}
}

// errNotLeader is returned by writes on a replica that does not hold the
// lock (or lost it while the write ran).
var errNotLeader = &Error{Kind: KindNotLeader, Msg: "this replica is not the leader; retry"}
