package certs

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podedge/podedge/internal/version"
	"golang.org/x/crypto/acme"
)

// accountKeyName is autocert's name of the ACME account key, so that an
// autocert.Manager on the same Cache uses the same account.
const accountKeyName = "acme_account+key"

// orderer places ACME orders: one account for every edge (its key is in
// KV), challenges provisioned in KV so that any edge answers them.
type orderer struct {
	cfg        *Config
	cache      *Cache
	challenges *challenges
	metrics    *metrics
	httpClient *http.Client
	zone       zoneNames
	dns01      *dns01

	mu     sync.Mutex
	client *acme.Client // registered; nil until the first order
}

func newOrderer(cfg *Config, cache *Cache, ch *challenges, m *metrics) (*orderer, error) {
	roots, err := rootsFor(cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("acme.ca: %w", err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	return &orderer{
		cfg:        cfg,
		cache:      cache,
		challenges: ch,
		metrics:    m,
		httpClient: &http.Client{Transport: tr, Timeout: 30 * time.Second},
		zone:       newZoneNames(cfg.Zone),
		dns01: &dns01{
			kv: cache.kv, folder: cache.root + folderDNS01, servers: cfg.DNS01Nameservers,
			timeout: cfg.DNS01Timeout, log: cfg.Logger.With("component", "certs"), resolver: net.DefaultResolver,
		},
	}, nil
}

// acmeClient returns the registered ACME client, registering the shared
// account on first use.
func (o *orderer) acmeClient(ctx context.Context) (*acme.Client, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.client != nil {
		return o.client, nil
	}
	key, err := o.accountKey(ctx)
	if err != nil {
		return nil, err
	}
	c := &acme.Client{
		Key:          key,
		DirectoryURL: o.cfg.Directory,
		HTTPClient:   o.httpClient,
		UserAgent:    "podedge/" + version.String(),
	}
	var contact []string
	if o.cfg.Email != "" {
		contact = []string{"mailto:" + o.cfg.Email}
	}
	if _, err := c.Register(ctx, &acme.Account{Contact: contact}, acme.AcceptTOS); err != nil && !errors.Is(err, acme.ErrAccountAlreadyExists) {
		var ae *acme.Error
		if !errors.As(err, &ae) || ae.StatusCode != http.StatusConflict {
			return nil, fmt.Errorf("registering the ACME account: %w", err)
		}
	}
	o.client = c
	return c, nil
}

// accountKey loads the account key from KV, or creates it there. Creation
// is a check-and-set on an absent key, so that edges starting together
// agree on one key (the loser reads the winner's).
func (o *orderer) accountKey(ctx context.Context) (crypto.Signer, error) {
	key := o.cache.key(accountKeyName)
	for attempt := 0; attempt < 3; attempt++ {
		p, err := o.cache.get(ctx, key, true)
		if err != nil {
			return nil, err
		}
		if p != nil {
			return parseKey(p.Value)
		}
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return nil, err
		}
		pemKey := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
		cctx, cancel := bounded(ctx)
		ok, _, err := o.cache.kv.CAS(&api.KVPair{Key: key, Value: pemKey, ModifyIndex: 0}, (&api.WriteOptions{}).WithContext(cctx))
		cancel()
		if err != nil {
			return nil, fmt.Errorf("consul: store the ACME account key: %w", err)
		}
		if ok {
			return k, nil
		}
	}
	return nil, errors.New("consul: the ACME account key keeps changing")
}

// parseKey parses a PEM private key as autocert stores it.
func parseKey(data []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil || !strings.Contains(b.Type, "PRIVATE KEY") {
		return nil, errors.New("the ACME account key in KV is not a PEM private key")
	}
	if k, err := x509.ParseECPrivateKey(b.Bytes); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS1PrivateKey(b.Bytes); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("the ACME account key in KV does not parse: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("the ACME account key in KV cannot sign")
	}
	return s, nil
}

// issue orders a certificate for name and returns it with a new ECDSA P-256
// key. Challenge types are tried in the configured order: when the CA
// rejects one, a new order tries the next (as autocert does), and the error
// names each type's failure.
func (o *orderer) issue(ctx context.Context, name string) (*tls.Certificate, error) {
	client, err := o.acmeClient(ctx)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: name},
		DNSNames: []string{name},
	}, key)
	if err != nil {
		return nil, err
	}
	var failures []string
	next := 0 // index in cfg.Challenges of the next type to try
	for {
		if len(failures) > 0 && next >= len(o.cfg.Challenges) {
			return nil, errors.New(strings.Join(failures, "; "))
		}
		order, err := client.AuthorizeOrder(ctx, acme.DomainIDs(name))
		if err != nil {
			return nil, joinFailures(failures, fmt.Errorf("new order: %w", err))
		}
		o.metrics.orders.Inc()
		if order.Status != acme.StatusReady && order.Status != acme.StatusPending {
			return nil, joinFailures(failures, fmt.Errorf("new order is %q", order.Status))
		}
		typ, err := o.authorize(ctx, client, order, name, &next)
		if err != nil {
			if typ == "" {
				return nil, joinFailures(failures, err)
			}
			failures = append(failures, typ+": "+err.Error())
			o.deactivate(client, order.AuthzURLs)
			continue
		}
		order, err = client.WaitOrder(ctx, order.URI)
		if err != nil {
			return nil, joinFailures(failures, fmt.Errorf("order: %w", err))
		}
		der, _, err := client.CreateOrderCert(ctx, order.FinalizeURL, csr, true)
		if err != nil {
			return nil, joinFailures(failures, fmt.Errorf("finalize: %w", err))
		}
		leaf, err := x509.ParseCertificate(der[0])
		if err != nil {
			return nil, fmt.Errorf("the CA's certificate does not parse: %w", err)
		}
		if err := leaf.VerifyHostname(name); err != nil {
			return nil, fmt.Errorf("the CA's certificate: %w", err)
		}
		return &tls.Certificate{Certificate: der, PrivateKey: key, Leaf: leaf}, nil
	}
}

// authorize satisfies the pending authorizations of order with the next
// challenge type. On failure it returns the type that failed (empty when
// the failure was not the challenge's: no type left, KV unreachable, the
// context ended), so that the caller tries the next type.
func (o *orderer) authorize(ctx context.Context, client *acme.Client, order *acme.Order, name string, next *int) (string, error) {
	for _, zurl := range order.AuthzURLs {
		z, err := client.GetAuthorization(ctx, zurl)
		if err != nil {
			return "", fmt.Errorf("authorization: %w", err)
		}
		if z.Status != acme.StatusPending {
			continue
		}
		var chal *acme.Challenge
		for chal == nil && *next < len(o.cfg.Challenges) {
			typ := o.cfg.Challenges[*next]
			for _, c := range z.Challenges {
				if c.Type == typ {
					chal = c
				}
			}
			*next++
		}
		if chal == nil {
			return "", fmt.Errorf("no challenge type left to try (the CA offers %s)", offered(z.Challenges))
		}
		cleanup, err := o.challenges.provision(ctx, client, chal, name)
		if err != nil {
			return "", err
		}
		_, err = client.Accept(ctx, chal)
		if err == nil {
			_, err = client.WaitAuthorization(ctx, z.URI)
		}
		cleanup()
		if err != nil {
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			return chal.Type, err
		}
	}
	return "", nil
}

// deactivate gives up the pending authorizations of a failed order, so
// that they do not count against the CA's limits; errors are ignored.
func (o *orderer) deactivate(client *acme.Client, urls []string) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	for _, u := range urls {
		if z, err := client.GetAuthorization(ctx, u); err == nil && z.Status == acme.StatusPending {
			_ = client.RevokeAuthorization(ctx, u)
		}
	}
}

func offered(cs []*acme.Challenge) string {
	var b bytes.Buffer
	for i, c := range cs {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(c.Type)
	}
	if b.Len() == 0 {
		return "none"
	}
	return b.String()
}

// joinFailures prefixes err with the challenge types that failed before it.
func joinFailures(failures []string, err error) error {
	if len(failures) == 0 {
		return err
	}
	return fmt.Errorf("%s; then %w", strings.Join(failures, "; "), err)
}
