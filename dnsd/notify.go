package dnsd

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// NOTIFY (RFC 1996): when the serial changes, each configured secondary is
// told so that it transfers the change at once rather than at its next
// refresh. Changes come in bursts (a health flap, many sign-ups), so
// NOTIFYs are coalesced: at most one a second to each secondary, carrying
// the serial current when it leaves.

const (
	// notifyInterval is the least time between two NOTIFYs to one
	// secondary.
	notifyInterval = time.Second
	// notifyTries and notifyTimeout bound the retransmissions of one
	// NOTIFY without an answer; the timeout doubles each time.
	notifyTries   = 5
	notifyTimeout = time.Second
)

// notifyResultNames label dnsd_notify_total.
var notifyResultNames = [...]string{"ok", "error", "unanswered"}

// notifier sends the NOTIFYs of one dnsd.
type notifier struct {
	h       *Handler
	targets []*notifyTarget
	key     *tsigKey
	log     *slog.Logger
}

type notifyTarget struct {
	addr string
	wake chan struct{} // a change is pending; capacity 1
}

func newNotifier(h *Handler, c Transfer, log *slog.Logger) *notifier {
	n := &notifier{h: h, key: newTSIGKey(c.TSIG), log: log.With("component", "dnsd")}
	for _, a := range c.Notify {
		n.targets = append(n.targets, &notifyTarget{addr: a, wake: make(chan struct{}, 1)})
	}
	return n
}

// changed records that the serial changed; it never blocks.
func (n *notifier) changed(uint32) {
	for _, t := range n.targets {
		select {
		case t.wake <- struct{}{}:
		default: // one is pending already: it will carry the latest serial
		}
	}
}

// run sends NOTIFYs until ctx ends.
func (n *notifier) run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, t := range n.targets {
		wg.Go(func() { n.serve(ctx, t) })
	}
	wg.Wait()
}

func (n *notifier) serve(ctx context.Context, t *notifyTarget) {
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.wake:
		}
		if wait := time.Until(last.Add(notifyInterval)); wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		last = time.Now()
		n.send(ctx, t)
	}
}

// send NOTIFYs t of the current serial, retrying without an answer, until
// answered, the tries run out, or a newer change is pending (whose NOTIFY
// then goes instead).
func (n *notifier) send(ctx context.Context, t *notifyTarget) {
	d := n.h.data.Load()
	serial := n.h.Serial()
	m := new(dns.Msg)
	m.SetNotify(d.zone)
	soa := d.soaRR(serial, d.apexTTL)
	soa.Hdr.Name = d.zone
	m.Answer = []dns.RR{soa}
	c := &dns.Client{Net: "udp"}
	if n.key != nil {
		c.TsigSecret = map[string]string{n.key.name: n.key.secret}
	}
	timeout := notifyTimeout
	for try := 1; try <= notifyTries; try++ {
		if n.key != nil {
			m.SetTsig(n.key.name, n.key.algorithm, tsigFudge, time.Now().Unix())
		}
		c.Timeout = timeout
		r, _, err := c.ExchangeContext(ctx, m, t.addr)
		switch {
		case ctx.Err() != nil:
			return
		case err == nil && r.Rcode == dns.RcodeSuccess:
			n.h.m.notifies[0].Inc()
			n.log.Debug("secondary notified", "secondary", t.addr, "serial", serial)
			return
		case err == nil:
			n.h.m.notifies[1].Inc()
			n.log.Warn("secondary refused a NOTIFY", "secondary", t.addr, "serial", serial, "rcode", dns.RcodeToString[r.Rcode])
			return
		}
		if len(t.wake) > 0 {
			return // a newer serial is due; it will be sent instead
		}
		m.Extra = nil
		m.Id = dns.Id()
		timeout *= 2
	}
	n.h.m.notifies[2].Inc()
	n.log.Warn("secondary did not answer NOTIFY", "secondary", t.addr, "serial", serial, "tries", notifyTries)
}
