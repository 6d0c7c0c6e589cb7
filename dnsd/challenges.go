package dnsd

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"
	"github.com/podedge/podedge/internal/retry"
	"github.com/prometheus/client_golang/prometheus"
)

// ACME DNS-01 challenges (RFC 8555 section 8.4). The edge that orders the
// zone's wildcard certificate writes each token's TXT value to Consul KV,
// one key per token:
//
//	<prefix>certs/dns01/<challenge name without trailing dot>/<id>
//	podedge/certs/dns01/_acme-challenge.example.test/3f2a9c0d17e4b5a6 = "<TXT value>"
//
// dnsd watches that folder with a blocking query and answers TXT for every
// such name within its zone, all the name's values in one answer, as long
// as the keys exist. The answers live beside the zone, not in it: they
// change within an order, far more often than the platform, and do not move
// the SOA serial.

// ACMEChallenges configures the answers to ACME DNS-01 challenges.
type ACMEChallenges struct {
	// TTL is the TTL of the challenge TXT records, in whole seconds.
	// Default 10s: short, so that a resolver that saw the tokens of an
	// order does not still hold them when the next order asks for its own.
	TTL time.Duration `yaml:"ttl"`
}

// DefaultACMEChallenges are the defaults of the acme_challenges section.
func DefaultACMEChallenges() ACMEChallenges { return ACMEChallenges{TTL: 10 * time.Second} }

// validate checks the section, naming the bad key.
func (a ACMEChallenges) validate() error {
	if _, err := seconds(a.TTL); err != nil {
		return fmt.Errorf("acme_challenges.ttl: %w", err)
	}
	return nil
}

const (
	// challengeFolder is the KV folder of the tokens, under the prefix.
	challengeFolder = "certs/dns01/"
	// challengeLabel is the first label of every name answered (RFC 8555
	// section 8.4); keys for any other name are ignored, so that the folder
	// cannot be used to publish arbitrary records.
	challengeLabel = "_acme-challenge"
	// maxChallengeValue is the longest TXT value: one character-string.
	maxChallengeValue = 255

	typeTXT = 16
)

// Blocking query timing: a query waits at most challengeWait; failures back
// off from challengeRetryBase, doubling, to challengeRetryMax.
const (
	challengeWait      = 5 * time.Minute
	challengeRetryBase = 250 * time.Millisecond
	challengeRetryMax  = 10 * time.Second
)

// challenges holds the TXT answers to the DNS-01 challenges in flight. It
// is safe for concurrent use; answer does not allocate.
type challenges struct {
	origin string // the zone, lower case, with its trailing dot
	ttl    uint32
	log    *slog.Logger

	// names maps a lower-case wire name (the full name, root label
	// included) to its answers. Published maps are never modified.
	names atomic.Pointer[map[string]*challengeNode]

	values  prometheus.Gauge
	ignored prometheus.Gauge
}

// challengeNode is a challenge name with its TXT set, or (txt nil) an empty
// non-terminal between one and the zone's apex: it exists, so it answers
// NODATA rather than NXDOMAIN (RFC 8020).
type challengeNode struct {
	txt *rrset
}

// newChallenges returns the (empty) answers of zone, a validated zone name.
func newChallenges(zone string, cfg ACMEChallenges, log *slog.Logger) *challenges {
	ttl, _ := seconds(cfg.TTL) // validated with the configuration
	c := &challenges{
		origin: zone,
		ttl:    ttl,
		log:    log.With("component", "dnsd"),
		values: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "dnsd_acme_challenges",
			Help: "ACME DNS-01 TXT values being served, from <prefix>certs/dns01/.",
		}),
		ignored: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "dnsd_acme_challenges_ignored",
			Help: "Keys under <prefix>certs/dns01/ not served: a name outside the zone or not _acme-challenge, or a bad value.",
		}),
	}
	empty := map[string]*challengeNode{}
	c.names.Store(&empty)
	return c
}

// register adds the metrics to reg.
func (c *challenges) register(reg prometheus.Registerer) {
	reg.MustRegister(c.values, c.ignored)
}

// answer answers the query q for lname (its lower-case wire name) when
// lname is a challenge name, or an empty non-terminal above one, and
// reports whether it did. TXT and ANY get every value of the name; any
// other type, and an empty non-terminal, NODATA with soa. A name with no
// token left is not found here: the caller answers NXDOMAIN.
func (c *challenges) answer(q *query, r *response, lname []byte, soa *rrset) (rcode int, ok bool) {
	if c == nil {
		return 0, false
	}
	n := (*c.names.Load())[string(lname)]
	if n == nil {
		return 0, false
	}
	if n.txt != nil && (q.qtype == typeTXT || q.qtype == typeANY) {
		r.add(secAnswer, n.txt, 0)
	} else {
		r.add(secAuthority, soa, 0)
	}
	return rcodeSuccess, true
}

// run follows <prefix>certs/dns01/ until ctx ends. While Consul is
// unreachable it keeps answering what it knows, retrying with backoff, and
// logs the first failure and the recovery.
func (c *challenges) run(ctx context.Context, kv *api.KV, prefix string) {
	folder := prefix + challengeFolder
	var index uint64
	failures := 0
	logged := map[string]uint64{} // ignored keys already logged, by ModifyIndex
	for ctx.Err() == nil {
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: challengeWait}).WithContext(ctx)
		pairs, meta, err := kv.List(folder, q)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			wait := retry.Backoff(challengeRetryBase, challengeRetryMax, failures)
			if failures == 1 {
				c.log.Warn("consul: watching acme challenges failed; answering the ones known", "prefix", folder, "error", err.Error(), "retry_in", wait.String())
			}
			index = 0
			if !retry.Sleep(ctx, wait) {
				return
			}
			continue
		}
		if failures > 0 {
			c.log.Info("consul: watching acme challenges again", "prefix", folder)
			failures = 0
		}
		if index == 0 || meta.LastIndex != index {
			c.apply(folder, pairs, logged)
		}
		if meta.LastIndex < index || meta.LastIndex == 0 {
			index = 0 // a restarted agent starts a new index
		} else {
			index = meta.LastIndex
		}
	}
}

// apply publishes the answers of the keys under folder. Keys that cannot
// be served are logged once (per version) and counted.
func (c *challenges) apply(folder string, pairs api.KVPairs, logged map[string]uint64) {
	values := map[string][]string{} // by absolute lower-case name
	ignored := 0
	seen := make(map[string]bool, len(pairs))
	for _, p := range pairs {
		rest := strings.TrimPrefix(p.Key, folder)
		if rest == "" || strings.HasSuffix(rest, "/") {
			continue // the folder, or a folder of a name
		}
		seen[p.Key] = true
		name, v, err := c.challenge(rest, p.Value)
		if err != nil {
			ignored++
			if logged[p.Key] != p.ModifyIndex {
				logged[p.Key] = p.ModifyIndex
				c.log.Warn("acme challenge in consul not served", "key", p.Key, "error", err.Error())
			}
			continue
		}
		values[name] = append(values[name], v)
	}
	for k := range logged {
		if !seen[k] {
			delete(logged, k)
		}
	}

	names := make(map[string]*challengeNode, 2*len(values))
	served := 0
	for name, vs := range values {
		slices.Sort(vs)
		vs = slices.Compact(vs)
		rrs := make([]dns.RR, len(vs))
		for i, v := range vs {
			rrs[i] = &dns.TXT{Hdr: dns.RR_Header{Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: c.ttl}, Txt: []string{escapeTXT(v)}}
		}
		served += len(vs)
		k, _ := wireKey(name) // checked by challenge
		names[k] = &challengeNode{txt: fixedSet(dns.TypeTXT, rrs, true)}
	}
	// The names between each challenge name and the apex exist too.
	for name := range values {
		for n := parentName(name); n != c.origin && dns.IsSubDomain(c.origin, n); n = parentName(n) {
			if k, err := wireKey(n); err == nil && names[k] == nil {
				names[k] = &challengeNode{}
			}
		}
	}
	c.names.Store(&names)
	c.values.Set(float64(served))
	c.ignored.Set(float64(ignored))
	c.log.Debug("acme challenges", "names", len(values), "values", served, "ignored", ignored)
}

// challenge checks the key rest ("<name>/<id>", relative to the folder) and
// its value, and returns the absolute lower-case name and the TXT value.
func (c *challenges) challenge(rest string, value []byte) (name, v string, err error) {
	name, id, ok := strings.Cut(rest, "/")
	if !ok || id == "" || strings.Contains(id, "/") {
		return "", "", fmt.Errorf("key is not <name>/<id>")
	}
	name = dns.Fqdn(strings.ToLower(name))
	if _, ok := dns.IsDomainName(name); !ok || len(name) > 254 {
		return "", "", fmt.Errorf("%q is not a domain name", name)
	}
	if _, err := wireKey(name); err != nil {
		return "", "", fmt.Errorf("%q is not a domain name: %w", name, err)
	}
	if first, _, _ := strings.Cut(name, "."); first != challengeLabel {
		return "", "", fmt.Errorf("%q does not start with %s", name, challengeLabel)
	}
	for _, l := range strings.Split(name[:len(name)-1], ".") {
		if !hostLabel(l) {
			return "", "", fmt.Errorf("%q is not a host name: label %q", name, l)
		}
	}
	if name == c.origin || !dns.IsSubDomain(c.origin, name) {
		return "", "", fmt.Errorf("%q is outside the zone %s", name, c.origin)
	}
	if len(value) == 0 || len(value) > maxChallengeValue {
		return "", "", fmt.Errorf("value of %d bytes; a TXT value has 1 to %d", len(value), maxChallengeValue)
	}
	for _, b := range value {
		if b < 0x20 || b > 0x7E {
			return "", "", fmt.Errorf("value holds byte 0x%02x; only printable ASCII is served", b)
		}
	}
	return name, string(value), nil
}

// escapeTXT writes v in the presentation form miekg/dns packs from:
// backslashes and quotes escaped, so that they are packed as themselves.
func escapeTXT(v string) string {
	if !strings.ContainsAny(v, `\"`) {
		return v
	}
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(v)
}

// wireKey is the wire form of an absolute lower-case name, the key of
// challenges.names.
func wireKey(name string) (string, error) {
	buf := make([]byte, maxNameLen)
	n, err := dns.PackDomainName(name, buf, 0, nil, false)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// parentName is name without its first label ("b.c." for "a.b.c.").
func parentName(name string) string {
	_, parent, _ := strings.Cut(name, ".")
	if parent == "" {
		return "."
	}
	return parent
}
