package main

import (
	"context"
	"fmt"
	"net"
	"strconv"

	"github.com/podedge/podedge/edge"
	"github.com/podedge/podedge/edge/certs"
)

// certsConfig maps the edge's acme and tls sections onto the certificate
// manager's configuration (without its Consul client and logger).
func certsConfig(cfg edge.Config) certs.Config {
	port := cfg.TLS.RedirectPort
	if port == 0 {
		if _, p, err := net.SplitHostPort(cfg.HTTPS); err == nil {
			port, _ = strconv.Atoi(p)
		}
	}
	var files []certs.CertFile
	for _, f := range cfg.TLS.Certificates {
		files = append(files, certs.CertFile{Cert: f.Cert, Key: f.Key})
	}
	return certs.Config{
		Prefix:           cfg.Consul.Prefix,
		Pod:              cfg.Pod,
		Holder:           cfg.Pod + "/" + cfg.PublicIP,
		Zone:             cfg.Zone,
		Directory:        cfg.ACME.Directory,
		CAFile:           cfg.ACME.CA,
		Email:            cfg.ACME.Email,
		Challenges:       cfg.ACME.Challenges,
		RenewBefore:      cfg.ACME.RenewBefore,
		OrderTimeout:     cfg.ACME.OrderTimeout,
		BackoffMin:       cfg.ACME.BackoffMin,
		BackoffMax:       cfg.ACME.BackoffMax,
		DNS01Nameservers: cfg.ACME.DNS01Nameservers,
		DNS01Timeout:     cfg.ACME.DNS01Timeout,
		Certificates:     files,
		CertificateCheck: cfg.TLS.CertificateCheck,
		HandshakeTimeout: cfg.TLS.HandshakeTimeout,
		Redirect:         cfg.TLS.Redirect,
		RedirectPort:     port,
		TicketRotation:   cfg.TLS.TicketRotation,
		TicketKeys:       cfg.TLS.TicketKeys,
	}
}

// checkCertificates validates the acme and tls sections, which the edge
// package leaves to edge/certs.
func checkCertificates(cfg edge.Config) error {
	cc := certsConfig(cfg)
	if err := cc.Validate(); err != nil {
		return err
	}
	if cfg.HTTPS != "" && cc.HandshakeTimeout >= cfg.Timeouts.ClientHeader {
		return fmt.Errorf("tls.handshake_timeout: %s must be shorter than timeouts.client_header (%s), which bounds the whole handshake",
			cc.HandshakeTimeout, cfg.Timeouts.ClientHeader)
	}
	return nil
}

// newCertificates returns the certificate manager when the https listener
// is configured, and points opts at it: its TLS configuration, its
// plain-HTTP hook, and the Consul client they share. Without https it
// returns nil and leaves opts alone.
func newCertificates(cfg edge.Config, opts *edge.Options) (*certs.Manager, error) {
	if cfg.HTTPS == "" {
		return nil, nil
	}
	client, err := cfg.Consul.Client()
	if err != nil {
		return nil, err
	}
	cc := certsConfig(cfg)
	cc.Consul, cc.Logger = client, opts.Logger
	m, err := certs.New(cc)
	if err != nil {
		return nil, err
	}
	opts.Consul, opts.TLSConfig, opts.HTTPHook = client, m.TLSConfig(), m.HTTPHook
	return m, nil
}

// runCertificates makes m follow e's router and export its metrics on e's
// registry, and runs it; the returned function stops it and waits. A nil m
// (no https) does nothing.
func runCertificates(ctx context.Context, m *certs.Manager, e *edge.Edge) (func(), error) {
	if m == nil {
		return func() {}, nil
	}
	m.Follow(e.Router())
	if err := m.Register(e.Proxy().Metrics.Registry); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		_ = m.Run(ctx)
		close(done)
	}()
	return func() {
		cancel()
		<-done
	}, nil
}
