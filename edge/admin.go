package edge

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/podedge/podedge/router"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// health is what /healthz reports.
type health interface {
	// healthy returns "" when the edge should receive traffic, else why not.
	healthy() string
}

// adminHandler serves the admin listener: /healthz, /metrics, /debug/routes
// and /debug/pprof/. It is plain net/http: nothing here is hot.
func adminHandler(h health, reg *prometheus.Registry, routes func() any) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if why := h.healthy(); why != "" {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(why + "\n"))
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /debug/routes", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(routes())
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// Routes is the JSON of /debug/routes: the snapshot in use, with the live
// state of every endpoint.
type Routes struct {
	Zone    string      `json:"zone"`
	Pod     string      `json:"pod"`
	Synced  bool        `json:"synced"`
	Index   uint64      `json:"index"`
	Built   time.Time   `json:"built,omitzero"`
	Tenants int         `json:"tenants"`
	Pods    []PodRoutes `json:"pods"`
}

// PodRoutes is one pod in Routes.
type PodRoutes struct {
	Name       string          `json:"name"`
	Registered bool            `json:"registered"`
	Tenants    int             `json:"tenants"`
	Edges      []EdgeRoute     `json:"edges"`
	Apps       []EndpointRoute `json:"apps"`
	// EdgePool is where requests for this pod's tenants go from other pods.
	EdgePool []EndpointRoute `json:"edge_pool"`
}

// EdgeRoute is an edge instance as Consul reports it.
type EdgeRoute struct {
	ID       string `json:"id"`
	Node     string `json:"node"`
	Addr     string `json:"addr"`
	PublicIP string `json:"public_ip"`
	Passing  bool   `json:"passing"`
}

// EndpointRoute is a pool member and its live state.
type EndpointRoute struct {
	Addr         string    `json:"addr"`
	Weight       int       `json:"weight"`
	Passing      bool      `json:"passing"`
	Available    bool      `json:"available"`
	EjectedUntil time.Time `json:"ejected_until,omitzero"`
	InFlight     int64     `json:"in_flight"`
}

// routesOf describes s for /debug/routes.
func routesOf(s *router.Snapshot, zone, pod string, now time.Time) Routes {
	r := Routes{Zone: zone, Pod: pod, Pods: []PodRoutes{}}
	if s == nil {
		return r
	}
	r.Zone, r.Synced, r.Index, r.Built, r.Tenants = s.Zone, s.Synced, s.Index, s.Built, s.NumTenants()
	members := func(p *router.Pool) []EndpointRoute {
		out := []EndpointRoute{}
		for _, m := range p.Members() {
			until := m.EjectedUntil(now)
			out = append(out, EndpointRoute{Addr: m.Addr, Weight: m.Weight, Passing: m.Passing,
				Available: until.IsZero(), EjectedUntil: until, InFlight: m.InFlight()})
		}
		return out
	}
	for _, p := range s.Pods() {
		pr := PodRoutes{Name: p.Name, Registered: p.Registered, Tenants: p.Tenants, Edges: []EdgeRoute{},
			Apps: members(p.Apps), EdgePool: members(p.EdgePool)}
		for _, e := range p.Edges {
			pr.Edges = append(pr.Edges, EdgeRoute{ID: e.ID, Node: e.Node, Addr: e.Addr, PublicIP: e.PublicIP.String(), Passing: e.Passing})
		}
		r.Pods = append(r.Pods, pr)
	}
	return r
}
