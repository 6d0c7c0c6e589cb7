package reload

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type section struct {
	Dial time.Duration `yaml:"dial"`
	Idle time.Duration `yaml:"idle"`
}

type conf struct {
	Listen   string   `yaml:"listen"`
	List     []string `yaml:"list"`
	Timeouts section  `yaml:"timeouts"`
	Retries  section  `yaml:"retries"`
}

func TestChangedNamesTheFirstFixedKey(t *testing.T) {
	live := []string{"timeouts.dial", "retries"}
	base := conf{Listen: ":80", List: []string{"a"}}
	cases := []struct {
		name   string
		mutate func(*conf)
		want   string
	}{
		{"nothing", func(*conf) {}, ""},
		{"a live key", func(c *conf) { c.Timeouts.Dial = time.Second }, ""},
		{"a live section", func(c *conf) { c.Retries.Idle = time.Second }, ""},
		{"a fixed key beside a live one", func(c *conf) { c.Timeouts.Idle = time.Second }, "timeouts.idle"},
		{"a fixed scalar", func(c *conf) { c.Listen = ":81" }, "listen"},
		{"a fixed list", func(c *conf) { c.List = append(c.List, "b") }, "list"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			next := base
			next.List = append([]string(nil), base.List...)
			tc.mutate(&next)
			if got := Changed(base, next, live); got != tc.want {
				t.Errorf("Changed = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestReloadAppliesOrKeepsTheRunningConfiguration(t *testing.T) {
	reg := prometheus.NewRegistry()
	r := New(conf{Listen: ":80"})
	r.Live = []string{"timeouts"}
	r.Metrics = NewMetrics("edge", reg)
	var applied []conf
	r.Apply = func(c conf) { applied = append(applied, c) }
	var states []string
	r.Notify = func(s string) { states = append(states, strings.SplitN(s, "\n", 2)[0]) }

	next, loadErr := conf{Listen: ":80", Timeouts: section{Dial: time.Second}}, error(nil)
	r.Load = func() (conf, error) { return next, loadErr }
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	next = conf{Listen: ":81"}
	if err := r.Reload(); err == nil || !strings.Contains(err.Error(), "listen: cannot change") {
		t.Fatalf("moved listener: %v", err)
	}
	loadErr = errors.New("config x.yaml: line 1: bad")
	if err := r.Reload(); !errors.Is(err, loadErr) {
		t.Fatalf("broken file: %v", err)
	}
	if len(applied) != 1 || r.Current().Timeouts.Dial != time.Second || r.Current().Listen != ":80" {
		t.Errorf("applied %v, current %+v", applied, r.Current())
	}
	if ok, refused := count(t, reg, "ok"), count(t, reg, "refused"); ok != 1 || refused != 2 {
		t.Errorf("reloads ok %v refused %v, want 1 and 2", ok, refused)
	}
	if got := strings.Join(states, ","); got != "RELOADING=1,READY=1,RELOADING=1,READY=1,RELOADING=1,READY=1" {
		t.Errorf("notified %s", got)
	}
}

// count is edge_config_reloads_total{result}.
func count(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "edge_config_reloads_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return -1
}
