package dnsd

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// adminHandler serves /metrics and /healthz.
func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg}))
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /dnssec", s.dnssecInfo)
	return mux
}

// health is the body of /healthz.
type health struct {
	// Status is "ok" when dnsd answers from a snapshot, "starting" before
	// the first one.
	Status string `json:"status"`
	Serial uint32 `json:"serial"`
	// Consul is "ok", or "unreachable" while dnsd answers from the last
	// snapshot; StaleSeconds is for how long.
	Consul       string  `json:"consul"`
	StaleSeconds float64 `json:"stale_seconds"`
	Error        string  `json:"error,omitempty"`
}

// healthz is 200 while dnsd answers from a snapshot, even a stale one
// (answering from the last known state is what it should do while Consul
// is down), and 503 before the first snapshot, when it answers SERVFAIL.
func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	st := s.router.Status()
	h := health{Status: "ok", Serial: s.handler.Serial(), Consul: "ok"}
	if !st.Healthy {
		h.Consul, h.Error = "unreachable", st.Error
		if !st.LastSync.IsZero() {
			h.StaleSeconds = time.Since(st.LastSync).Seconds()
		}
	}
	code := http.StatusOK
	if s.handler.zone.Load() == nil {
		h.Status, code = "starting", http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(h)
}

// registerStatus exports the state of the router and of the zone, read at
// scrape time.
func (s *Server) registerStatus() {
	s.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "dnsd_snapshot_age_seconds",
			Help: "Seconds since the snapshot being served was built (it is rebuilt only when the platform changes).",
		}, func() float64 {
			if z := s.handler.zone.Load(); z != nil {
				return time.Since(z.built).Seconds()
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "dnsd_snapshot_stale_seconds",
			Help: "Seconds since the answers were last known to match Consul; 0 while Consul answers.",
		}, func() float64 {
			st := s.router.Status()
			if st.Healthy || st.LastSync.IsZero() {
				return 0
			}
			return time.Since(st.LastSync).Seconds()
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "dnsd_consul_up",
			Help: "1 while every Consul query succeeds, 0 while dnsd answers from the last snapshot.",
		}, func() float64 {
			if s.router.Status().Healthy {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "dnsd_ready",
			Help: "1 once a snapshot is loaded; before that every query gets SERVFAIL.",
		}, func() float64 {
			if s.handler.zone.Load() != nil {
				return 1
			}
			return 0
		}),
	)
}

// dnssecInfo serves the zone's key and the DS the parent must hold, as
// JSON; 404 while the zone is not signed.
func (s *Server) dnssecInfo(w http.ResponseWriter, _ *http.Request) {
	key, ds := s.handler.DNSKEY(), s.handler.DS()
	if key == "" {
		http.Error(w, `{"error":"the zone is not signed"}`, http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]string{"dnskey": key, "ds": ds})
}
