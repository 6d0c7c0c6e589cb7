// Package reload re-reads a binary's configuration file on SIGHUP, as
// nginx and HAProxy do: the keys that may change while the process serves
// take effect for new requests, without closing a connection; a change to
// any other key, or a file that no longer loads, is refused with one log
// line, and the process keeps its running configuration.
package reload

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// Metrics count the reloads of one binary.
type Metrics struct {
	reloads *prometheus.CounterVec
	last    prometheus.Gauge
}

// NewMetrics registers the reload metrics of the binary named namespace
// (edge, dnsd, leader) on reg.
func NewMetrics(namespace string, reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: namespace + "_config_reloads_total",
			Help: "Configuration reloads (SIGHUP), by result: ok, or refused (a key that needs a restart, or a file that does not load).",
		}, []string{"result"}),
		last: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: namespace + "_config_last_reload_success_timestamp_seconds",
			Help: "When the configuration was last loaded successfully (at start, then by each reload), in Unix seconds.",
		}),
	}
	// Both results exist from the start, so that rate() sees the first.
	m.reloads.WithLabelValues("ok")
	m.reloads.WithLabelValues("refused")
	m.last.SetToCurrentTime()
	if reg != nil {
		reg.MustRegister(m.reloads, m.last)
	}
	return m
}

// Reloader holds a binary's running configuration of type C and replaces
// it on Reload. The request path never sees it: Apply hands the live keys
// to the components, which publish them with atomic pointer swaps.
type Reloader[C any] struct {
	// Load reads the configuration again exactly as at start (the file,
	// then the flags over it) and validates it.
	Load func() (C, error)
	// Live lists the keys a reload may change, as dotted YAML paths; a
	// section ("timeouts") covers every key under it.
	Live []string
	// Apply makes the live keys of a new configuration take effect. It
	// runs only once the new configuration was accepted.
	Apply func(C)
	// Metrics, if set, count the reloads.
	Metrics *Metrics
	// Log receives one line per reload. Nil means slog.Default().
	Log *slog.Logger
	// Notify, if set, is told of the service's state around a reload
	// ("RELOADING=1", then "READY=1"), as systemd's sd_notify expects.
	Notify func(state string)

	mu  sync.Mutex
	cur C
}

// New returns a Reloader whose running configuration is cur.
func New[C any](cur C) *Reloader[C] { return &Reloader[C]{cur: cur} }

// Current is the running configuration.
func (r *Reloader[C]) Current() C {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

// Reload loads the configuration again and applies it, or refuses it and
// keeps the running one: the error says why, naming the key.
func (r *Reloader[C]) Reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	log := r.Log
	if log == nil {
		log = slog.Default()
	}
	if r.Notify != nil {
		r.Notify(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", monotonicUsec()))
		defer r.Notify("READY=1")
	}
	next, err := r.Load()
	if err == nil {
		if key := Changed(r.cur, next, r.Live); key != "" {
			err = fmt.Errorf("%s: cannot change without a restart", key)
		}
	}
	if err != nil {
		if r.Metrics != nil {
			r.Metrics.reloads.WithLabelValues("refused").Inc()
		}
		log.Error("configuration reload refused; the running configuration stays", "error", err.Error())
		return err
	}
	r.Apply(next)
	r.cur = next
	if r.Metrics != nil {
		r.Metrics.reloads.WithLabelValues("ok").Inc()
		r.Metrics.last.SetToCurrentTime()
	}
	log.Info("configuration reloaded")
	return nil
}

// Start reloads on every SIGHUP until ctx ends. The signal is caught
// before Start returns, so that a SIGHUP never kills the process (its
// default action) once Start was called.
func (r *Reloader[C]) Start(ctx context.Context) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				_ = r.Reload()
			}
		}
	}()
}

// Changed returns the first key, as a dotted YAML path, whose value differs
// between the configurations old and next (structs of one type) and that
// live does not cover; "" when every difference is live.
func Changed(old, next any, live []string) string {
	return changed(reflect.ValueOf(old), reflect.ValueOf(next), "", live)
}

func changed(a, b reflect.Value, path string, live []string) string {
	if covered(path, live) {
		return ""
	}
	if a.Kind() != reflect.Struct || a.Type() != b.Type() {
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			return path
		}
		return ""
	}
	t := a.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		p := name
		if path != "" {
			p = path + "." + name
		}
		if k := changed(a.Field(i), b.Field(i), p, live); k != "" {
			return k
		}
	}
	return ""
}

// covered reports whether path is a live key or under one.
func covered(path string, live []string) bool {
	if path == "" {
		return false
	}
	for _, l := range live {
		if path == l || strings.HasPrefix(path, l+".") {
			return true
		}
	}
	return false
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, which systemd wants
// with RELOADING=1 to tell one reload from the next.
func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return time.Now().UnixMicro()
	}
	return ts.Nano() / 1e3
}
