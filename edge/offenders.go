package edge

import (
	"cmp"
	"slices"
	"sync"

	"github.com/podedge/podedge/router"
	"github.com/prometheus/client_golang/prometheus"
)

// topOffenders is how many tenants the per-tenant refusal metric names:
// the ones refused most, so that its label set stays bounded whatever the
// number of tenants.
const topOffenders = 20

// maxOffenders bounds the tenants remembered as refused; past it the one
// refused least is forgotten.
const maxOffenders = 1024

// offenders remembers the tenants whose limits refused requests, so that a
// scrape ranks those few rather than every tenant. The request path calls
// note only when a refusal count reaches a power of two: the lock is taken
// about log2(refusals) times per tenant.
type offenders struct {
	mu   sync.Mutex
	seen map[*router.TenantState]string
	desc *prometheus.Desc
}

func newOffenders() *offenders {
	return &offenders{
		seen: map[*router.TenantState]string{},
		desc: prometheus.NewDesc("edge_tenant_limit_refusals_total",
			"Requests refused by a tenant's limits, by tenant and limit, for the 20 tenants refused most by this edge.",
			[]string{"tenant", "limit"}, nil),
	}
}

func (o *offenders) note(st *router.TenantState, tenant string) {
	if st == nil {
		return
	}
	r, c, n := st.Refused()
	if t := r + c + n; t&(t-1) != 0 {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.seen[st]; ok {
		return
	}
	if len(o.seen) >= maxOffenders {
		var least *router.TenantState
		var leastN uint64
		for s := range o.seen {
			if t := total(s); least == nil || t < leastN {
				least, leastN = s, t
			}
		}
		delete(o.seen, least)
	}
	o.seen[st] = tenant
}

func total(s *router.TenantState) uint64 {
	r, c, n := s.Refused()
	return r + c + n
}

func (o *offenders) Describe(ch chan<- *prometheus.Desc) { ch <- o.desc }

func (o *offenders) Collect(ch chan<- prometheus.Metric) {
	type entry struct {
		tenant  string
		r, c, n uint64
	}
	o.mu.Lock()
	list := make([]entry, 0, len(o.seen))
	for s, name := range o.seen {
		r, c, n := s.Refused()
		list = append(list, entry{name, r, c, n})
	}
	o.mu.Unlock()
	slices.SortFunc(list, func(a, b entry) int {
		return cmp.Or(cmp.Compare(b.r+b.c+b.n, a.r+a.c+a.n), cmp.Compare(a.tenant, b.tenant))
	})
	// A tenant deleted and made again has a new state and the old name.
	named := map[string]bool{}
	for _, e := range list {
		if len(named) == topOffenders {
			break
		}
		if named[e.tenant] {
			continue
		}
		named[e.tenant] = true
		ch <- prometheus.MustNewConstMetric(o.desc, prometheus.CounterValue, float64(e.r), e.tenant, limitNames[limitRate])
		ch <- prometheus.MustNewConstMetric(o.desc, prometheus.CounterValue, float64(e.c), e.tenant, limitNames[limitConcurrency])
		ch <- prometheus.MustNewConstMetric(o.desc, prometheus.CounterValue, float64(e.n), e.tenant, limitNames[limitConns])
	}
}
