package edge

import (
	"reflect"
	"testing"

	"github.com/podedge/podedge/internal/config"
)

// configs/edge.yaml runs as it is, and writes every default out as the code
// has it.
func TestExampleConfig(t *testing.T) {
	cfg := DefaultConfig()
	if err := config.Load("../configs/edge.yaml", &cfg); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	var file Config
	if err := config.Load("../configs/edge.yaml", &file); err != nil {
		t.Fatal(err)
	}
	if len(file.TrustedProxies) == 0 {
		file.TrustedProxies = nil
	}
	want := DefaultConfig()
	want.Pod, want.HTTP, want.PublicIP = "pod-1", "127.0.0.1:8080", "192.0.2.10"
	if !reflect.DeepEqual(file, want) {
		t.Fatalf("configs/edge.yaml and DefaultConfig differ:\nfile: %+v\ncode: %+v", file, want)
	}
}

func TestAdvertisedAddress(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Pod, cfg.PublicIP = "pod-1", "192.0.2.10"
	for listener, want := range map[string]string{
		"[::]:80":      "192.0.2.10:80",
		"0.0.0.0:8080": "192.0.2.10:8080",
		":80":          "192.0.2.10:80",
		"10.1.2.3:80":  "10.1.2.3:80",
	} {
		if got := cfg.advertised(listener); got != want {
			t.Errorf("listener %s: advertised %s, want %s", listener, got, want)
		}
	}
	if id := cfg.serviceID("192.0.2.10:80"); id != "edge-pod-1-192-0-2-10-80" {
		t.Errorf("service id %q", id)
	}
	cfg.Register.Address = "edge1.internal:8080"
	if got := cfg.advertised(":80"); got != "edge1.internal:8080" {
		t.Errorf("register.address ignored: %s", got)
	}
}
