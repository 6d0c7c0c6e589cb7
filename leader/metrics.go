package leader

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the leader's Prometheus metrics, all named leader_*, on the
// process's own registry.
type metrics struct {
	requests        *prometheus.CounterVec
	duration        *prometheus.HistogramVec
	forwarded       *prometheus.CounterVec
	isLeader        prometheus.Gauge
	changes         *prometheus.CounterVec
	electionErrors  *prometheus.CounterVec
	signups         prometheus.Counter
	signupBatch     prometheus.Histogram
	placementFailed *prometheus.CounterVec
	txns            *prometheus.CounterVec
	retries         *prometheus.CounterVec
	repairs         *prometheus.CounterVec
	readWaits       *prometheus.CounterVec
	geoLookups      *prometheus.CounterVec
	geoReloads      *prometheus.CounterVec
}

// newMetrics registers the leader's metrics on reg. status reports the
// view's health for the view gauges; nil leaves them out.
func newMetrics(reg *prometheus.Registry, status func() (synced, healthy bool, age time.Duration)) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "leader_requests_total",
			Help: "API requests by route (the matched pattern) and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "leader_request_duration_seconds",
			Help:    "API request latency by route, forwarding included.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10},
		}, []string{"route"}),
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "leader_forwarded_total",
			Help: "Writes this standby forwarded to the leader, by result (ok, error, no_leader).",
		}, []string{"result"}),
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "leader_is_leader",
			Help: "1 while this replica holds the leader lock.",
		}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "leader_leadership_changes_total",
			Help: "Times this replica won (acquired) or lost (lost) the leader lock.",
		}, []string{"change"}),
		electionErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "leader_election_errors_total",
			Help: "Failed Consul calls of the election, by step (register, heartbeat, session, renew, watch, acquire).",
		}, []string{"step"}),
		signups: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "leader_signups_total",
			Help: "Tenants placed by this replica while leader.",
		}),
		signupBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "leader_signup_batch_size",
			Help:    "Sign-ups written by one committed transaction.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 48},
		}),
		placementFailed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "leader_placement_failures_total",
			Help: "Sign-ups refused by placement, by reason (no_capacity, name_taken, domain_taken).",
		}, []string{"reason"}),
		txns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "leader_txn_total",
			Help: "Consul write transactions by operation and result (committed, conflict, fenced, error).",
		}, []string{"op", "result"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "leader_txn_retries_total",
			Help: "Writes re-read and tried again after a transaction rolled back on a concurrent change.",
		}, []string{"op"}),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "leader_reconcile_repairs_total",
			Help: "Keys repaired, by kind: seats and domains (internal keys, by reconciliation), pods and tenants (values written outside the leader, logged for every reader by the auditor).",
		}, []string{"kind"}),
		readWaits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "leader_read_waits_total",
			Help: "Reads that waited for the view, by kind (index, blocking) and result (ok, unchanged, timeout).",
		}, []string{"kind", "result"}),
	}
	m.geoLookups = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "leader_geoip_lookups_total",
		Help: "Sign-up addresses looked up, by result (located, not_found, unroutable, no_database, error).",
	}, []string{"result"})
	m.geoReloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "leader_geoip_reloads_total",
		Help: "Times the GeoIP database file was found replaced and opened again, by result (ok, error).",
	}, []string{"result"})
	reg.MustRegister(m.readWaits, m.geoLookups, m.geoReloads, m.requests, m.duration, m.forwarded, m.isLeader, m.changes, m.electionErrors,
		m.signups, m.signupBatch, m.placementFailed, m.txns, m.retries, m.repairs,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if status != nil {
		reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "leader_view_synced",
				Help: "1 once the replica's view of Consul (pods, tenants, edge health) is complete.",
			}, func() float64 {
				synced, _, _ := status()
				return b2f(synced)
			}),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "leader_view_healthy",
				Help: "1 while every Consul query of the view succeeds; 0 while reads are served from the last view.",
			}, func() float64 {
				_, healthy, _ := status()
				return b2f(healthy)
			}),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "leader_view_stale_seconds",
				Help: "How long the view has not been confirmed current; 0 while healthy.",
			}, func() float64 {
				_, _, age := status()
				return age.Seconds()
			}),
		)
	}
	return m
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
