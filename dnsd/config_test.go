package dnsd

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/podedge/podedge/internal/config"
)

func TestDefaultConfig(t *testing.T) {
	cfg := DefaultConfig()
	d, err := cfg.zoneData()
	if err != nil {
		t.Fatal(err)
	}
	if d.zone != "example.test." || d.answerCap != 13 || d.maxUDP != 1232 || d.podTTL != 30 || d.minimum != 30 {
		t.Errorf("defaults: %+v", d)
	}
	if d.mname != "ns1.example.test." || d.rname != "hostmaster.example.test." {
		t.Errorf("SOA names %q %q", d.mname, d.rname)
	}
	if len(d.ns) != 1 || d.ns[0].name != "ns1.example.test." || !d.ns[0].inZone {
		t.Errorf("default NS %+v", d.ns)
	}
}

// TestExampleConfig loads configs/dnsd.yaml, which must be valid and
// complete: every key of Config appears in it.
func TestExampleConfig(t *testing.T) {
	cfg := DefaultConfig()
	if err := config.Load("../configs/dnsd.yaml", &cfg); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(cfg.MX) != 2 || cfg.Listen != "127.0.0.1:5353" {
		t.Errorf("example config read as %+v", cfg)
	}
	var file map[string]any
	if err := config.Load("../configs/dnsd.yaml", &file); err != nil {
		t.Fatal(err)
	}
	for _, key := range keys("", reflect.TypeOf(Config{})) {
		if !hasKey(file, strings.Split(key, ".")) {
			t.Errorf("configs/dnsd.yaml does not show %s", key)
		}
	}
}

// keys lists the YAML keys of struct type typ, nested ones dotted; slices
// of structs are not descended into.
func keys(prefix string, typ reflect.Type) []string {
	var out []string
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		name := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if name == "" || name == "-" {
			continue
		}
		if f.Type.Kind() == reflect.Struct {
			out = append(out, keys(prefix+name+".", f.Type)...)
			continue
		}
		out = append(out, prefix+name)
	}
	return out
}

func hasKey(m map[string]any, path []string) bool {
	v, ok := m[path[0]]
	if !ok || len(path) == 1 {
		return ok
	}
	sub, ok := v.(map[string]any)
	return ok && hasKey(sub, path[1:])
}

// TestConfigErrors checks that each bad value is refused with one line
// that names its key.
func TestConfigErrors(t *testing.T) {
	cases := []struct {
		yaml, key string
	}{
		{"listne: x", `unknown key "listne"`},
		{"zone: a..b", "zone:"},
		{"zone: .", "zone:"},
		{"zone: exa_mple.test", "zone:"},
		{"listen: 53", "listen:"},
		{"admin: nowhere", "admin:"},
		{"udp_sockets: -1", "udp_sockets:"},
		{"udp_read_buffer: -5", "udp_read_buffer:"},
		{"max_udp_size: 100", "max_udp_size:"},
		{"answer_cap: 14", "answer_cap:"},
		{"answer_cap: 0", "answer_cap:"},
		{"nsid: " + strings.Repeat("x", 129), "nsid:"},
		{"ttl: {pod: 1500ms}", "ttl.pod:"},
		{"ttl: {tenant: -1s}", "ttl.tenant:"},
		{"ttl: {pod: 30}", "line 1"},
		{"soa: {minimum: 600000h}", "soa.minimum:"},
		{"soa: {rname: 'a b'}", "soa.rname:"},
		{"ns: [{name: ns1}]", "ns[0].addresses:"},
		{"ns: [{name: ns1.other.example., addresses: [192.0.2.1]}]", "ns[0].addresses:"},
		{"ns: [{name: ns1, addresses: [300.1.1.1]}]", "ns[0].addresses[0]:"},
		{"ns: [{name: ns1, addresses: [192.0.2.1]}, {name: NS1.example.test., addresses: [192.0.2.2]}]", "ns[1].name:"},
		{"ns: [{name: '@', addresses: [192.0.2.1]}]", "ns[0].name:"},
		{"ns: [{name: x.pods, addresses: [192.0.2.1]}]", "ns[0].name:"},
		{"mx: [{priority: 70000, host: mx.example.net.}]", "mx[0].priority:"},
		{"mx: [{priority: 10, host: ''}]", "mx[0].host:"},
		{"tcp: {idle_timeout: 0s}", "tcp.idle_timeout:"},
		{"tcp: {max_connections: 0}", "tcp.max_connections:"},
		{"rrl: {rate_limit: -1}", "rrl.rate_limit:"},
		{"rrl: {rate_limit: 300000}", "rrl.rate_limit:"},
		{"rrl: {slip: -1}", "rrl.slip:"},
		{"rrl: {table_size: 0}", "rrl.table_size:"},
		{"rrl: {whitelist: [192.0.2.0/33]}", "rrl.whitelist[0]:"},
		{"cookies: {secret: abcd}", "cookies.secret:"},
		{"cookies: {secret: 000102030405060708090a0b0c0d0e0g}", "cookies.secret:"},
		{"consul: {address: ''}", "consul.address:"},
		{"log: {level: loud}", "log.level:"},
	}
	for _, c := range cases {
		t.Run(c.yaml, func(t *testing.T) {
			cfg := DefaultConfig()
			err := config.Decode("dnsd.yaml", []byte(c.yaml), &cfg)
			if err == nil {
				err = cfg.Validate()
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if msg := err.Error(); !strings.Contains(msg, c.key) || strings.Contains(msg, "\n") {
				t.Errorf("error %q: want one line naming %q", msg, c.key)
			}
		})
	}
}

// TestConfigNames checks the zone-file convention of names.
func TestConfigNames(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Zone = "Platform.Example"
	cfg.NS = []NameServer{{Name: "ns1", Addresses: []string{"192.0.2.1"}}, {Name: "ns.provider.example.net."}}
	cfg.MX = []MailExchanger{{Priority: 5, Host: "mx"}, {Priority: 10, Host: "MX.Mail.Example.NET."}}
	d, err := cfg.zoneData()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ns := range d.ns {
		got = append(got, ns.name)
	}
	for _, mx := range d.mx {
		got = append(got, mx.host)
	}
	want := []string{"ns1.platform.example.", "ns.provider.example.net.", "mx.platform.example.", "mx.mail.example.net."}
	if !slices.Equal(got, want) || d.zone != "platform.example." || d.rname != "hostmaster.platform.example." {
		t.Errorf("names %v zone %q rname %q, want %v", got, d.zone, d.rname, want)
	}
}
