package edge

import (
	"errors"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/podedge/podedge/router"
	"github.com/valyala/fasthttp"
)

// TenantLimits is the edge's default of the tenants' traffic limits
// (docs/limits.md): it applies to the tenants of this edge's pod whose KV
// value sets no "limits" object. A tenant that sets one gets exactly its
// own (a zero field there is no limit of its kind). Zero fields here set no
// limit of their kind.
type TenantLimits struct {
	// RPS and Burst are the requests per second, and how many may come at
	// once above that rate, across the pod's passing edges.
	RPS   float64 `yaml:"rps"`
	Burst int     `yaml:"burst"`
	// Concurrency bounds the tenant's requests in flight across the pod's
	// passing edges.
	Concurrency int `yaml:"concurrency"`
	// ConnsPerIP bounds the connections one client address holds to this
	// edge with requests for the tenant.
	ConnsPerIP int `yaml:"conns_per_ip"`
	// QueueTimeout is how long a request over the concurrency limit waits
	// for a slot before it gets 503; 0 refuses it at once.
	QueueTimeout time.Duration `yaml:"queue_timeout"`
}

func (t TenantLimits) limits() router.Limits {
	return router.Limits{RPS: t.RPS, Burst: t.Burst, Concurrency: t.Concurrency, ConnsPerIP: t.ConnsPerIP}
}

func (t TenantLimits) validate() error {
	switch {
	case !(t.RPS >= 0) || t.RPS > 1e9:
		return errors.New("tenant_limits.rps: must be between 0 and 1e9")
	case t.Burst < 0:
		return errors.New("tenant_limits.burst: must not be negative")
	case t.Concurrency < 0:
		return errors.New("tenant_limits.concurrency: must not be negative")
	case t.ConnsPerIP < 0:
		return errors.New("tenant_limits.conns_per_ip: must not be negative")
	case t.QueueTimeout < 0 || t.QueueTimeout > time.Minute:
		return errors.New("tenant_limits.queue_timeout: must be between 0 and 1m")
	}
	return nil
}

// limitKind names the limit that refused a request.
type limitKind uint8

const (
	limitNone limitKind = iota
	limitRate
	limitConcurrency
	limitConns
)

// limitNames are the values of the limit label and access log field.
var limitNames = [...]string{"", "rate", "concurrency", "conns_per_ip"}

// The refusals, made once so that refusing allocates nothing: a flood of
// them is what limits are for.
var (
	errRateLimited        = errors.New("tenant over its request rate")
	errConcurrencyLimited = errors.New("tenant over its concurrency limit")
	errConnsLimited       = errors.New("client over the tenant's connections per address")
	// errSlotWait is no refusal: the request waits for a concurrency slot.
	errSlotWait = errors.New("waiting for a concurrency slot")
)

// admission is what a request holds of its tenant's limits.
type admission struct {
	state *router.TenantState
	share router.Share
	// tenant names the tenant for the offender metrics.
	tenant string
	// w is the request's waiter, queued while it waits for a slot; slot
	// tells it holds one.
	w    *router.Waiter
	slot bool
	// queued: w went into the tenant's queue (and may still be there).
	queued bool
	// refused is the limit that refused the request, retryAfter when to
	// come back.
	refused    limitKind
	retryAfter time.Duration
}

// admit applies the tenant's limits to a request it serves itself (not one
// it forwards to another pod's edges, which apply them there). It returns
// errSlotWait when the request must wait for a concurrency slot, with its
// waiter queued.
func (p *Proxy) admit(x *exchange, v *view, route router.Route) error {
	cur := p.cur()
	l := route.Tenant.Limits
	if l == nil {
		l = cur.tenantDefault
	}
	st := route.Tenant.State()
	if l == nil || st == nil {
		return nil
	}
	a := &x.adm
	a.state, a.tenant = st, route.Tenant.Name
	a.share = router.ShareOf(*l, len(route.Pod.PassingEdges))
	sh := &a.share
	// A forwarding edge or proxy holds many clients' requests on its
	// connections: their count says nothing of one client.
	if sh.ConnsPerIP > 0 && x.conn != nil && !p.trusted(v, x.peer) {
		if !x.conn.hold(st, x.peer, sh) {
			return p.refuseLimit(x, limitConns, time.Second)
		}
	}
	if ok, wait := st.AdmitRate(int64(x.start.Sub(p.epoch)), sh); !ok {
		return p.refuseLimit(x, limitRate, wait)
	}
	if sh.Concurrency <= 0 {
		return nil
	}
	w := a.w
	if cur.TenantLimits.QueueTimeout <= 0 {
		w = nil
	}
	if st.AcquireOrWait(sh, w) {
		a.slot = true
		return nil
	}
	if w == nil {
		return p.refuseLimit(x, limitConcurrency, time.Second)
	}
	a.queued = true
	return errSlotWait
}

// slotTaken tries again for the slot a waiting request wants; true when
// it has it (false: it waits on, queued again).
func (a *admission) slotTaken() bool {
	if a.state.AcquireOrWait(&a.share, a.w) {
		a.slot = true
		return true
	}
	return false
}

// giveUp ends a wait for a slot that took too long.
func (p *Proxy) giveUp(x *exchange) error {
	a := &x.adm
	a.state.Withdraw(a.w)
	a.state.GiveUp()
	return p.refuseLimit(x, limitConcurrency, time.Second)
}

// awaitSlot is the wait of a goroutine's request (fasthttp's data path)
// for a concurrency slot, up to tenant_limits.queue_timeout.
func (p *Proxy) awaitSlot(x *exchange) error {
	wait := p.cur().TenantLimits.QueueTimeout
	select {
	case <-x.ready: // a wake meant for an earlier wait
	default:
	}
	if x.queueTimer == nil {
		x.queueTimer = time.NewTimer(wait)
	} else {
		x.queueTimer.Reset(wait)
	}
	defer x.queueTimer.Stop()
	for {
		select {
		case <-x.ready:
			if x.adm.slotTaken() {
				return nil
			}
		case <-x.queueTimer.C:
			return p.giveUp(x)
		}
	}
}

// refuseLimit counts a refusal by limit kind and returns its error.
func (p *Proxy) refuseLimit(x *exchange, kind limitKind, retryAfter time.Duration) error {
	a := &x.adm
	a.refused, a.retryAfter = kind, retryAfter
	p.metrics.limitRefusals[kind].Inc()
	p.metrics.offenders.note(a.state, a.tenant)
	switch kind {
	case limitRate:
		return errRateLimited
	case limitConns:
		return errConnsLimited
	}
	return errConcurrencyLimited
}

// endAdmission gives back what the request held: its place in the queue,
// its slot.
func (x *exchange) endAdmission() {
	a := &x.adm
	if a.state != nil {
		if a.queued {
			a.state.Withdraw(a.w)
		}
		if a.slot {
			a.state.Release(&a.share)
		}
	}
	*a = admission{}
}

// setRetryAfter gives a refused request its Retry-After, in whole seconds
// rounded up (RFC 9110, section 10.2.3).
func setRetryAfter(ctx *fasthttp.RequestCtx, d time.Duration) {
	var buf [20]byte
	secs := max(int64((d+time.Second-1)/time.Second), 1)
	ctx.Response.Header.SetBytesV("Retry-After", strconv.AppendInt(buf[:0], secs, 10))
}

// connLimit is a client connection's place in a tenant's count of
// connections per address: the connection counts for the tenant its
// latest request was for, from that request until it closes.
//
// The streams of an HTTP/2 connection share its connLimit, concurrently:
// changes take mu; the check of a request for the tenant already held
// does not.
type connLimit struct {
	held atomic.Pointer[router.TenantState]
	mu   sync.Mutex
	addr netip.Addr
}

// hold counts the connection for st, unless it already is; false when
// the address holds st's share of connections already.
func (c *connLimit) hold(st *router.TenantState, addr netip.Addr, sh *router.Share) bool {
	if c.held.Load() == st {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.held.Load()
	if old == st {
		return true
	}
	if !st.OpenConn(addr, sh) {
		return false
	}
	if old != nil {
		old.CloseConn(c.addr)
	}
	c.held.Store(st)
	c.addr = addr
	return true
}

// release takes the connection out of the count it is in.
func (c *connLimit) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st := c.held.Swap(nil); st != nil {
		st.CloseConn(c.addr)
	}
}

// moveTo hands the connection's place in a count to d, its next holder.
func (c *connLimit) moveTo(d *connLimit) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st := c.held.Swap(nil); st != nil {
		d.addr = c.addr
		d.held.Store(st)
	}
}

// limitedConn is a client connection that carries a connLimit.
type limitedConn interface{ connLimit() *connLimit }

// connLimitOf finds the connLimit of a request's connection: the loop's
// and the listeners' connections carry one, under TLS too.
func connLimitOf(c net.Conn) *connLimit {
	if nc, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = nc.NetConn()
	}
	if lc, ok := c.(limitedConn); ok {
		return lc.connLimit()
	}
	return nil
}

// trackedConn is a connection fasthttp's server serves, with its place in
// a tenant's connection count given back when it closes.
type trackedConn struct {
	net.Conn
	limit connLimit
}

func (c *trackedConn) Close() error {
	c.limit.release()
	return c.Conn.Close()
}

func (c *trackedConn) connLimit() *connLimit { return &c.limit }

// trackListener gives each accepted connection a connLimit.
type trackListener struct{ net.Listener }

func (l trackListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &trackedConn{Conn: c}, nil
}
