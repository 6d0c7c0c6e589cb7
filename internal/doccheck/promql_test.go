package doccheck

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The PromQL of configs/: alert rules and the Grafana dashboard.
const (
	rulesFile     = "configs/prometheus/podedge-rules.yaml"
	dashboardFile = "configs/grafana/podedge.json"
)

var (
	promString   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promMatchers = regexp.MustCompile(`\{[^{}]*\}`)
	promRange    = regexp.MustCompile(`\[[^\]]*\]`)
	// Label lists: by (pod), without (le), on (instance), group_left (x).
	promLabels   = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promVariable = regexp.MustCompile(`\$\{?\w+\}?`)
	promToken    = regexp.MustCompile(`[0-9][0-9.]*(?:e[+-]?[0-9]+|[smhdwy]+)?|[a-zA-Z_:][a-zA-Z0-9_:]*\s*\(?`)
	promKeywords = []string{"and", "or", "unless", "bool", "offset", "inf", "nan"}
	labelValues  = regexp.MustCompile(`label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)`)
)

// metricNames returns the metric names expr selects: what is left once
// strings, label matchers, ranges, label lists, dashboard variables,
// numbers, keywords and functions are taken out.
func metricNames(expr string) []string {
	s := promString.ReplaceAllString(expr, `""`)
	s = promMatchers.ReplaceAllString(s, " ")
	s = promRange.ReplaceAllString(s, " ")
	s = promLabels.ReplaceAllString(s, " ")
	s = promVariable.ReplaceAllString(s, " ")
	var names []string
	for _, tok := range promToken.FindAllString(s, -1) {
		if !strings.HasSuffix(tok, "(") {
			tok = strings.TrimSpace(tok)
		}
		switch {
		case tok[0] >= '0' && tok[0] <= '9', strings.HasSuffix(tok, "("), slices.Contains(promKeywords, strings.ToLower(tok)):
			continue
		}
		names = append(names, tok)
	}
	return names
}

func TestMetricNamesOfPromQL(t *testing.T) {
	cases := []struct{ expr, want string }{
		{`sum by (pod) (rate(edge_requests_total{code="5xx"}[5m])) / sum by (pod) (rate(edge_requests_total[5m])) > 0.05`, "edge_requests_total edge_requests_total"},
		{`(edge_tls_certificate_expiry_earliest_timestamp_seconds > 0) - time() < 20 * 86400 and on (instance) increase(edge_tls_issuance_total{result="failure"}[6h]) > 0`, "edge_tls_certificate_expiry_earliest_timestamp_seconds edge_tls_issuance_total"},
		{`histogram_quantile(0.99, sum by (le) (rate(dnsd_answer_seconds_bucket{pod=~"$pod"}[$__rate_interval])))`, "dnsd_answer_seconds_bucket"},
		{`(sum(leader_is_leader) or vector(0)) < 1`, "leader_is_leader"},
		{`up == 0 unless absent(x) * 1e9`, "up x"},
	}
	for _, c := range cases {
		if got := strings.Join(metricNames(c.expr), " "); got != c.want {
			t.Errorf("metricNames(%s) = %q, want %q", c.expr, got, c.want)
		}
	}
}

// configExprs returns every PromQL expression of the rules and of the
// dashboard (panel targets and template queries), by where it is.
func configExprs(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	raw, err := os.ReadFile(filepath.Join(root, rulesFile))
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert, Record, Expr string
			}
		}
	}
	if err := yaml.Unmarshal(raw, &rules); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			out[rulesFile+": "+r.Alert+r.Record] = r.Expr
		}
	}
	raw, err = os.ReadFile(filepath.Join(root, dashboardFile))
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		Title   string
		Targets []struct{ Expr string }
		Panels  []json.RawMessage
	}
	var dash struct {
		Panels     []panel
		Templating struct {
			List []struct {
				Name       string
				Definition string
			}
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	for _, p := range dash.Panels {
		for i, tg := range p.Targets {
			out[dashboardFile+": "+p.Title+" #"+string(rune('A'+i))] = tg.Expr
		}
	}
	for _, v := range dash.Templating.List {
		if m := labelValues.FindStringSubmatch(v.Definition); m != nil {
			out[dashboardFile+": variable "+v.Name] = m[1]
		}
	}
	return out
}

// Every metric an alert or a dashboard panel selects is one the binaries
// export (a histogram's _bucket, _sum and _count series included): a
// renamed metric cannot leave an alert that never fires.
func TestAlertsAndDashboardUseExportedMetrics(t *testing.T) {
	known := map[string]bool{}
	for _, n := range exported(t) {
		known[n] = true
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			known[n+suffix] = true
		}
	}
	exprs := configExprs(t)
	if len(exprs) < 20 {
		t.Fatalf("found only %d expressions in %s and %s", len(exprs), rulesFile, dashboardFile)
	}
	for where, expr := range exprs {
		names := metricNames(expr)
		if len(names) == 0 {
			t.Errorf("%s: no metric in %q", where, expr)
		}
		for _, n := range names {
			if !known[n] {
				t.Errorf("%s: %s is not a metric podedge exports", where, n)
			}
		}
	}
}
