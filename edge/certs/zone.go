package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/crypto/acme"
)

// The zone's certificate: one certificate for *.<zone> and <zone> serves
// every tenant hostname (<tenant>.<zone>), so that a new tenant costs no
// order and the platform stays far below the CA's limits (Let's Encrypt:
// 50 certificates per registered domain a week). It is ordered by DNS-01,
// the only challenge a CA accepts for a wildcard, which dnsd, the zone's
// authority, answers from the tokens written to KV. It is stored, locked,
// backed off and renewed like any other certificate, under the name
// "*.<zone>": one edge orders, every edge serves it.

// zoneNames is the zone's certificate's names, in the forms the hot path
// and the store need.
type zoneNames struct {
	apex   string // "example.test"
	suffix string // ".example.test"
	name   string // "*.example.test": its name in memory, in KV and in locks
}

func newZoneNames(zone string) zoneNames {
	apex := strings.TrimSuffix(zone, ".")
	return zoneNames{apex: apex, suffix: "." + apex, name: "*." + apex}
}

// covers reports whether the zone's certificate serves name, a lower-case
// name without a trailing dot: the apex, or one label below it. It does
// not allocate.
func (z *zoneNames) covers(name []byte) bool {
	n := len(name) - len(z.suffix)
	if n < 0 {
		return string(name) == z.apex
	}
	if string(name[n:]) != z.suffix {
		return string(name) == z.apex
	}
	if n == 0 {
		return false
	}
	for _, c := range name[:n] {
		if c == '.' {
			return false
		}
	}
	return true
}

// coversString is covers for a string.
func (z *zoneNames) coversString(name string) bool {
	label, ok := strings.CutSuffix(name, z.suffix)
	return name == z.apex || ok && label != "" && !strings.Contains(label, ".")
}

// issueZone orders the zone's certificate, for *.<zone> and <zone>, with
// DNS-01: the tokens of both authorizations (they share the name
// _acme-challenge.<zone>) are published in KV at once, the CA is told to
// look once the name servers serve them, and they are removed as soon as
// the CA has decided.
func (o *orderer) issueZone(ctx context.Context) (*tls.Certificate, error) {
	client, err := o.acmeClient(ctx)
	if err != nil {
		return nil, err
	}
	names := []string{o.zone.name, o.zone.apex}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: o.zone.name},
		DNSNames: names,
	}, key)
	if err != nil {
		return nil, err
	}
	order, err := client.AuthorizeOrder(ctx, acme.DomainIDs(names...))
	if err != nil {
		return nil, fmt.Errorf("new order: %w", err)
	}
	o.metrics.orders.Inc()
	if order.Status != acme.StatusReady && order.Status != acme.StatusPending {
		return nil, fmt.Errorf("new order is %q", order.Status)
	}
	if err := o.authorizeDNS01(ctx, client, order); err != nil {
		o.deactivate(client, order.AuthzURLs)
		return nil, fmt.Errorf("%s: %w", ChallengeDNS, err)
	}
	order, err = client.WaitOrder(ctx, order.URI)
	if err != nil {
		return nil, fmt.Errorf("order: %w", err)
	}
	der, _, err := client.CreateOrderCert(ctx, order.FinalizeURL, csr, true)
	if err != nil {
		return nil, fmt.Errorf("finalize: %w", err)
	}
	leaf, err := x509.ParseCertificate(der[0])
	if err != nil {
		return nil, fmt.Errorf("the CA's certificate does not parse: %w", err)
	}
	for _, n := range names {
		if err := leaf.VerifyHostname(n); err != nil {
			return nil, fmt.Errorf("the CA's certificate: %w", err)
		}
	}
	return &tls.Certificate{Certificate: der, PrivateKey: key, Leaf: leaf}, nil
}

// authorizeDNS01 satisfies the pending authorizations of order with DNS-01.
func (o *orderer) authorizeDNS01(ctx context.Context, client *acme.Client, order *acme.Order) error {
	type pending struct {
		authz *acme.Authorization
		chal  *acme.Challenge
	}
	var todo []pending
	values := map[string][]string{} // by challenge name
	for _, zurl := range order.AuthzURLs {
		z, err := client.GetAuthorization(ctx, zurl)
		if err != nil {
			return fmt.Errorf("authorization: %w", err)
		}
		if z.Status != acme.StatusPending {
			continue // valid already: the CA reused an earlier one
		}
		var chal *acme.Challenge
		for _, c := range z.Challenges {
			if c.Type == ChallengeDNS {
				chal = c
			}
		}
		if chal == nil {
			return fmt.Errorf("the CA offers no %s for %s (it offers %s)", ChallengeDNS, z.Identifier.Value, offered(z.Challenges))
		}
		v, err := client.DNS01ChallengeRecord(chal.Token)
		if err != nil {
			return err
		}
		name := "_acme-challenge." + z.Identifier.Value + "."
		values[name] = append(values[name], v)
		todo = append(todo, pending{z, chal})
	}
	if len(todo) == 0 {
		return nil
	}
	start := time.Now()
	for name, vs := range values {
		remove, err := o.dns01.publish(ctx, name, vs)
		if err != nil {
			return err
		}
		defer remove()
		if err := o.dns01.await(ctx, name, vs); err != nil {
			return err
		}
	}
	o.metrics.dns01Wait.Set(time.Since(start).Seconds())
	// Every token is served: the CA may check them all at once.
	for _, p := range todo {
		if _, err := client.Accept(ctx, p.chal); err != nil {
			return fmt.Errorf("accept: %w", err)
		}
	}
	var failed []string
	for _, p := range todo {
		if _, err := client.WaitAuthorization(ctx, p.authz.URI); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			failed = append(failed, fmt.Sprintf("%s: %v", p.authz.Identifier.Value, err))
		}
	}
	if len(failed) > 0 {
		return errors.New(strings.Join(failed, "; "))
	}
	return nil
}

// order places the order of name: the zone's certificate by DNS-01, any
// other name with the configured challenges.
func (o *orderer) order(ctx context.Context, name string) (*tls.Certificate, error) {
	if name == o.zone.name {
		return o.issueZone(ctx)
	}
	return o.issue(ctx, name)
}
