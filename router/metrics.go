package router

import "github.com/prometheus/client_golang/prometheus"

// LogCollector exports how r follows the change log, as
// <namespace>_changelog_following, _seq, _entries_total and
// _resyncs_total{reason}, read at scrape time.
func LogCollector(namespace string, r *Router) prometheus.Collector {
	return &logCollector{
		r: r,
		following: prometheus.NewDesc(namespace+"_changelog_following",
			"1 while the view follows the change log; 0 while there is none and it reads the pods/ and tenants/ folders whole.", nil, nil),
		seq: prometheus.NewDesc(namespace+"_changelog_seq",
			"The newest change log entry the view has applied.", nil, nil),
		entries: prometheus.NewDesc(namespace+"_changelog_entries_total",
			"Change log entries applied.", nil, nil),
		resyncs: prometheus.NewDesc(namespace+"_changelog_resyncs_total",
			"Full reads of the pods/ and tenants/ folders, by reason (start, log_started, new_epoch, behind_ring, ring_overwritten, chain, went_back, head_gone, bad_head).", []string{"reason"}, nil),
	}
}

type logCollector struct {
	r                                *Router
	following, seq, entries, resyncs *prometheus.Desc
}

func (c *logCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.following, c.seq, c.entries, c.resyncs} {
		ch <- d
	}
}

func (c *logCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.r.LogStatus()
	following := 0.0
	if st.Following {
		following = 1
	}
	ch <- prometheus.MustNewConstMetric(c.following, prometheus.GaugeValue, following)
	ch <- prometheus.MustNewConstMetric(c.seq, prometheus.GaugeValue, float64(st.Seq))
	ch <- prometheus.MustNewConstMetric(c.entries, prometheus.CounterValue, float64(st.Entries))
	for reason, n := range st.Resyncs {
		ch <- prometheus.MustNewConstMetric(c.resyncs, prometheus.CounterValue, float64(n), reason)
	}
}
