package dnsd

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestQueryLabels checks that each query type and rcode lands on its own
// series, that unknown types count as "other", and that every pair is
// bound in advance (the label sets are bounded whatever clients send).
func TestQueryLabels(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	m.count(1, rcodeSuccess)
	m.count(257, rcodeNXDomain)
	m.count(255, rcodeBadVers)
	m.count(99, rcodeRefused)
	m.count(65000, rcodeRefused)
	m.count(28, rcodeFormErr)

	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	series := 0
	for _, f := range families {
		if f.GetName() != "dnsd_queries_total" {
			continue
		}
		for _, s := range f.GetMetric() {
			series++
			labels := map[string]string{}
			for _, l := range s.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if v := s.GetCounter().GetValue(); v != 0 {
				got[labels["qtype"]+"/"+labels["rcode"]] = v
			}
		}
	}
	if want := len(qtypeNames) * len(rcodeNames); series != want {
		t.Errorf("%d series, want %d", series, want)
	}
	want := map[string]float64{"A/NOERROR": 1, "CAA/NXDOMAIN": 1, "ANY/BADVERS": 1, "other/REFUSED": 2, "AAAA/FORMERR": 1}
	if len(got) != len(want) {
		t.Errorf("counted %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}
