package edge

import (
	"time"

	"github.com/podedge/podedge/internal/version"
	"github.com/podedge/podedge/router"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are the edge's Prometheus metrics, all named edge_*. Labels are
// bounded: pod, status class, upstream address within a pod, error kind;
// never the tenant or the host, whose number has no bound.
//
// The request path never looks a label set up: per-pod children are bound
// when a snapshot is published and per-endpoint ones when an endpoint is
// first used.
type Metrics struct {
	// Registry holds every metric; the admin listener serves it.
	Registry *prometheus.Registry

	requests        *prometheus.CounterVec
	duration        *prometheus.HistogramVec
	inflight        prometheus.Gauge
	upRequests      *prometheus.CounterVec
	upErrors        *prometheus.CounterVec
	ejections       *prometheus.CounterVec
	retries         *prometheus.CounterVec
	budgetExhausted prometheus.Counter
	tunnels         prometheus.Gauge
	serverErrors    *prometheus.CounterVec
	loopConns       prometheus.Gauge
	handoffs        prometheus.Counter
	acceptPauses    prometheus.Counter
	limitRefusals   [len(limitNames)]prometheus.Counter
	offenders       *offenders
	h2Conns         prometheus.Gauge
	h2Streams       *prometheus.CounterVec
	h2Errors        *prometheus.CounterVec
}

// codeClasses are the values of the code label, indexed by status/100.
var codeClasses = [...]string{"other", "1xx", "2xx", "3xx", "4xx", "5xx"}

// errorKinds are the values of the kind label of upstream errors.
var errorKinds = [...]string{"dial", "timeout", "reset", "protocol"}

// NewMetrics creates the edge's metrics in reg, with Go runtime and process
// metrics alongside.
func NewMetrics(reg *prometheus.Registry) *Metrics {
	m := &Metrics{
		Registry: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edge_requests_total",
			Help: "Requests answered, by the pod of the tenant (empty for an unknown host) and status class.",
		}, []string{"pod", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "edge_request_duration_seconds",
			Help:    "Time from the request head to the last byte of the response, by pod.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"pod"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edge_in_flight_requests",
			Help: "Requests being served, streaming bodies included.",
		}),
		upRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edge_upstream_requests_total",
			Help: "Attempts sent to an endpoint (retries count again), by pod and endpoint address.",
		}, []string{"pod", "upstream"}),
		upErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edge_upstream_errors_total",
			Help: "Failed attempts, by pod, endpoint and kind (dial, timeout, reset, protocol, status: a 502/503/504 from the endpoint).",
		}, []string{"pod", "upstream", "kind"}),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edge_upstream_ejections_total",
			Help: "Times passive health ejected an endpoint, by pod and endpoint.",
		}, []string{"pod", "upstream"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edge_upstream_retries_total",
			Help: "Requests sent again to another endpoint, by pod.",
		}, []string{"pod"}),
		budgetExhausted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edge_retry_budget_exhausted_total",
			Help: "Retries not made because the retry budget was spent.",
		}),
		tunnels: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edge_websocket_tunnels",
			Help: "Upgraded connections (WebSockets) being tunnelled.",
		}),
		serverErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edge_client_errors_total",
			Help: "Requests refused before routing because they could not be read, by status (400, 408, 413, 431).",
		}, []string{"code"}),
		loopConns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edge_loop_client_connections",
			Help: "Client connections the event loops hold (engine loop).",
		}),
		handoffs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edge_loop_handoffs_total",
			Help: "Client connections the event loops handed to fasthttp's server (uploads that stream, Expect, Upgrade, HTTP/1.0).",
		}),
		acceptPauses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edge_loop_accept_pauses_total",
			Help: "Times an event loop stopped accepting for 100 ms because accept(2) failed (out of descriptors or memory).",
		}),
		h2Conns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edge_http2_connections",
			Help: "HTTP/2 client connections open on the HTTPS listener.",
		}),
		h2Streams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edge_http2_streams_total",
			Help: "HTTP/2 requests (streams) served, by result: complete, or reset (the client reset the stream or the connection ended before the response was written).",
		}, []string{"result"}),
		h2Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edge_http2_errors_total",
			Help: "HTTP/2 protocol errors of clients, by type as golang.org/x/net/http2 names them (conn_ENHANCE_YOUR_CALM_too_many_early_resets: a rapid-reset flood).",
		}, []string{"type"}),
	}
	refusals := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "edge_limit_refusals_total",
		Help: "Requests refused by their tenant's limits, by limit: rate (429), concurrency (503 after the queue), conns_per_ip (429 and close).",
	}, []string{"limit"})
	for k, name := range limitNames[1:] {
		m.limitRefusals[k+1] = refusals.WithLabelValues(name)
	}
	m.offenders = newOffenders()
	reg.MustRegister(refusals, m.offenders)
	reg.MustRegister(m.requests, m.duration, m.inflight, m.upRequests, m.upErrors, m.ejections,
		m.retries, m.budgetExhausted, m.tunnels, m.serverErrors, m.loopConns, m.handoffs, m.acceptPauses,
		m.h2Conns, m.h2Streams, m.h2Errors,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// podStats are the children of one pod's label value.
type podStats struct {
	name     string
	requests [len(codeClasses)]prometheus.Counter
	duration prometheus.Observer
	retries  prometheus.Counter
}

func (m *Metrics) pod(name string) *podStats {
	s := &podStats{name: name, duration: m.duration.WithLabelValues(name), retries: m.retries.WithLabelValues(name)}
	for i, c := range codeClasses {
		s.requests[i] = m.requests.WithLabelValues(name, c)
	}
	return s
}

// observe records a finished request.
func (s *podStats) observe(status int, d time.Duration) {
	c := status / 100
	if c < 1 || c >= len(codeClasses) {
		c = 0
	}
	s.requests[c].Inc()
	s.duration.Observe(d.Seconds())
}

// upstreamStats are the children of one endpoint within one pod.
type upstreamStats struct {
	pod       string
	requests  prometheus.Counter
	errors    [len(errorKinds) + 1]prometheus.Counter // errorKinds, then "status"
	ejections prometheus.Counter
}

func (m *Metrics) upstream(pod, addr string) *upstreamStats {
	s := &upstreamStats{
		pod:       pod,
		requests:  m.upRequests.WithLabelValues(pod, addr),
		ejections: m.ejections.WithLabelValues(pod, addr),
	}
	for i, k := range errorKinds {
		s.errors[i] = m.upErrors.WithLabelValues(pod, addr, k)
	}
	s.errors[len(errorKinds)] = m.upErrors.WithLabelValues(pod, addr, "status")
	return s
}

func (s *upstreamStats) failed(err error) {
	kind := errorKind(err)
	for i, k := range errorKinds {
		if k == kind {
			s.errors[i].Inc()
			return
		}
	}
}

func (s *upstreamStats) badStatus() { s.errors[len(errorKinds)].Inc() }

// forget drops every child of an endpoint that left Consul long ago, so that
// churning app servers do not grow the metrics without bound.
func (m *Metrics) forget(pod, addr string) {
	m.upRequests.DeleteLabelValues(pod, addr)
	m.ejections.DeleteLabelValues(pod, addr)
	for _, k := range errorKinds {
		m.upErrors.DeleteLabelValues(pod, addr, k)
	}
	m.upErrors.DeleteLabelValues(pod, addr, "status")
}

// stateCollector exports what the snapshot and the router's status say, at
// scrape time, so that the request path pays nothing for it.
type stateCollector struct {
	snapshot func() *router.Snapshot
	status   func() router.Status
	now      func() time.Time

	healthy, passing, tenants, lastSync, consulUp, age, info *prometheus.Desc
}

// NewStateCollector exports the routing state: endpoints per pod, tenants
// known, the last Consul sync. status may be nil (no Consul).
func NewStateCollector(snapshot func() *router.Snapshot, status func() router.Status) prometheus.Collector {
	// snapshot may return nil before the first sync.
	return &stateCollector{
		snapshot: snapshot,
		status:   status,
		now:      time.Now,
		healthy:  prometheus.NewDesc("edge_healthy_endpoints", "App endpoints of the pod that pass their Consul checks and are not ejected by passive health.", []string{"pod"}, nil),
		passing:  prometheus.NewDesc("edge_passing_endpoints", "App endpoints of the pod that pass their Consul checks.", []string{"pod"}, nil),
		tenants:  prometheus.NewDesc("edge_tenants", "Tenants in the routing snapshot.", nil, nil),
		lastSync: prometheus.NewDesc("edge_consul_last_sync_timestamp_seconds", "When the routing view last matched Consul (0 before the first sync).", nil, nil),
		consulUp: prometheus.NewDesc("edge_consul_healthy", "1 while every Consul query succeeds, else 0: the edge serves its last snapshot.", nil, nil),
		age:      prometheus.NewDesc("edge_snapshot_age_seconds", "Age of the routing snapshot in use.", nil, nil),
		info:     prometheus.NewDesc("edge_build_info", "The running build.", []string{"version"}, nil),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.healthy, c.passing, c.tenants, c.lastSync, c.consulUp, c.age, c.info} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.now()
	s := c.snapshot()
	if s == nil {
		s = &router.Snapshot{}
	}
	for _, p := range s.Pods() {
		available := 0
		for _, m := range p.Apps.Members() {
			if m.EjectedUntil(now).IsZero() {
				available++
			}
		}
		ch <- prometheus.MustNewConstMetric(c.healthy, prometheus.GaugeValue, float64(available), p.Name)
		ch <- prometheus.MustNewConstMetric(c.passing, prometheus.GaugeValue, float64(p.Apps.Len()), p.Name)
	}
	ch <- prometheus.MustNewConstMetric(c.tenants, prometheus.GaugeValue, float64(s.NumTenants()))
	if s.Synced {
		ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, s.Age(now).Seconds())
	}
	if c.status != nil {
		st := c.status()
		last, up := 0.0, 0.0
		if !st.LastSync.IsZero() {
			last = float64(st.LastSync.UnixNano()) / 1e9
		}
		if st.Healthy {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.lastSync, prometheus.GaugeValue, last)
		ch <- prometheus.MustNewConstMetric(c.consulUp, prometheus.GaugeValue, up)
	}
	ch <- prometheus.MustNewConstMetric(c.info, prometheus.GaugeValue, 1, version.String())
}
