package harness

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"time"
)

// tlsFiles is the one certificate every HTTPS system of a run serves, in
// the run's folder: the certificate, its key, and both in one file (what
// HAProxy's crt takes). pool trusts it, for the probes.
type tlsFiles struct {
	Cert, Key, Bundle string
	pool              *x509.CertPool
}

// certNames are the names of the bench's certificate: the tenant's host
// and the zone's wildcard, as the zone's certificate would have them.
func certNames() []string { return []string{host, "*." + zoneName()} }

// writeCertificate makes a self-signed ECDSA P-256 certificate for
// certNames, valid from an hour ago for a week, and writes it to the run's
// folder.
func (h *harness) writeCertificate() (*tlsFiles, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certificate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: host},
		DNSNames:     certNames(),
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	f := &tlsFiles{Cert: h.path("tls-cert.pem"), Key: h.path("tls-key.pem"), Bundle: h.path("tls-bundle.pem"), pool: x509.NewCertPool()}
	f.pool.AddCert(leaf)
	for path, data := range map[string][]byte{f.Cert: certPEM, f.Key: keyPEM, f.Bundle: append(append([]byte{}, certPEM...), keyPEM...)} {
		if err := writeFile(path, data); err != nil {
			return nil, err
		}
	}
	return f, nil
}
