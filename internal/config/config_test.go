package config

import (
	"strings"
	"testing"
	"time"
)

type sample struct {
	Listen  string        `yaml:"listen"`
	Timeout time.Duration `yaml:"timeout"`
	Consul  Consul        `yaml:"consul"`
}

func TestDecode(t *testing.T) {
	cfg := sample{Listen: "default", Consul: DefaultConsul()}
	if err := Decode("x.yaml", []byte("timeout: 3s\nconsul:\n  prefix: other/\n"), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "default" || cfg.Timeout != 3*time.Second || cfg.Consul.Prefix != "other/" || cfg.Consul.Address != "127.0.0.1:8500" {
		t.Fatalf("decoded %+v", cfg)
	}
	if err := Decode("empty.yaml", nil, &cfg); err != nil {
		t.Fatalf("empty file: %v", err)
	}
}

func TestDecodeErrorsAreOneLineAndNameTheKey(t *testing.T) {
	for _, c := range []struct{ yaml, want string }{
		{"listne: x\n", `config x.yaml: line 1: unknown key "listne"`},
		{"consul:\n  adress: x\n", `line 2: unknown key "adress"`},
		{"timeout: soon\n", `line 1: timeout: invalid value "soon" (want time.Duration)`},
		{"consul:\n  consistent: maybe\n", `line 2: consul.consistent: invalid value "maybe" (want bool)`},
		{"listen: [\n", "x.yaml"},
	} {
		var cfg sample
		err := Decode("x.yaml", []byte(c.yaml), &cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: error %q, want one line containing %q", c.yaml, err, c.want)
		}
	}
}

func TestLogAndConsulValidation(t *testing.T) {
	if _, err := (Log{Level: "loud"}).Logger(nil); err == nil || !strings.Contains(err.Error(), "log.level") {
		t.Fatalf("bad level: %v", err)
	}
	if _, err := (Log{Level: "info", Format: "xml"}).Logger(nil); err == nil || !strings.Contains(err.Error(), "log.format") {
		t.Fatalf("bad format: %v", err)
	}
	if err := (Consul{Address: "x", Prefix: "/abs"}).Validate(); err == nil || !strings.Contains(err.Error(), "consul.prefix") {
		t.Fatalf("bad prefix: %v", err)
	}
}
