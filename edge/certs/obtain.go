package certs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"
)

// storeRetry is how long a name is not tried again after Consul could not
// be read or written for it: handshakes fail fast meanwhile instead of
// each waiting on an unreachable Consul.
const storeRetry = 5 * time.Second

// nameState is what this edge knows of the issuance of one name.
type nameState struct {
	flight   *flight   // issuance in progress; nil when none
	failures int       // failed issuances in a row (shared through KV)
	retryAt  time.Time // no issuance is tried before
	lastErr  error     // why the last one failed
}

// flight is one issuance in progress: the handshakes that need the name
// and the renewal loop wait on done.
type flight struct {
	done  chan struct{}
	entry *entry // set when done, on success
	err   error  // set when done, on failure (a *certError)
}

// certError is a failure to provide a certificate, with the reason label
// of edge_tls_handshake_failures_total.
type certError struct {
	reason string
	err    error
}

func (e *certError) Error() string { return e.err.Error() }
func (e *certError) Unwrap() error { return e.err }

func failWith(reason string, err error) error { return &certError{reason: reason, err: err} }

// reasonOf is the reason label of err.
func reasonOf(err error) string {
	var ce *certError
	if errors.As(err, &ce) {
		return ce.reason
	}
	return reasonIssuance
}

// begin returns the issuance of name in progress, or starts one, unless
// the name is backing off from a failure. held is the certificate being
// renewed (nil for a first issuance): a shared copy newer than it ends the
// issuance without an order.
func (m *Manager) begin(name string, held *entry) (*flight, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return nil, failWith(reasonUnavailable, errors.New("the edge is stopping"))
	}
	st := m.names[name]
	if st == nil {
		st = &nameState{}
		m.names[name] = st
	}
	if st.flight != nil {
		return st.flight, nil
	}
	if now := time.Now(); now.Before(st.retryAt) {
		reason := reasonBackoff
		if st.failures == 0 {
			reason = reasonUnavailable // Consul, not the CA
		}
		return nil, failWith(reason, fmt.Errorf("certificate for %q: %v; next attempt in %s", name, st.lastErr, st.retryAt.Sub(now).Round(time.Second)))
	}
	f := &flight{done: make(chan struct{})}
	st.flight = f
	m.wg.Add(1)
	go m.fly(name, held, f)
	return f, nil
}

// fly runs one issuance and publishes its outcome.
func (m *Manager) fly(name string, held *entry, f *flight) {
	defer m.wg.Done()
	ctx, cancel := context.WithTimeout(m.ctx, m.cfg.OrderTimeout)
	e, err := m.obtain(ctx, name, held)
	cancel()
	m.mu.Lock()
	st := m.names[name]
	st.flight = nil
	if err == nil {
		delete(m.names, name)
	}
	m.mu.Unlock()
	f.entry, f.err = e, err
	close(f.done)
}

// setBackoff records that name may not be tried before retryAt.
func (m *Manager) setBackoff(name string, failures int, retryAt time.Time, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if st := m.names[name]; st != nil {
		st.failures, st.retryAt, st.lastErr = failures, retryAt, err
	}
}

// backoff is the wait after the n-th failure in a row: BackoffMin,
// doubling, at most BackoffMax.
func (m *Manager) backoff(n int) time.Duration {
	d := m.cfg.BackoffMin
	for i := 1; i < n && d < m.cfg.BackoffMax; i++ {
		d *= 2
	}
	return min(d, m.cfg.BackoffMax)
}

// obtain provides a certificate for name: the shared copy if there is a
// usable one, else one ordered under the name's lock, so that one edge
// orders while the others wait and then find its certificate.
func (m *Manager) obtain(ctx context.Context, name string, held *entry) (*entry, error) {
	if e, err := m.shared(ctx, name, held, false); e != nil || err != nil {
		return e, err
	}
	if err := m.checkFailure(ctx, name, false); err != nil {
		return nil, err
	}
	release, err := m.locks.lock(ctx, name)
	if err != nil {
		if ctx.Err() != nil {
			return nil, failWith(reasonPending, fmt.Errorf("certificate for %q: still locked by another edge after %s", name, m.cfg.OrderTimeout))
		}
		return nil, m.storeFailed(name, err)
	}
	defer release()
	// Another edge may have finished, or failed, while this one waited.
	if e, err := m.shared(ctx, name, held, true); e != nil || err != nil {
		if e != nil {
			m.log.Debug("certificate stored by another edge while waiting for its lock", "name", name)
		}
		return e, err
	}
	if err := m.checkFailure(ctx, name, true); err != nil {
		return nil, err
	}

	kind := "issue"
	if held != nil {
		kind = "renew"
	}
	m.log.Info("ordering a certificate", "name", name, "ca", m.cfg.Directory, "kind", kind)
	start := time.Now()
	cert, err := m.orderer.order(ctx, name)
	if err != nil {
		return nil, m.orderFailed(ctx, name, err)
	}
	m.metrics.success.Inc()
	data, err := encodeCert(cert)
	if err != nil {
		return nil, failWith(reasonIssuance, err)
	}
	index, err := m.cache.putLive(ctx, name, data)
	if err != nil {
		// Serve it here anyway; other edges will order their own once
		// Consul is back.
		m.metrics.storeErrors.Inc()
		m.log.Error("certificate issued but not stored in consul; serving it from this edge only", "name", name, "error", err.Error())
	}
	if err := m.cache.clearFailure(ctx, name); err != nil {
		m.metrics.storeErrors.Inc()
	}
	e := newEntry(name, cert, index, m.cfg.RenewBefore)
	m.mem.put(e)
	m.log.Info("certificate issued", "name", name, "ca", m.cfg.Directory, "kind", kind,
		"not_after", e.notAfter.UTC().Format(time.RFC3339), "serial", cert.Leaf.SerialNumber.Text(16),
		"took", time.Since(start).Round(time.Millisecond).String())
	return e, nil
}

// shared loads the certificate of name from KV into memory when it is
// usable: valid and, when renewing, another certificate than held (another
// edge renewed it) that expires no earlier. It returns nil, nil when there
// is none to use.
func (m *Manager) shared(ctx context.Context, name string, held *entry, consistent bool) (*entry, error) {
	st, err := m.cache.loadLive(ctx, name, consistent, time.Now())
	var bad *badValue
	switch {
	case errors.As(err, &bad):
		m.log.Warn("certificate in consul is not usable; ordering a new one", "name", name, "error", err.Error())
		return nil, nil
	case err != nil:
		return nil, m.storeFailed(name, err)
	case st == nil:
		return nil, nil
	case held != nil && (bytes.Equal(st.cert.Leaf.Raw, held.cert.Leaf.Raw) || st.cert.Leaf.NotAfter.Before(held.notAfter)):
		return nil, nil // the one being replaced (or older)
	}
	e := newEntry(name, st.cert, st.index, m.cfg.RenewBefore)
	m.mem.put(e)
	return e, nil
}

// checkFailure returns a backoff error when any edge's last issuance of
// name failed and its retry time has not come.
func (m *Manager) checkFailure(ctx context.Context, name string, consistent bool) error {
	f, err := m.cache.loadFailure(ctx, name, consistent)
	if err != nil {
		return m.storeFailed(name, err)
	}
	if f == nil || !time.Now().Before(f.RetryAt) {
		return nil
	}
	err = fmt.Errorf("issuance failed %d time(s), last by %s: %s", f.Failures, f.Holder, f.Error)
	m.setBackoff(name, f.Failures, f.RetryAt, err)
	return failWith(reasonBackoff, fmt.Errorf("certificate for %q: %w; next attempt in %s", name, err, time.Until(f.RetryAt).Round(time.Second)))
}

// orderFailed logs, counts and records a failed order, locally and in KV,
// so that no edge tries the name again before its backoff ends.
func (m *Manager) orderFailed(ctx context.Context, name string, err error) error {
	if m.ctx.Err() != nil {
		return failWith(reasonUnavailable, errors.New("the edge is stopping"))
	}
	m.metrics.failure.Inc()
	n := 1
	m.mu.Lock()
	if st := m.names[name]; st != nil {
		n = st.failures + 1
	}
	m.mu.Unlock()
	// A record left by another edge counts too.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	defer cancel()
	if f, _ := m.cache.loadFailure(rctx, name, true); f != nil && f.Failures >= n {
		n = f.Failures + 1
	}
	wait := m.backoff(n)
	now := time.Now()
	m.setBackoff(name, n, now.Add(wait), err)
	m.log.Error("certificate issuance failed", "name", name, "ca", m.cfg.Directory, "error", err.Error(),
		"failures", n, "retry_in", wait.String())
	if perr := m.cache.putFailure(rctx, name, failure{
		Failures: n, RetryAt: now.Add(wait).UTC(), Error: err.Error(), CA: m.cfg.Directory,
		Holder: m.cfg.Holder, At: now.UTC(),
	}); perr != nil {
		m.metrics.storeErrors.Inc()
	}
	return failWith(reasonIssuance, fmt.Errorf("certificate for %q: %w", name, err))
}

// storeFailed counts a Consul failure and holds the name off briefly.
func (m *Manager) storeFailed(name string, err error) error {
	m.metrics.storeErrors.Inc()
	m.mu.Lock()
	if st := m.names[name]; st != nil && st.failures == 0 {
		st.retryAt, st.lastErr = time.Now().Add(storeRetry), err
	}
	m.mu.Unlock()
	return failWith(reasonUnavailable, fmt.Errorf("certificate for %q: %w", name, err))
}
