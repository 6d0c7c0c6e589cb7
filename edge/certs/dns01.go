package certs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"
)

// folderDNS01 holds the DNS-01 tokens dnsd answers, one key per token:
// dns01/<challenge name, no trailing dot>/<id>, valued with the TXT string
// (dnsd/challenges.go reads the same keys).
const folderDNS01 = "dns01/"

// The name servers are asked again while they do not serve every token,
// first after dns01PollMin, then twice as long each time up to
// dns01PollMax: dnsd follows KV with a blocking query, so the tokens are
// there within milliseconds unless something is wrong.
const (
	dns01PollMin = 20 * time.Millisecond
	dns01PollMax = time.Second
)

// dns01 publishes the tokens of DNS-01 challenges in Consul KV, where dnsd
// finds them, and waits until the zone's name servers answer them, so that
// the CA is not told to look before they can be found.
type dns01 struct {
	kv      *api.KV
	folder  string   // "<prefix>certs/dns01/"
	servers []string // host:port; empty: the zone's NS records
	timeout time.Duration
	log     *slog.Logger

	resolver *net.Resolver // finds the zone's name servers when servers is empty
}

// tokenKey is the key of value, a TXT string for name: its id is derived
// from the value, so that writing it again is harmless.
func (d *dns01) tokenKey(name, value string) string {
	sum := sha256.Sum256([]byte(value))
	return d.folder + strings.TrimSuffix(name, ".") + "/" + hex.EncodeToString(sum[:8])
}

// publish writes the TXT values of the challenge name (absolute, with its
// trailing dot) and returns the function that removes them. The caller
// holds the lock of the name being ordered, so any other token of the name
// was left by an order that did not finish (its edge died): the same
// transaction removes it.
func (d *dns01) publish(ctx context.Context, name string, values []string) (remove func(), err error) {
	tree := d.folder + strings.TrimSuffix(name, ".") + "/"
	ops := api.KVTxnOps{{Verb: api.KVDeleteTree, Key: tree}}
	for _, v := range values {
		ops = append(ops, &api.KVTxnOp{Verb: api.KVSet, Key: d.tokenKey(name, v), Value: []byte(v)})
	}
	cctx, cancel := bounded(ctx)
	defer cancel()
	ok, resp, _, err := d.kv.Txn(ops, (&api.QueryOptions{}).WithContext(cctx))
	switch {
	case err != nil:
		return nil, fmt.Errorf("consul: write dns-01 tokens under %s: %w", tree, err)
	case !ok:
		return nil, fmt.Errorf("consul: write dns-01 tokens under %s: %s", tree, txnErrors(resp))
	}
	return func() {
		rctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		if _, err := d.kv.DeleteTree(tree, (&api.WriteOptions{}).WithContext(rctx)); err != nil {
			d.log.Warn("consul: dns-01 tokens not removed; the next order of the name removes them", "key", tree, "error", err.Error())
		}
	}, nil
}

// await returns once every name server answers TXT for name with all of
// values, or fails after the timeout naming those that do not.
func (d *dns01) await(ctx context.Context, name string, values []string) error {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	servers, err := d.nameservers(ctx, name)
	if err != nil {
		// Nothing to ask: dnsd follows KV within milliseconds, so the
		// CA will most likely find the tokens anyway.
		d.log.Warn("dns-01: the zone's name servers are unknown; not checking that they serve the tokens", "name", name, "error", err.Error())
		return nil
	}
	missing := map[string]string{} // server → what it answered last
	for _, s := range servers {
		missing[s] = "no answer yet"
	}
	c := &dns.Client{Timeout: 2 * time.Second}
	for wait := dns01PollMin; ; wait = min(2*wait, dns01PollMax) {
		for s := range missing {
			if got, err := askTXT(ctx, c, s, name); err != nil {
				missing[s] = err.Error()
			} else if containsAll(got, values) {
				delete(missing, s)
			} else {
				missing[s] = fmt.Sprintf("%d of the %d tokens", countIn(got, values), len(values))
			}
		}
		if len(missing) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			var why []string
			for s, m := range missing {
				why = append(why, s+": "+m)
			}
			slices.Sort(why)
			return fmt.Errorf("%s not served within %s by %s", strings.TrimSuffix(name, "."), d.timeout, strings.Join(why, "; "))
		case <-time.After(wait):
		}
	}
}

// nameservers are the configured servers, or else the addresses of the NS
// records of the zone name is in, on port 53.
func (d *dns01) nameservers(ctx context.Context, name string) ([]string, error) {
	if len(d.servers) > 0 {
		return d.servers, nil
	}
	zone := strings.TrimSuffix(strings.TrimPrefix(name, "_acme-challenge."), ".")
	nss, err := d.resolver.LookupNS(ctx, zone)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, ns := range nss {
		ips, err := d.resolver.LookupHost(ctx, ns.Host)
		if err != nil {
			continue
		}
		for _, ip := range ips {
			out = append(out, net.JoinHostPort(ip, "53"))
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no address for the name servers of %s", zone)
	}
	return out, nil
}

// askTXT asks server for the TXT records of name, without recursion (the
// server is the zone's authority), over TCP when the answer is truncated.
func askTXT(ctx context.Context, c *dns.Client, server, name string) ([]string, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeTXT)
	m.RecursionDesired = false
	r, _, err := c.ExchangeContext(ctx, m, server)
	if err == nil && r.Truncated {
		tc := *c
		tc.Net = "tcp"
		r, _, err = tc.ExchangeContext(ctx, m, server)
	}
	switch {
	case err != nil:
		return nil, err
	case r.Rcode == dns.RcodeNameError:
		return nil, nil
	case r.Rcode != dns.RcodeSuccess:
		return nil, errors.New(dns.RcodeToString[r.Rcode])
	}
	var out []string
	for _, rr := range r.Answer {
		if t, ok := rr.(*dns.TXT); ok {
			out = append(out, strings.Join(t.Txt, ""))
		}
	}
	return out, nil
}

func containsAll(have, want []string) bool { return countIn(have, want) == len(want) }

func countIn(have, want []string) int {
	n := 0
	for _, w := range want {
		if slices.Contains(have, w) {
			n++
		}
	}
	return n
}
