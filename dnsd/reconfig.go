package dnsd

import "reflect"

// LiveKeys are the keys of dnsd's configuration that a reload (SIGHUP) may
// change; a change to any other is refused. What they describe is packed
// into the zone, which a reload rebuilds; sockets, buffers, transfers,
// DNSSEC, cookies and rate limiting are set up once, at start.
var LiveKeys = []string{"log.level", "ttl", "soa", "ns", "mx", "answer_cap", "nsid", "tcp"}

// Reconfigure applies the live keys of cfg, which a reload validated: the
// TCP limits for every connection's next wait, and the zone, rebuilt from
// the latest snapshot under a new serial when its records changed.
func (s *Server) Reconfigure(cfg Config) error {
	d, err := cfg.zoneData()
	if err != nil {
		return err
	}
	tcp := cfg.TCP
	s.tcpLimits.Store(&tcp)
	s.handler.setData(d)
	return nil
}

// setData rebuilds the zone from d. The serial goes on from the running
// zone's, and grows, so that secondaries transfer the new records; the
// IXFR journal starts again (older serials get the whole zone).
func (h *Handler) setData(d *zoneData) {
	h.buildMu.Lock()
	defer h.buildMu.Unlock()
	if reflect.DeepEqual(h.data.Load(), d) {
		return
	}
	h.data.Store(d)
	prev := h.builder
	sign := prev.sign
	if sign != nil {
		// The DNSKEY's TTL is the apex TTL.
		sign = newSigner(sign.key, d, h.dnssec, h.clock, h.m)
	}
	b := newBuilder(d, h.m, h.log, h.journal, sign)
	b.serial, b.haveSerial = prev.serial, prev.haveSerial
	h.builder = b
	if h.needKey || h.last == nil {
		return
	}
	was := h.zone.Load()
	z := b.build(h.last, nil, true)
	h.storeZone(z)
	h.m.journal.Set(float64(len(z.journal)))
	if was != nil && was.serial != z.serial && h.onSerial != nil {
		h.onSerial(z.serial)
	}
}
