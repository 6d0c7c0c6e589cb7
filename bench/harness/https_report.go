package harness

func (r *Report) addHTTPS(workload, system string, res HTTPResult) {
	for _, row := range r.HTTPS {
		if row.Workload == workload && row.System == system {
			row.Rounds = append(row.Rounds, res)
			return
		}
	}
	r.HTTPS = append(r.HTTPS, &HTTPRow{Workload: workload, System: system, Rounds: []HTTPResult{res}})
}

// https is the HTTPS phase's rows seen as a report of their own, so that
// the HTTP tables' code renders them.
func (r *Report) https() *Report { return &Report{HTTP: r.HTTPS, Rounds: r.Rounds} }

// httpsTargets are the HTTPS rows of the targets table: the edge beside
// nginx on each HTTPS workload.
func (r *Report) httpsTargets(w writef, verdict func(bool) string) {
	sub := r.https()
	wl := HTTPSWorkloads()
	for _, t := range []struct {
		workload, text string
		min            float64
	}{
		{wl[1].Name, "edge over HTTP/2 ≥ 1.0× nginx req/s", 1},
		{wl[0].Name, "edge over HTTP/1.1 over TLS ≥ 1.2× nginx req/s", 1.2},
		{wl[2].Name, "edge new TLS 1.3 connections/s ≥ 1.0× nginx's", 1},
	} {
		e, n := sub.http(t.workload, "edge"), sub.http(t.workload, "nginx")
		if e == nil || n == nil {
			continue
		}
		ratio := httpRatio(e, n, rps)
		w("| %s | %s; medians %.0f vs %.0f | %s |\n", t.text, ratio, e.Median().RPS, n.Median().RPS, verdict(ratio.med >= t.min))
		c := httpRatio(e, n, httpCost)
		switch {
		case t.workload == wl[1].Name:
			w("| edge over HTTP/2: CPU per request ≤ nginx's | %s; medians %.1f vs %.1f µs | %s |\n", c, e.CostUS(), n.CostUS(), verdict(c.med <= 1))
		case e.Median().ClientCPU >= clientBound || n.Median().ClientCPU >= clientBound:
			w("| the same by CPU per request, the load generator being the bottleneck: edge's ≤ nginx's | %s; medians %.1f vs %.1f µs | %s |\n",
				c, e.CostUS(), n.CostUS(), verdict(c.med <= 1))
		}
	}
}

// httpsTables renders the HTTPS phase.
func (r *Report) httpsTables(w writef) {
	if len(r.HTTPS) == 0 {
		return
	}
	sub := r.https()
	w("#### HTTPS\n\nnginx, HAProxy and the edge serving one self-signed ECDSA P-256 certificate (for %s), TLS 1.3, in front of the same two backends. h2load (one thread) over 64 keep-alive connections, by ALPN HTTP/1.1 (`--h1`) or HTTP/2 with 10 streams in flight per connection (`-m 10`), the Host as SNI and authority; p50, p99 and max from h2load's per-request log. New connections: the Go load generator, a full handshake (X25519, no resumption) and one request per connection, 64 in flight. Median of %d rounds; the columns are the HTTP table's.\n\n",
		host+", *."+zoneName(), r.Rounds)
	w("| workload | system | req/s | p50 | p99 | max | errors | CPU server / client | CPU/req |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	var bound []string
	for _, wl := range sub.workloads() {
		for _, sys := range sub.systems(wl) {
			row := sub.http(wl, sys)
			m := row.Median()
			w("| %s | %s | %.0f | %s | %s | %s | %d | %.2f / %.2f | %.1f µs |\n", wl, sys, m.RPS, ms(m.P50), ms(m.P99), ms(m.Max), m.Errors, m.ServerCPU, m.ClientCPU, row.CostUS())
			if m.ClientCPU >= clientBound {
				bound = append(bound, sys+" ("+wl+")")
			}
		}
	}
	w("\nRatios, edge over each system, as in the HTTP table:\n\n")
	sub.ratioTable(w, "edge", "nginx", "haproxy")
	r.clientBoundNote(w, bound, "request")
	w("\n")
}
