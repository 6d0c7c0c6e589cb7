package leader

import (
	"context"
	"errors"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/retry"
)

// How the leader's calls to Consul that are not blocking queries (a
// transaction, a session renewal, a lock acquisition) are bounded.
//
// With a Raft leader, Consul answers such a call within milliseconds. While
// it elects one, it holds the call and tries it again with a growing
// backoff (0.4s, 0.9s, 1.7s, 3.5s up to its rpc_hold_timeout of 7s), so a
// call held since early in an election may notice the new leader seconds
// after it is there. A call to a server that stopped answering mid-call
// (SIGSTOP, a partition) hangs until Consul's rpc_client_timeout (60s),
// even once the agent routes new calls elsewhere. Either way the call would
// hold up what waits on it: the write turn, an election step.
//
// So a call still open after stuckAfter is watched: every probeEvery the
// agent is asked which server is the Raft leader (GET /v1/status/leader,
// which its server answers from its own Raft state, without a leader).
// When it cannot say (no answer within probeTimeout, an error, no leader)
// or names another leader than at first, Consul is in trouble; once it
// names a leader again after that, the call is ended at once
// (errConsulBack) for its caller to try it afresh. A call that is merely
// slow while Consul keeps its leader (a slow disk) is never ended that way.
//
// A read of the whole platform is the exception (boundRead): at a million
// tenants Consul spends seconds of CPU building the 300 MB answer, and
// answers probes late meanwhile (1.6 s measured on a 2-core machine); a
// probe without an answer then says that Consul is busy, not that it
// failed. Only an answer that names no leader, or another one, counts.
const (
	stuckAfter   = 250 * time.Millisecond
	probeEvery   = 250 * time.Millisecond
	probeTimeout = 500 * time.Millisecond
	// callTimeout bounds the election's calls, whose probes may never
	// succeed (Consul out of reach). A write has write_timeout for that.
	callTimeout = 5 * time.Second
)

// errConsulBack ends a call that outlived a failure of Consul.
var errConsulBack = errors.New("consul has a leader again; the call was stuck behind its failure")

// boundCall watches one call through client under ctx once it has waited
// stuckAfter, and ends it when Consul has a leader again after failing.
// The caller must call the returned stop when the call has returned.
func boundCall(ctx context.Context, client *api.Client) (context.Context, context.CancelFunc) {
	return watchedCall(ctx, client, false)
}

// boundRead is boundCall for a read whose answer grows with the platform:
// a probe that Consul answers late, or not within probeTimeout, is not
// trouble.
func boundRead(ctx context.Context, client *api.Client) (context.Context, context.CancelFunc) {
	return watchedCall(ctx, client, true)
}

func watchedCall(ctx context.Context, client *api.Client, patient bool) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	t := time.AfterFunc(stuckAfter, func() { watchCall(ctx, client, cancel, patient) })
	return ctx, func() {
		t.Stop()
		cancel(nil)
	}
}

// watchCall probes Consul's leader until the call's ctx ends, and ends the
// call once a leader is named after trouble.
func watchCall(ctx context.Context, client *api.Client, end context.CancelCauseFunc, patient bool) {
	first, trouble := "", false
	for {
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		leader, err := client.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(pctx))
		late := pctx.Err() != nil
		cancel()
		if ctx.Err() != nil {
			return
		}
		switch {
		case patient && late:
			// Busy building a large answer, or stopped: the call's own
			// bound tells.
		case err != nil || leader == "":
			trouble = true
		case first == "":
			first = leader
		case leader != first:
			trouble = true
		}
		if trouble && err == nil && leader != "" {
			end(errConsulBack)
			return
		}
		if !retry.Sleep(ctx, probeEvery) {
			return
		}
	}
}

// callErr is the error of a call made under a bounded ctx: the cause when
// the bound ended it, so that logs say why.
func callErr(ctx context.Context, err error) error {
	if err != nil && errors.Is(context.Cause(ctx), errConsulBack) {
		return errConsulBack
	}
	return err
}

// withCallTimeout bounds one call of the election.
func withCallTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, callTimeout)
}

// retryWait is the wait before the next attempt after the n-th Consul
// failure in a row. A call ended because Consul has a leader again is tried
// again at once. A failure to reach Consul or a Consul without a leader (a
// transport error, a 5xx) is retried within a quarter of a second, so that
// the replica is back as soon as Consul is: 25ms doubling up to 250ms. A
// request Consul refused (a 4xx: an ACL, a bad request) will not succeed by
// asking again soon: 100ms doubling up to 5s. Both with jitter, so that
// replicas do not retry in step.
func retryWait(err error, n int) time.Duration {
	if errors.Is(err, errConsulBack) {
		return 0
	}
	if se, ok := errors.AsType[api.StatusError](err); ok && se.Code >= 400 && se.Code < 500 {
		return retry.Backoff(100*time.Millisecond, 5*time.Second, n)
	}
	return retry.Backoff(25*time.Millisecond, 250*time.Millisecond, n)
}
