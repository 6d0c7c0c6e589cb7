package certs

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Handshake failure reasons, the values of edge_tls_handshake_failures_total's
// reason label.
const (
	reasonNoSNI       = "no_sni"       // the client sent no server name
	reasonUnknown     = "unknown_name" // no tenant or custom domain has that name
	reasonBackoff     = "backoff"      // its issuance failed lately; not retried yet
	reasonPending     = "pending"      // still being issued after handshake_timeout
	reasonIssuance    = "issuance"     // its issuance failed just now
	reasonUnavailable = "unavailable"  // Consul unreachable and nothing in memory, or stopping
	reasonChallenge   = "challenge"    // a TLS-ALPN-01 probe for a challenge not in flight
)

var reasons = [...]string{reasonNoSNI, reasonUnknown, reasonBackoff, reasonPending, reasonIssuance, reasonUnavailable, reasonChallenge}

// metrics are the Manager's Prometheus metrics, all edge_tls_*.
type metrics struct {
	issuance    *prometheus.CounterVec
	success     prometheus.Counter
	failure     prometheus.Counter
	orders      prometheus.Counter
	handshakes  *prometheus.CounterVec
	failures    map[string]prometheus.Counter
	rotations   prometheus.Counter
	storeErrors prometheus.Counter
	dns01Wait   prometheus.Gauge
	opErrors    *prometheus.CounterVec
	opErrorsBy  map[[2]string]prometheus.Counter // by source and reason
	collectors  []prometheus.Collector
}

// metricSources are what newMetrics reads its gauges from.
type metricSources struct {
	mem       *memory
	zoneName  string
	operators *operators
	ticketAge func(time.Time) float64
}

func newMetrics(src metricSources) *metrics {
	m := &metrics{
		issuance: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edge_tls_issuance_total",
			Help: "Certificates this edge ordered (first issuance or renewal), by result: success or failure.",
		}, []string{"result"}),
		orders: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edge_tls_acme_orders_total",
			Help: "ACME orders this edge placed; one issuance places a second when its first challenge type fails.",
		}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edge_tls_handshake_failures_total",
			Help: "Handshakes refused for want of a certificate, by reason: no_sni, unknown_name, backoff, pending, issuance, unavailable, challenge.",
		}, []string{"reason"}),
		rotations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edge_tls_ticket_key_rotations_total",
			Help: "Session ticket keys this edge wrote to Consul (one edge writes each rotation).",
		}),
		storeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edge_tls_store_errors_total",
			Help: "Consul reads and writes of certificates, challenges, locks and failure records that failed.",
		}),
		dns01Wait: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edge_tls_dns01_propagation_seconds",
			Help: "How long the last DNS-01 order this edge placed waited for the name servers to serve its tokens.",
		}),
		opErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edge_tls_operator_certificate_errors_total",
			Help: "Operators' certificates refused or dropped, by source (file, consul) and reason (invalid, expired, unreadable).",
		}, []string{"source", "reason"}),
	}
	m.success = m.issuance.WithLabelValues("success")
	m.failure = m.issuance.WithLabelValues("failure")
	m.failures = make(map[string]prometheus.Counter, len(reasons))
	for _, r := range reasons {
		m.failures[r] = m.handshakes.WithLabelValues(r)
	}
	m.opErrorsBy = map[[2]string]prometheus.Counter{}
	for _, s := range []string{sourceFile, sourceConsul} {
		for _, r := range []string{opInvalid, opExpired, opUnreadable} {
			m.opErrorsBy[[2]string{s, r}] = m.opErrors.WithLabelValues(s, r)
		}
	}
	unix := func(t time.Time) float64 {
		if t.IsZero() {
			return 0
		}
		return float64(t.Unix())
	}
	m.collectors = []prometheus.Collector{
		m.issuance, m.orders, m.handshakes, m.rotations, m.storeErrors, m.dns01Wait, m.opErrors,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "edge_tls_certificates",
			Help: "Certificates from ACME held in memory, ready for handshakes (the zone's included).",
		}, func() float64 { return float64(len(src.mem.snapshot())) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "edge_tls_certificate_expiry_earliest_timestamp_seconds",
			Help: "Expiry (Unix time) of the certificate served that expires first, from ACME or an operator; 0 when none.",
		}, func() float64 {
			t, op := src.mem.earliest(), src.operators.earliest()
			if t.IsZero() || !op.IsZero() && op.Before(t) {
				t = op
			}
			return unix(t)
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "edge_tls_zone_certificate_expiry_timestamp_seconds",
			Help: "Expiry (Unix time) of the zone's wildcard certificate held, which serves every tenant hostname; 0 when none is held.",
		}, func() float64 {
			if e := src.mem.get(src.zoneName); e != nil {
				return unix(e.notAfter)
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "edge_tls_operator_certificates",
			Help: "Operators' certificates served (from files and from Consul).",
		}, func() float64 { return float64(src.operators.count()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "edge_tls_ticket_key_age_seconds",
			Help: "Age of the session ticket key in use; -1 until one is read from Consul (tickets are then this edge's own).",
		}, func() float64 { return src.ticketAge(time.Now()) }),
	}
	return m
}

// handshakeFailed counts a refused handshake.
func (m *metrics) handshakeFailed(reason string) { m.failures[reason].Inc() }

// operatorError counts an operator's certificate refused or dropped.
func (m *metrics) operatorError(source, reason string) { m.opErrorsBy[[2]string{source, reason}].Inc() }
