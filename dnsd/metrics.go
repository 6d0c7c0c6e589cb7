package dnsd

import (
	"github.com/prometheus/client_golang/prometheus"
)

// The label values of dnsd_queries_total. Both sets are fixed, so the
// series are bounded whatever clients send: an unlisted type counts as
// "other".
var (
	qtypeNames = [...]string{"A", "NS", "CNAME", "SOA", "PTR", "HINFO", "MX", "TXT", "AAAA", "SRV", "NAPTR", "DS", "DNSKEY", "SVCB", "HTTPS", "CAA", "IXFR", "AXFR", "ANY", "other"}
	qtypeCodes = [...]uint16{1, 2, 5, 6, 12, 13, 15, 16, 28, 33, 35, 43, 48, 64, 65, 257, 251, 252, 255}
	rcodeNames = [...]string{"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS"}
)

// Metrics are dnsd's Prometheus metrics. The hot path only touches
// counters bound at construction, never WithLabelValues.
type Metrics struct {
	queries   [len(qtypeNames)][len(rcodeNames)]prometheus.Counter
	qtypeIdx  [256]uint8 // qtype (< 256) to index in qtypeNames
	caaIdx    int        // index of CAA (257), the one listed type above 255
	dropped   prometheus.Counter
	truncated prometheus.Counter
	latency   [2]prometheus.Histogram // by transport: udp, tcp

	failOpen     *prometheus.CounterVec
	passingEdges *prometheus.GaugeVec
	edges        *prometheus.GaugeVec
	serial       prometheus.Gauge
	builds       prometheus.Counter
	buildSeconds prometheus.Gauge
	names        *prometheus.GaugeVec

	tcpConns    prometheus.Gauge
	tcpRejected prometheus.Counter
	readErrors  prometheus.Counter

	rrlSlipped prometheus.Counter
	rrlDropped prometheus.Counter
	rrlExempt  [2]prometheus.Counter // by reason: cookie, whitelist
	cookies    [len(cookieStateNames)]prometheus.Counter

	transfers       [len(xfrKindNames)][len(xfrResultNames)]prometheus.Counter
	transferRecords prometheus.Counter
	tsig            [len(tsigResultNames)]prometheus.Counter
	journal         prometheus.Gauge
	notifies        [len(notifyResultNames)]prometheus.Counter

	signed        prometheus.Gauge
	resigned      prometheus.Counter
	denialsSigned prometheus.Counter
}

// NewMetrics creates dnsd's metrics and registers them with reg; nil reg
// registers nothing (tests, fuzzing).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dnsd_dropped_total",
			Help: "Packets dropped without an answer: malformed, or responses.",
		}),
		truncated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dnsd_truncated_total",
			Help: "Answers cut to fit the client's size, sent with the TC flag.",
		}),
		failOpen: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dnsd_fail_open_answers_total",
			Help: "Answers for a pod with no passing edge, given from all its edges regardless of health.",
		}, []string{"pod"}),
		passingEdges: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dnsd_passing_edges",
			Help: "Passing edges of each pod, as served.",
		}, []string{"pod"}),
		edges: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dnsd_edges",
			Help: "Edges of each pod, passing or not.",
		}, []string{"pod"}),
		serial: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "dnsd_zone_serial",
			Help: "SOA serial of the zone being served.",
		}),
		builds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dnsd_zone_builds_total",
			Help: "Zones built from router snapshots.",
		}),
		buildSeconds: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "dnsd_zone_build_seconds",
			Help: "How long the latest zone took to build.",
		}),
		names: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dnsd_zone_names",
			Help: "Names in the zone being served, by kind.",
		}, []string{"kind"}),
		tcpConns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "dnsd_tcp_connections",
			Help: "Open TCP connections.",
		}),
		tcpRejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dnsd_tcp_rejected_total",
			Help: "TCP connections closed at once because tcp.max_connections were open.",
		}),
		readErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dnsd_read_errors_total",
			Help: "Errors reading or writing sockets, other than at shutdown.",
		}),
	}
	queries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dnsd_queries_total",
		Help: "Queries answered, by question type and response code.",
	}, []string{"qtype", "rcode"})
	for i, t := range qtypeNames {
		for j, rc := range rcodeNames {
			m.queries[i][j] = queries.WithLabelValues(t, rc)
		}
	}
	for i := range m.qtypeIdx {
		m.qtypeIdx[i] = uint8(len(qtypeNames) - 1)
	}
	for i, c := range qtypeCodes {
		if c < 256 {
			m.qtypeIdx[c] = uint8(i)
		} else {
			m.caaIdx = i
		}
	}
	m.rrlSlipped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "dnsd_rrl_slipped_total",
		Help: "UDP answers over the rate limit sent empty and truncated (TC).",
	})
	m.rrlDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "dnsd_rrl_dropped_total",
		Help: "UDP answers over the rate limit dropped.",
	})
	exempt := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dnsd_rrl_exempt_total",
		Help: "UDP answers not rate limited because of a valid server cookie or the whitelist.",
	}, []string{"reason"})
	m.rrlExempt[0] = exempt.WithLabelValues("cookie")
	m.rrlExempt[1] = exempt.WithLabelValues("whitelist")
	cookies := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dnsd_cookie_queries_total",
		Help: "Queries with a COOKIE option, by what their server cookie was.",
	}, []string{"server_cookie"})
	for i, name := range cookieStateNames[1:] { // "none" is never counted
		m.cookies[i+1] = cookies.WithLabelValues(name)
	}
	transfers := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dnsd_transfers_total",
		Help: "Zone transfers answered, by kind and result.",
	}, []string{"kind", "result"})
	for i, kind := range xfrKindNames {
		for j, result := range xfrResultNames {
			m.transfers[i][j] = transfers.WithLabelValues(kind, result)
		}
	}
	m.transferRecords = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "dnsd_transfer_records_total",
		Help: "Records sent in zone transfers.",
	})
	tsig := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dnsd_tsig_queries_total",
		Help: "Queries signed with TSIG, by the outcome of their check.",
	}, []string{"result"})
	for i, name := range tsigResultNames {
		m.tsig[i] = tsig.WithLabelValues(name)
	}
	m.journal = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "dnsd_journal_versions",
		Help: "Zone versions the journal holds differences for, to answer IXFR.",
	})
	notifies := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dnsd_notify_total",
		Help: "NOTIFY messages to secondaries, by outcome.",
	}, []string{"result"})
	for i, name := range notifyResultNames {
		m.notifies[i] = notifies.WithLabelValues(name)
	}
	m.signed = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "dnsd_dnssec_signed",
		Help: "1 while the zone is served signed; 0 when DNSSEC is off, or on but the key is not loaded yet (answers are then SERVFAIL).",
	})
	m.resigned = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "dnsd_dnssec_resigned_total",
		Help: "Signatures made again before they expire (tenants and pods).",
	})
	m.denialsSigned = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "dnsd_dnssec_denials_signed_total",
		Help: "Denials of names that do not exist signed when asked (not found in the cache).",
	})
	latency := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "dnsd_answer_seconds",
		Help: "Time from reading a query to having written its answer, for a sample of one query in 16.",
		// From 2µs to 8ms.
		Buckets: prometheus.ExponentialBuckets(2e-6, 2, 13),
	}, []string{"transport"})
	m.latency[0] = latency.WithLabelValues("udp").(prometheus.Histogram)
	m.latency[1] = latency.WithLabelValues("tcp").(prometheus.Histogram)
	if reg != nil {
		reg.MustRegister(queries, latency, m.dropped, m.truncated, m.failOpen, m.passingEdges, m.edges,
			m.serial, m.builds, m.buildSeconds, m.names, m.tcpConns, m.tcpRejected, m.readErrors,
			m.rrlSlipped, m.rrlDropped, exempt, cookies, transfers, m.transferRecords, tsig, m.journal, notifies,
			m.signed, m.resigned, m.denialsSigned)
	}
	return m
}

// count counts one answered query.
func (m *Metrics) count(qtype uint16, rcode int) {
	ti := len(qtypeNames) - 1
	switch {
	case qtype < 256:
		ti = int(m.qtypeIdx[qtype])
	case qtype == 257:
		ti = m.caaIdx
	}
	ri := rcode
	if rcode == rcodeBadVers {
		ri = 6
	} else if rcode < 0 || rcode > 5 {
		return
	}
	m.queries[ti][ri].Inc()
}
