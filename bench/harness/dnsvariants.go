package harness

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"time"

	"github.com/miekg/dns"
)

// The DNS phase's two variants of dnsd, each measured in rounds beside
// what it is compared with, on the same query mix:
//   - "rrl": dnsd with response rate limiting on, at a rate the one
//     client never reaches (so every answer is checked and none limited),
//     beside dnsd without;
//   - "dnssec": dnsd signing the zone (ECDSA P-256) beside Knot signing
//     the same records itself (dnssec-signing: on), dnsperf setting DO so
//     that both send signatures and denials.
const (
	rrlWorkload    = "rrl"
	dnssecWorkload = "dnssec"
	// benchRRLRate is dnsd's highest rate limit.
	benchRRLRate = 262143
)

// dnsVariants runs the variants; plain is the running dnsd of the mix.
func (h *harness) dnsVariants(ctx context.Context, plain *server) error {
	rrl, err := h.startDnsdWith(ctx, "dnsd-rrl", mainPrefix, benchRRLRate, "")
	if err != nil {
		return err
	}
	defer rrl.stop()
	rrl.name = "dnsd+rrl"
	keyFile := h.path("dnssec.pem")
	if err := writeSigningKey(keyFile); err != nil {
		return err
	}
	signed, err := h.startDnsdWith(ctx, "dnsd-dnssec", mainPrefix, 0, keyFile)
	if err != nil {
		return err
	}
	defer signed.stop()
	variants := []struct {
		workload string
		systems  []*server
		do       bool
	}{{rrlWorkload, []*server{plain, rrl}, false}}
	if !h.skip("knot") {
		knot, err := h.startKnotAs(ctx, "knot-dnssec", true)
		if err != nil {
			return err
		}
		defer knot.stop()
		variants = append(variants, struct {
			workload string
			systems  []*server
			do       bool
		}{dnssecWorkload, []*server{signed, knot}, true})
	}
	for _, v := range variants {
		for _, s := range v.systems {
			if v.do {
				if err := checkSigned(s.addr); err != nil {
					return fmt.Errorf("%s (%s): %w", s.name, v.workload, err)
				}
			}
			if _, err := h.measureDNSWith(ctx, s, min(h.opts.Duration, time.Second), v.do); err != nil {
				return fmt.Errorf("warm-up of %s (%s): %w", s.name, v.workload, err)
			}
		}
		for round := 1; round <= h.opts.Rounds; round++ {
			for _, s := range rotated(v.systems, round) {
				res, err := h.measureDNSWith(ctx, s, h.opts.Duration, v.do)
				if err != nil {
					return fmt.Errorf("%s (%s), round %d: %w", s.name, v.workload, round, err)
				}
				h.report.addDNS(v.workload, s.name, res)
				h.say("dns %s round %d %-8s %9.0f q/s  lost %d of %d  avg %s  CPU server %.2f client %.2f",
					v.workload, round, s.name, res.QPS, res.Lost, res.Sent, res.AvgLatency.Round(time.Microsecond), res.ServerCPU, res.ClientCPU)
			}
		}
	}
	return nil
}

// checkSigned checks that addr answers the pod's A with a signature when
// asked with DO.
func checkSigned(addr string) error {
	m := new(dns.Msg)
	m.SetQuestion(pod+".pods."+zone, dns.TypeA)
	m.SetEdns0(1232, true)
	r, _, err := (&dns.Client{Timeout: time.Second}).Exchange(m, addr)
	if err != nil {
		return err
	}
	if err := count(r, dns.RcodeSuccess, dns.TypeRRSIG, 1); err != nil {
		return fmt.Errorf("the pod's A with DO: %w", err)
	}
	return nil
}

// writeSigningKey writes a new ECDSA P-256 key as PEM for dnsd to sign
// with.
func writeSigningKey(path string) error {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}
