package certs

import (
	"context"
	"log/slog"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/retry"
)

// Blocking query timing, as the router's: a query waits at most watchWait;
// wake-ups are at least watchMinWait apart, so that a busy folder cannot
// make a watcher spin; failures back off from watchRetryBase, doubling, to
// watchRetryMax, with jitter.
const (
	watchWait      = 5 * time.Minute
	watchMinWait   = 50 * time.Millisecond
	watchRetryBase = 250 * time.Millisecond
	watchRetryMax  = 10 * time.Second
)

// watchList calls apply with the values under prefix, then again each time
// they change, until ctx ends. While Consul is unreachable it retries with
// backoff, logging the first failure and the recovery; apply keeps what it
// had. Reads may be served by any Consul server (stale).
func watchList(ctx context.Context, kv *api.KV, prefix string, log *slog.Logger, apply func(api.KVPairs)) {
	var index uint64
	failures := 0
	for ctx.Err() == nil {
		start := time.Now()
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: watchWait, AllowStale: true}).WithContext(ctx)
		pairs, meta, err := kv.List(prefix, q)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			wait := retry.Backoff(watchRetryBase, watchRetryMax, failures)
			if failures == 1 {
				log.Warn("consul watch failed; keeping what is known", "prefix", prefix, "error", err.Error(), "retry_in", wait.String())
			}
			index = 0
			if !retry.Sleep(ctx, wait) {
				return
			}
			continue
		}
		if failures > 0 {
			log.Info("consul watch recovered", "prefix", prefix)
			failures = 0
		}
		if meta.LastIndex != index || index == 0 {
			apply(pairs)
		}
		if meta.LastIndex < index || meta.LastIndex == 0 {
			index = 0 // a restarted agent starts a new index
		} else {
			index = meta.LastIndex
		}
		if !retry.Sleep(ctx, watchMinWait-time.Since(start)) {
			return
		}
	}
}
