package dnsd

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"
)

// DNSSEC, signed online: one combined signing key (a CSK: flags 257) signs
// every RRset when the zone changes, not per query; only the denials of
// names that do not exist are signed when asked (compact denial, RFC 9824),
// and kept in a small cache. See docs/design/dnsd-dnssec.md.

// DNSSEC configures signing.
type DNSSEC struct {
	// Enabled signs the zone. Default false.
	Enabled bool `yaml:"enabled"`
	// KeyFile is a PEM file (PKCS #8) holding the private key, ECDSA
	// P-256 or Ed25519. Empty: the key is in Consul KV.
	KeyFile string `yaml:"key_file"`
	// ConsulKey is the KV key holding the PEM when KeyFile is empty.
	// Default "<consul.prefix>dnssec/<zone>" (podedge/dnssec/example.test).
	ConsulKey string `yaml:"consul_key"`
	// Generate makes a key and stores it at ConsulKey when none is there
	// (check-and-set: every dnsd then uses the one stored first). Default
	// true.
	Generate bool `yaml:"generate"`
	// Algorithm of a generated key: ecdsap256sha256 (13, the default) or
	// ed25519 (15).
	Algorithm string `yaml:"algorithm"`
	// SignatureLifetime is how long signatures are valid. Default 14 days
	// (Knot's rrsig-lifetime).
	SignatureLifetime time.Duration `yaml:"signature_lifetime"`
	// Refresh: signatures with less than this left are made again.
	// Default 7 days.
	Refresh time.Duration `yaml:"refresh"`
}

// dnssecAlgorithms are the algorithms of generated keys, by configured
// name.
var dnssecAlgorithms = map[string]uint8{
	"ecdsap256sha256": dns.ECDSAP256SHA256,
	"ed25519":         dns.ED25519,
}

func (c *DNSSEC) validate() error {
	if !c.Enabled {
		return nil
	}
	if _, ok := dnssecAlgorithms[strings.ToLower(c.Algorithm)]; !ok {
		return fmt.Errorf("dnssec.algorithm: %q is not ecdsap256sha256 or ed25519", c.Algorithm)
	}
	if c.SignatureLifetime < 2*time.Hour || c.SignatureLifetime%time.Second != 0 {
		return fmt.Errorf("dnssec.signature_lifetime: %s must be whole seconds and at least 2h", c.SignatureLifetime)
	}
	if c.Refresh <= 0 || c.Refresh >= c.SignatureLifetime || c.Refresh%time.Second != 0 {
		return fmt.Errorf("dnssec.refresh: %s must be whole seconds, positive and shorter than signature_lifetime", c.Refresh)
	}
	if c.KeyFile != "" {
		b, err := os.ReadFile(c.KeyFile)
		if err != nil {
			return fmt.Errorf("dnssec.key_file: %w", err)
		}
		if _, err := parseKey(b); err != nil {
			return fmt.Errorf("dnssec.key_file: %s: %w", c.KeyFile, err)
		}
	}
	return nil
}

// parseKey reads a PEM private key, ECDSA P-256 or Ed25519, and returns it
// with its DNSSEC algorithm.
func parseKey(b []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	var k any
	var err error
	switch block.Type {
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	}
	if err != nil {
		return nil, err
	}
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() {
			return nil, errors.New("an ECDSA key must be on P-256")
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("a %T is neither ECDSA P-256 nor Ed25519", k)
}

// generateKey makes a new key of algorithm alg and returns it as PEM.
func generateKey(alg uint8) ([]byte, error) {
	var k any
	var err error
	if alg == dns.ED25519 {
		_, k, err = ed25519.GenerateKey(rand.Reader)
	} else {
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// dnskeyOf returns the DNSKEY record of key for zone: a CSK (zone key and
// secure entry point, flags 257).
func dnskeyOf(key crypto.Signer, zone string, ttl uint32) *dns.DNSKEY {
	k := &dns.DNSKEY{
		Hdr:      dns.RR_Header{Name: zone, Rrtype: dns.TypeDNSKEY, Class: dns.ClassINET, Ttl: ttl},
		Flags:    dns.ZONE | dns.SEP,
		Protocol: 3,
	}
	switch pub := key.Public().(type) {
	case *ecdsa.PublicKey:
		k.Algorithm = dns.ECDSAP256SHA256
		var raw [64]byte
		pub.X.FillBytes(raw[:32])
		pub.Y.FillBytes(raw[32:])
		k.PublicKey = base64.StdEncoding.EncodeToString(raw[:])
	case ed25519.PublicKey:
		k.Algorithm = dns.ED25519
		k.PublicKey = base64.StdEncoding.EncodeToString(pub)
	}
	return k
}

// consulKeyPath is where the key lives in Consul KV.
func (c *Config) consulKeyPath() string {
	if c.DNSSEC.ConsulKey != "" {
		return c.DNSSEC.ConsulKey
	}
	return c.Consul.Prefix + "dnssec/" + strings.TrimSuffix(c.Zone, ".")
}

// loadConsulKey reads the key from Consul KV, making it first when it is
// not there and the configuration says to. Two dnsd making one at once
// write with check-and-set on index 0: one wins, both use its key.
func loadConsulKey(ctx context.Context, kv *api.KV, path string, c DNSSEC) ([]byte, error) {
	q := (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx)
	for try := 0; try < 3; try++ {
		pair, _, err := kv.Get(path, q)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		if pair != nil {
			return pair.Value, nil
		}
		if !c.Generate {
			return nil, fmt.Errorf("no key at %s, and dnssec.generate is off", path)
		}
		pemKey, err := generateKey(dnssecAlgorithms[strings.ToLower(c.Algorithm)])
		if err != nil {
			return nil, err
		}
		ok, _, err := kv.CAS(&api.KVPair{Key: path, Value: pemKey, ModifyIndex: 0}, (&api.WriteOptions{}).WithContext(ctx))
		if err != nil {
			return nil, fmt.Errorf("write %s: %w", path, err)
		}
		if ok {
			return pemKey, nil
		}
		// Another dnsd stored one first: read it.
	}
	return nil, fmt.Errorf("no key at %s after three tries", path)
}
