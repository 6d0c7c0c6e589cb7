package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/podedge/podedge/edge"
	"github.com/podedge/podedge/edge/certs"
)

// tlsBase is a valid configuration file to add acme and tls keys to.
const tlsBase = "pod: pod-1\npublic_ip: 192.0.2.1\nhttp: 127.0.0.1:8080\n"

func tlsConfigFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "edge.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTLSDefaultsAgree: the edge's defaults for the acme and tls sections
// are edge/certs' own, so configs/edge.yaml and the package document the
// same values.
func TestTLSDefaultsAgree(t *testing.T) {
	cfg := edge.DefaultConfig()
	cfg.HTTPS = ":443"
	got := certsConfig(cfg)
	var want certs.Config
	if err := want.Validate(); err != nil {
		t.Fatal(err)
	}
	want.Prefix, want.Pod, want.Holder, want.Redirect, want.RedirectPort = got.Prefix, got.Pod, got.Holder, true, 443
	want.Logger, want.RenewCheck = nil, 0
	if !reflect.DeepEqual(got, want) {
		t.Errorf("edge defaults %+v\ncerts defaults %+v", got, want)
	}
}

func TestBadTLSConfigNamesTheKey(t *testing.T) {
	for _, tc := range []struct {
		file string
		args []string
		want string
	}{
		{tlsBase + "acme:\n  challenges: [dns-01]\n", nil, `acme.challenges: "dns-01" is not tls-alpn-01 or http-01`},
		{tlsBase + "acme:\n  email: nobody\n", nil, `acme.email: "nobody" is not an email address`},
		{tlsBase, []string{"-acme-email", "no body"}, `-acme-email: "no body" is not an email address`},
		{tlsBase + "tls:\n  ticket_keys: 40\n", nil, "tls.ticket_keys: 40 is outside 1 to 16"},
		{tlsBase + "https: 127.0.0.1:8443\ntls:\n  handshake_timeout: 20s\n", nil, "tls.handshake_timeout: 20s must be shorter than timeouts.client_header (10s)"},
		{tlsBase + "tls:\n  redirect_port: -1\n", nil, "tls.redirect_port: -1 is not a port"},
		{tlsBase + "acme:\n  dns01_nameservers: [dnsd]\n", nil, `acme.dns01_nameservers[0]: "dnsd" is not host:port`},
		{tlsBase + "acme:\n  dns01_timeout: -1s\n", nil, "acme.dns01_timeout: -1s is negative"},
		{tlsBase + "tls:\n  certificates: [{cert: /etc/a.pem}]\n", nil, "tls.certificates[0].key: must name the private key's PEM file"},
	} {
		args := append([]string{"-config", tlsConfigFile(t, tc.file)}, tc.args...)
		_, err := parse(args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q %v: got %v, want %q", tc.file, tc.args, err, tc.want)
		}
	}
	cfg, err := parse([]string{"-config", tlsConfigFile(t, tlsBase+"https: 127.0.0.1:8443\ntls:\n  certificates: [{cert: /etc/a.pem, key: /etc/a.key}]\n"),
		"-acme-email", "ops@example.net", "-zone", "Platform.Example."})
	if err != nil {
		t.Fatal(err)
	}
	cc := certsConfig(cfg)
	if cc.Email != "ops@example.net" || cc.RedirectPort != 8443 || !cc.Redirect || len(cc.Certificates) != 1 || cc.Certificates[0].Key != "/etc/a.key" {
		t.Errorf("certificates config %+v", cc)
	}
	if err := cc.Validate(); err != nil || cc.Zone != "platform.example." {
		t.Errorf("zone %q (%v), want platform.example.", cc.Zone, err)
	}
}
