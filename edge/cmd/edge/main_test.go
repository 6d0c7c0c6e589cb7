package main

import (
	"bytes"
	"errors"
	"github.com/podedge/podedge/internal/config"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "edge.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const good = "pod: pod-1\npublic_ip: 192.0.2.1\nhttp: 127.0.0.1:8080\n"

func TestBadConfigNamesTheKey(t *testing.T) {
	cases := []struct {
		name string
		file string
		args []string
		want string
	}{
		{"unknown key", good + "listne: x\n", nil, `line 4: unknown key "listne"`},
		{"bad duration", good + "timeouts:\n  dial: soon\n", nil, `line 5: timeouts.dial: invalid value "soon"`},
		{"negative timeout", good + "timeouts:\n  dial: -1s\n", nil, "timeouts.dial: must be positive"},
		{"missing pod", "public_ip: 192.0.2.1\n", nil, "pod: required"},
		{"invalid pod", good, []string{"-pod", "Pod_1"}, "-pod: name \"Pod_1\" may hold only"},
		{"public ip not IPv4 (flag)", good, []string{"-public-ip", "2001:db8::1"}, `-public-ip: "2001:db8::1" is not an IPv4 address`},
		{"public ip not IPv4 (file)", "pod: pod-1\npublic_ip: nope\n", nil, `public_ip: "nope" is not an IPv4 address`},
		{"bad listener", good, []string{"-http", "nope"}, `-http: "nope" is not host:port`},
		{"bad admin", good + "admin: 127.0.0.1:99999\n", nil, `admin: "127.0.0.1:99999" has an invalid port`},
		{"bad policy", good + "policy: fastest\n", nil, `policy: unknown policy "fastest"`},
		{"bad trusted proxy", good + "trusted_proxies: [10.0.0.0/33]\n", nil, `trusted_proxies: "10.0.0.0/33" is not a CIDR`},
		{"bad passive health", good + "passive_health:\n  panic_threshold: 2\n", nil, "passive_health.panic_threshold"},
		{"bad acme directory", good, []string{"-acme-directory", "ftp://x"}, "-acme-directory:"},
		{"bad zone", good, []string{"-zone", "bad_zone"}, "-zone:"},
		{"unknown flag", good, []string{"-listen", "x"}, "flag provided but not defined: -listen"},
		{"stray argument", good, []string{"extra"}, `unexpected argument "extra"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"-config", writeFile(t, tc.file)}, tc.args...)
			_, err := parse(args)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
		})
	}
}

func TestFlagsOverrideTheFile(t *testing.T) {
	file := writeFile(t, good+"admin: 127.0.0.1:9999\ndrain_delay: 7s\n")
	cfg, err := parse([]string{"-config", file, "-pod", "pod-2", "-consul", "10.0.0.1:8500", "-https", ":8443", "-acme-ca", "/etc/ca.pem"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Pod != "pod-2" || cfg.Consul.Address != "10.0.0.1:8500" || cfg.HTTPS != ":8443" || cfg.ACME.CA != "/etc/ca.pem" {
		t.Errorf("flags not applied: %+v", cfg)
	}
	if cfg.HTTP != "127.0.0.1:8080" || cfg.Admin != "127.0.0.1:9999" || cfg.DrainDelay != 7*time.Second || cfg.PublicIP != "192.0.2.1" {
		t.Errorf("file values lost: %+v", cfg)
	}
	if _, err := parse([]string{"-version"}); !errors.Is(err, config.ErrVersion) {
		t.Errorf("-version: %v", err)
	}
}

// The real binary: a bad value exits 2 with one line on stderr.
func TestBinaryExitsTwoWithOneLine(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "edge")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	for _, args := range [][]string{
		{"-config", writeFile(t, good), "-public-ip", "::1"},
		{"-config", writeFile(t, good+"timeouts:\n  dial: x\n")},
		{"-bogus"},
	} {
		var stderr bytes.Buffer
		cmd := exec.Command(bin, args...)
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Fatalf("%v: %v, want exit status 2", args, err)
		}
		if s := stderr.String(); strings.Count(s, "\n") != 1 || !strings.HasPrefix(s, "edge: ") {
			t.Fatalf("%v: stderr %q, want one line", args, s)
		}
	}
}
