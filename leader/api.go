package leader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/podedge/podedge/router"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// podJSON is a pod as the API shows it.
type podJSON struct {
	Name         string  `json:"name"`
	Region       string  `json:"region"`
	Lat          float64 `json:"lat"`
	Lon          float64 `json:"lon"`
	Capacity     int     `json:"capacity"`
	Accepting    bool    `json:"accepting"`
	Tenants      int     `json:"tenants"`
	HealthyEdges int     `json:"healthy_edges"`
}

// tenantJSON is a tenant as the API shows it.
type tenantJSON struct {
	Name     string    `json:"name"`
	Pod      string    `json:"pod"`
	Hostname string    `json:"hostname"`
	CNAME    string    `json:"cname"`
	Domains  []string  `json:"domains"`
	Created  time.Time `json:"created"`
	// Limits are the tenant's own traffic limits, absent when it has none
	// (the edges' default applies).
	Limits *router.Limits `json:"limits,omitempty"`
	// Placement explains a sign-up's placement, in its answer only.
	Placement *Placement `json:"placement,omitempty"`
}

// leaderJSON is the answer of GET /v1/leader.
type leaderJSON struct {
	Leader   string `json:"leader"`
	IsLeader bool   `json:"is_leader"`
}

func (s *Server) tenantJSON(t router.Tenant) tenantJSON {
	ds := t.Domains
	if ds == nil {
		ds = []string{}
	}
	return tenantJSON{
		Name:     t.Name,
		Pod:      t.Pod,
		Hostname: t.Name + "." + s.zone,
		CNAME:    t.Pod + ".pods." + s.zone,
		Domains:  ds,
		Created:  t.Created,
		Limits:   t.Limits,
	}
}

func podView(ps *router.PodState) podJSON {
	return podJSON{
		Name: ps.Name, Region: ps.Pod.Region, Lat: ps.Pod.Lat, Lon: ps.Pod.Lon, Capacity: ps.Pod.Capacity,
		Accepting: ps.Pod.IsAccepting(), Tenants: ps.Tenants, HealthyEdges: len(ps.PassingEdges),
	}
}

// routes is the API. Reads are answered from this replica's view; writes
// run here on the leader and are forwarded to it from a standby.
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/pods", s.listPods)
	mux.HandleFunc("GET /v1/pods/{pod}", s.getPod)
	mux.HandleFunc("GET /v1/tenants", s.listTenants)
	mux.HandleFunc("GET /v1/tenants/{name}", s.getTenant)
	mux.HandleFunc("GET /v1/leader", s.getLeader)
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))

	mux.Handle("PUT /v1/pods/{pod}", handleWrite(s, s.parsePutPod, s.putPod))
	mux.Handle("DELETE /v1/pods/{pod}", handleWrite(s, parsePath("pod", podName), s.deletePod))
	mux.Handle("POST /v1/tenants", handleWrite(s, s.parseSignup, s.signup))
	// A dry run writes nothing but runs on the leader, from the reads a
	// sign-up would make.
	mux.Handle("POST /v1/placements", handleWrite(s, s.parsePlacement, s.dryRun))
	mux.Handle("DELETE /v1/tenants/{name}", handleWrite(s, parsePath("name", s.val.tenantLabel), s.deleteTenant))
	mux.Handle("POST /v1/tenants/{name}/move", handleWrite(s, s.parseMove, s.move))
	mux.Handle("PUT /v1/tenants/{name}/domains/{domain}", handleWrite(s, s.parseDomain, s.addDomain))
	mux.Handle("DELETE /v1/tenants/{name}/domains/{domain}", handleWrite(s, s.parseDomain, s.removeDomain))
	mux.Handle("PUT /v1/tenants/{name}/limits", handleWrite(s, s.parseLimits, s.setLimits))
	mux.Handle("DELETE /v1/tenants/{name}/limits", handleWrite(s, s.parseClearLimits, s.setLimits))

	mux.HandleFunc("/", unmatched(mux))
	return s.instrument(mux)
}

// writeJSON answers with v as JSON.
func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	if v != nil {
		_ = json.NewEncoder(w).Encode(v)
	}
}

// writeError answers {"error": "..."} with the status of err's kind; 503s
// carry Retry-After, as they are worth retrying.
func writeError(w http.ResponseWriter, err error) {
	e := asError(err)
	if e.Status() == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, e.Status(), map[string]string{"error": e.Msg})
}

func (s *Server) listPods(w http.ResponseWriter, r *http.Request) {
	v, _ := s.readView(w, r)
	if v == nil {
		return
	}
	out := []podJSON{}
	for _, ps := range v.Pods() {
		if ps.Registered {
			out = append(out, podView(ps))
		}
	}
	writeJSON(w, http.StatusOK, map[string][]podJSON{"pods": out})
}

func (s *Server) getPod(w http.ResponseWriter, r *http.Request) {
	v, _ := s.readView(w, r)
	if v == nil {
		return
	}
	ps := v.Pod(r.PathValue("pod"))
	if ps == nil || !ps.Registered {
		writeError(w, notFound("pod %q not found", r.PathValue("pod")))
		return
	}
	writeJSON(w, http.StatusOK, podView(ps))
}

func (s *Server) getTenant(w http.ResponseWriter, r *http.Request) {
	v, _ := s.readView(w, r)
	if v == nil {
		return
	}
	t := v.Tenant(r.PathValue("name"))
	if t == nil {
		writeError(w, notFound("tenant %q not found", r.PathValue("name")))
		return
	}
	writeJSON(w, http.StatusOK, s.tenantJSON(*t))
}

func (s *Server) getLeader(w http.ResponseWriter, r *http.Request) {
	st := s.elector.State()
	writeJSON(w, http.StatusOK, leaderJSON{Leader: st.Leader, IsLeader: st.IsLeader})
}

// healthz answers 200 while the process serves; the body tells how current
// its view is and who leads. Consul's check of the replica is its TTL
// heartbeat, not this endpoint.
func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	st := s.router.Status()
	ls := s.elector.State()
	writeJSON(w, http.StatusOK, map[string]any{
		"status":       "ok",
		"view_synced":  st.Synced,
		"view_healthy": st.Healthy,
		"leader":       ls.Leader,
		"is_leader":    ls.IsLeader,
	})
}

// written is the answer of a write that succeeded.
type written struct {
	code  int
	body  any    // nil for none
	index uint64 // the Consul index it committed at (X-Podedge-Index)
}

// handleWrite serves one write: it reads and validates the request here, so
// bad input gets its 400 from any replica, then runs it when this replica
// leads and forwards it to the leader otherwise.
func handleWrite[T any](s *Server, parse func(*http.Request, []byte) (T, error), run func(context.Context, T) (written, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := readBody(w, r, s.conf().MaxBodyBytes)
		if err != nil {
			writeError(w, err)
			return
		}
		req, err := parse(r, body)
		if err != nil {
			writeError(w, err)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), s.cfg.WriteTimeout)
		defer cancel()
		st := s.leadership(ctx)
		if !st.IsLeader {
			s.fwd.forward(w, r.WithContext(ctx), body, st.Leader)
			return
		}
		out, err := run(ctx, req)
		if err != nil {
			writeError(w, err)
			return
		}
		s.wrote(out.index)
		w.Header().Set(IndexHeader, strconv.FormatUint(out.index, 10))
		writeJSON(w, out.code, out.body)
	})
}

// readBody reads at most limit bytes of the body.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, &Error{Kind: KindTooLarge, Msg: fmt.Sprintf("body is larger than %d bytes", limit)}
		}
		return nil, invalid("could not read the body: %v", err)
	}
	return body, nil
}

// parsePath validates the path value key with check.
func parsePath(key string, check func(string) error) func(*http.Request, []byte) (string, error) {
	return func(r *http.Request, _ []byte) (string, error) {
		v := r.PathValue(key)
		return v, check(v)
	}
}

func (s *Server) parsePutPod(r *http.Request, body []byte) (router.Pod, error) {
	var req podRequest
	if err := decodeJSON(body, &req); err != nil {
		return router.Pod{}, err
	}
	return s.val.pod(r.PathValue("pod"), req)
}

func (s *Server) putPod(ctx context.Context, p router.Pod) (written, error) {
	created, index, err := s.store.PutPod(ctx, p)
	if err != nil {
		return written{}, err
	}
	out := podJSON{Name: p.Name, Region: p.Region, Lat: p.Lat, Lon: p.Lon, Capacity: p.Capacity, Accepting: p.IsAccepting()}
	if ps := s.router.Snapshot().Pod(p.Name); ps != nil {
		out.Tenants, out.HealthyEdges = ps.Tenants, len(ps.PassingEdges)
	}
	if created {
		return written{http.StatusCreated, out, index}, nil
	}
	return written{http.StatusOK, out, index}, nil
}

func (s *Server) deletePod(ctx context.Context, name string) (written, error) {
	index, err := s.store.DeletePod(ctx, name)
	return written{code: http.StatusNoContent, index: index}, err
}

func (s *Server) parseSignup(r *http.Request, body []byte) (Signup, error) {
	return s.parseLocated(body, false)
}

func (s *Server) parsePlacement(r *http.Request, body []byte) (Signup, error) {
	return s.parseLocated(body, true)
}

// parseLocated validates a sign-up or a dry run and locates it. The
// replica that receives it looks its address up, so that a 400 comes from
// there; the leader, which places it, looks it up again in its own copy.
func (s *Server) parseLocated(body []byte, dryRun bool) (Signup, error) {
	var req signupRequest
	if err := decodeJSON(body, &req); err != nil {
		return Signup{}, err
	}
	su, err := s.val.signup(req, dryRun)
	if err != nil || req.IP == nil {
		return su, err
	}
	loc, err := s.locate(*req.IP)
	if err != nil {
		return Signup{}, err
	}
	su.Lat, su.Lon, su.Source = loc.Lat, loc.Lon, loc.Source
	return su, nil
}

func (s *Server) signup(ctx context.Context, su Signup) (written, error) {
	p, index, err := s.store.SignUp(ctx, su)
	if err != nil {
		return written{}, err
	}
	out := s.tenantJSON(p.Tenant)
	out.Placement = &p.Placement
	return written{http.StatusCreated, out, index}, nil
}

// placementJSON is the answer of POST /v1/placements.
type placementJSON struct {
	Pod       string    `json:"pod"`
	CNAME     string    `json:"cname"`
	Placement Placement `json:"placement"`
}

func (s *Server) dryRun(ctx context.Context, su Signup) (written, error) {
	pod, pl, index, err := s.store.DryRun(ctx, su)
	if err != nil {
		return written{}, err
	}
	return written{http.StatusOK, placementJSON{Pod: pod, CNAME: pod + ".pods." + s.zone, Placement: pl}, index}, nil
}

func (s *Server) deleteTenant(ctx context.Context, name string) (written, error) {
	index, err := s.store.DeleteTenant(ctx, name)
	return written{code: http.StatusNoContent, index: index}, err
}

type moveArgs struct{ name, pod string }

func (s *Server) parseMove(r *http.Request, body []byte) (moveArgs, error) {
	name := r.PathValue("name")
	if err := s.val.tenantLabel(name); err != nil {
		return moveArgs{}, err
	}
	var req moveRequest
	if err := decodeJSON(body, &req); err != nil {
		return moveArgs{}, err
	}
	if req.Pod == "" {
		return moveArgs{}, invalid("pod is required")
	}
	if err := podName(req.Pod); err != nil {
		return moveArgs{}, err
	}
	return moveArgs{name: name, pod: req.Pod}, nil
}

func (s *Server) move(ctx context.Context, a moveArgs) (written, error) {
	t, index, err := s.store.MoveTenant(ctx, a.name, a.pod)
	if err != nil {
		return written{}, err
	}
	return written{http.StatusOK, s.tenantJSON(t), index}, nil
}

type domainArgs struct{ name, domain string }

func (s *Server) parseDomain(r *http.Request, _ []byte) (domainArgs, error) {
	name := r.PathValue("name")
	if err := s.val.tenantLabel(name); err != nil {
		return domainArgs{}, err
	}
	d, err := s.val.domain(r.PathValue("domain"))
	if err != nil {
		return domainArgs{}, err
	}
	return domainArgs{name: name, domain: d}, nil
}

func (s *Server) addDomain(ctx context.Context, a domainArgs) (written, error) {
	t, index, err := s.store.AddDomain(ctx, a.name, a.domain)
	if err != nil {
		return written{}, err
	}
	return written{http.StatusOK, s.tenantJSON(t), index}, nil
}

func (s *Server) removeDomain(ctx context.Context, a domainArgs) (written, error) {
	index, err := s.store.RemoveDomain(ctx, a.name, a.domain)
	return written{code: http.StatusNoContent, index: index}, err
}

// unmatched answers requests no route takes: 405 with Allow when the path
// exists for other methods, 404 otherwise, both as JSON.
func unmatched(mux *http.ServeMux) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var allow []string
		for _, m := range []string{http.MethodGet, http.MethodPut, http.MethodPost, http.MethodDelete} {
			probe := &http.Request{Method: m, URL: r.URL, Host: r.Host, Header: http.Header{}}
			if _, pattern := mux.Handler(probe); pattern != "/" && pattern != "" {
				allow = append(allow, m)
			}
		}
		if len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			writeJSON(w, http.StatusMethodNotAllowed, map[string]string{
				"error": fmt.Sprintf("method %s is not allowed on %s; use %s", r.Method, r.URL.Path, strings.Join(allow, ", ")),
			})
			return
		}
		writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path)})
	}
}

// statusRecorder remembers the status code a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// instrument counts requests by route and code and times them. The route
// is the pattern the mux matched, so the label set stays bounded.
func (s *Server) instrument(next *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		route := r.Pattern
		if route == "" || route == "/" {
			route = "unmatched"
		}
		if rec.code == 0 {
			rec.code = http.StatusOK
		}
		s.m.requests.WithLabelValues(route, statusText(rec.code)).Inc()
		s.m.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

// statusText is the code as a label without allocating for common codes.
func statusText(code int) string {
	switch code {
	case 200:
		return "200"
	case 201:
		return "201"
	case 204:
		return "204"
	case 400:
		return "400"
	case 404:
		return "404"
	case 409:
		return "409"
	case 503:
		return "503"
	}
	return fmt.Sprint(code)
}
