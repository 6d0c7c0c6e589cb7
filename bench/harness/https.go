package harness

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/podedge/podedge/internal/child"
)

// The HTTPS workloads' protocols (Workload.Proto).
const (
	protoHTTP1 = "http/1.1"
	protoH2    = "h2"
)

// HTTPSWorkloads are the workloads of the HTTPS phase: HTTP/1.1 over TLS
// and HTTP/2 with h2load over keep-alive connections, and a new TLS 1.3
// connection per request (a full handshake each) with the Go load
// generator, h2load's clients never reconnecting.
func HTTPSWorkloads() []Workload {
	return []Workload{
		{Name: "HTTP/1.1 over TLS (64 B), 64 conns", Path: "/bytes/64", Conns: 64, Proto: protoHTTP1},
		{Name: "HTTP/2 (64 B), 64 conns × 10 streams", Path: "/bytes/64", Conns: 64, Proto: protoH2, Streams: 10},
		{Name: "new TLS 1.3 connection per request (64 B), 64 in flight", Path: "/bytes/64", Conns: 64, Proto: protoHTTP1, NewConn: true},
	}
}

// httpsPhase measures nginx, HAProxy and an edge of its own serving HTTPS
// with one certificate, alternating them within each round as the HTTP
// phase does.
func (h *harness) httpsPhase(ctx context.Context) error {
	cert, err := h.writeCertificate()
	if err != nil {
		return err
	}
	var systems []*server
	if !h.skip("nginx") {
		s, err := h.startNginx(ctx, "nginx-https", cert)
		if err != nil {
			return err
		}
		systems = append(systems, s)
	}
	if !h.skip("haproxy") {
		s, err := h.startHAProxy(ctx, "haproxy-https", cert)
		if err != nil {
			return err
		}
		systems = append(systems, s)
	}
	// An edge of its own: the main one serves plain HTTP only. Its public
	// IP is none of the pod's 13, so that DNS answers do not change.
	edge, err := h.startEdge(ctx, edgeSpec{name: "edge-https", prefix: mainPrefix, publicIP: "198.51.100.250", tls: cert})
	if err != nil {
		return err
	}
	systems = append(systems, edge)
	defer func() {
		for _, s := range systems {
			s.stop()
		}
	}()
	h.say("https: %d systems, %d workloads, %d rounds of %s, one ECDSA P-256 certificate for %s",
		len(systems), len(HTTPSWorkloads()), h.opts.Rounds, h.opts.Duration, strings.Join(certNames(), ", "))
	for _, s := range systems {
		for _, w := range HTTPSWorkloads() {
			if _, err := h.measureHTTPS(ctx, s, w, min(h.opts.Duration, time.Second)); err != nil {
				return fmt.Errorf("warm-up of %s, %s: %w", s.name, w.Name, err)
			}
		}
	}
	for round := 1; round <= h.opts.Rounds; round++ {
		for _, w := range HTTPSWorkloads() {
			for _, s := range rotated(systems, round) {
				var profiled <-chan error
				if s == edge && round == 1 {
					profiled = h.profileEdge(s, profileName("edge-https", w.Name), h.opts.Duration)
				}
				res, err := h.measureHTTPS(ctx, s, w, h.opts.Duration)
				if err != nil {
					return fmt.Errorf("%s, %s, round %d: %w", s.name, w.Name, round, err)
				}
				if profiled != nil {
					if err := <-profiled; err != nil {
						return err
					}
				}
				h.report.addHTTPS(w.Name, s.name, res)
				h.say("https round %d %-8s %-56s %9.0f req/s  p99 %-9s CPU server %.2f client %.2f  errors %d %s",
					round, s.name, w.Name, res.RPS, res.P99.Round(time.Microsecond), res.ServerCPU, res.ClientCPU, res.Errors, kinds(res.Failures))
			}
		}
	}
	for _, s := range systems {
		h.report.addMemory("https", s.name, s.peakRSS())
	}
	return nil
}

// measureHTTPS runs one HTTPS workload against s for d and measures the
// CPU time s used meanwhile.
func (h *harness) measureHTTPS(ctx context.Context, s *server, w Workload, d time.Duration) (HTTPResult, error) {
	pgids := s.pgids()
	before, start := cpuTicks(pgids...), time.Now()
	var res HTTPResult
	var err error
	if w.NewConn {
		res, err = h.runLoadgenTLS(ctx, s, w, d)
	} else {
		res, err = h.runH2load(ctx, s, w, d)
	}
	if err != nil {
		return res, err
	}
	res.ServerCPU = float64(cpuTicks(pgids...)-before) / clockTicks / time.Since(start).Seconds()
	return res, nil
}

// runLoadgenTLS runs the Go load generator over TLS, a new connection per
// request.
func (h *harness) runLoadgenTLS(ctx context.Context, s *server, w Workload, d time.Duration) (HTTPResult, error) {
	lr, cpu, err := h.loadgenArgs(ctx, s, w, d, nil, "-tls")
	if err != nil {
		return HTTPResult{}, err
	}
	return HTTPResult{RPS: lr.RPS, P50: lr.P50, P99: lr.P99, Max: lr.Max, Errors: lr.Failed, Failures: lr.Failures, ClientCPU: cpu}, nil
}

// runH2load runs h2load, one thread on the client CPUs, against s with the
// bench's Host as SNI and authority (--connect-to sends it to s.addr).
// Latencies come from its per-request log, h2load printing no
// percentiles.
func (h *harness) runH2load(ctx context.Context, s *server, w Workload, d time.Duration) (HTTPResult, error) {
	bin, err := LookTool("h2load")
	if err != nil {
		return HTTPResult{}, err
	}
	logFile := h.path("h2load-requests.tsv")
	defer os.Remove(logFile)
	args := []string{"-t", "1", "-c", strconv.Itoa(w.Conns), "-D", strconv.FormatInt(max(d.Milliseconds(), 1), 10) + "ms",
		"--connect-to", s.addr, "--log-file", logFile}
	if w.Proto == protoHTTP1 {
		args = append(args, "--h1")
	} else {
		args = append(args, "-m", strconv.Itoa(max(w.Streams, 1)))
	}
	args = append(args, "https://"+host+w.Path)
	var out bytes.Buffer
	cpu, err := h.runClient(ctx, child.Spec{Name: "h2load", Stdout: &out, Bin: bin, Args: args}, 0)
	if err != nil {
		return HTTPResult{}, fmt.Errorf("h2load: %w: %s", err, out.String())
	}
	res, err := parseH2load(out.String())
	if err != nil {
		return res, err
	}
	for _, want := range []string{"TLS Protocol: TLSv1.3", "Application protocol: " + w.Proto} {
		if !strings.Contains(out.String(), want) {
			return res, fmt.Errorf("h2load printed no %q: %s", want, out.String())
		}
	}
	f, err := os.Open(logFile)
	if err != nil {
		return res, fmt.Errorf("h2load's request log: %w", err)
	}
	defer f.Close()
	res.P50, res.P99, res.Max, err = h2loadLatencies(bufio.NewReader(f))
	res.ClientCPU = cpu
	return res, err
}

var (
	h2loadFinished = regexp.MustCompile(`(?m)^finished in [0-9.]+\w*, ([0-9.]+) req/s`)
	h2loadRequests = regexp.MustCompile(`(?m)^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)
	h2loadStatus   = regexp.MustCompile(`(?m)^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx`)
)

// parseH2load reads h2load's summary: requests per second and the failed
// requests, by kind (a status other than 2xx, errored: the stream or
// connection failed, timeout).
func parseH2load(out string) (HTTPResult, error) {
	fin, reqs, st := h2loadFinished.FindStringSubmatch(out), h2loadRequests.FindStringSubmatch(out), h2loadStatus.FindStringSubmatch(out)
	if fin == nil || reqs == nil || st == nil {
		return HTTPResult{}, fmt.Errorf("h2load printed no summary: %s", out)
	}
	n := func(s string) int64 { v, _ := strconv.ParseInt(s, 10, 64); return v }
	rps, _ := strconv.ParseFloat(fin[1], 64)
	res := HTTPResult{RPS: rps, Errors: n(reqs[5]), Failures: map[string]int64{}}
	for k, v := range map[string]int64{"status 3xx": n(st[2]), "status 4xx": n(st[3]), "status 5xx": n(st[4]),
		"errored": n(reqs[6]), "timeout": n(reqs[7])} {
		if v > 0 {
			res.Failures[k] = v
		}
	}
	if n(st[1]) == 0 {
		return res, fmt.Errorf("h2load: no 2xx answer: %s", out)
	}
	return res, nil
}

// h2loadLatencies reads h2load's --log-file (per request: start time,
// status, microseconds to the end of the response, tab-separated) and
// returns the p50, p99 and max of the 2xx answers.
func h2loadLatencies(r *bufio.Reader) (p50, p99, maxLat time.Duration, err error) {
	var lat []int64
	for {
		line, rerr := r.ReadSlice('\n')
		if f := strings.Split(strings.TrimSpace(string(line)), "\t"); len(f) >= 3 && strings.HasPrefix(f[1], "2") {
			us, perr := strconv.ParseInt(f[2], 10, 64)
			if perr != nil {
				return 0, 0, 0, fmt.Errorf("h2load's request log: line %q", line)
			}
			lat = append(lat, us)
		}
		if rerr != nil {
			break
		}
	}
	if len(lat) == 0 {
		return 0, 0, 0, fmt.Errorf("h2load's request log holds no 2xx answer")
	}
	slices.Sort(lat)
	us := func(v int64) time.Duration { return time.Duration(v) * time.Microsecond }
	return us(lat[len(lat)*50/100]), us(lat[len(lat)*99/100]), us(lat[len(lat)-1]), nil
}
