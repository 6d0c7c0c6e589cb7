package dnsd

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// signedZoneFile writes every RRset dnsd answers signed (answers and the
// NSECs of existing names) as a zone file, with their RRSIGs.
func signedZoneFile(t *testing.T, h *Handler, path string) {
	t.Helper()
	seen := map[string]bool{}
	var b strings.Builder
	add := func(rrs []dns.RR) {
		for _, rr := range rrs {
			if rr.Header().Rrtype == dns.TypeOPT {
				continue
			}
			rr.Header().Name = strings.ToLower(rr.Header().Name)
			if s := rr.String(); !seen[s] {
				seen[s] = true
				b.WriteString(s + "\n")
			}
		}
	}
	for _, q := range []struct {
		name  string
		types []uint16
	}{
		{"example.test.", []uint16{dns.TypeSOA, dns.TypeNS, dns.TypeDNSKEY, dns.TypeCDS, dns.TypeCDNSKEY, dns.TypeNSEC}},
		{"ns1.example.test.", []uint16{dns.TypeA, dns.TypeNSEC}},
		{"pods.example.test.", []uint16{dns.TypeNSEC}},
		{"pod-1.pods.example.test.", []uint16{dns.TypeA, dns.TypeMX, dns.TypeNSEC}},
		{"acme.example.test.", []uint16{dns.TypeCNAME}},
	} {
		for _, qt := range q.types {
			add(doQuery(t, h, q.name, qt, false).Answer)
		}
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestLdnsVerifyZone checks dnsd's signed records with ldns-verify-zone
// (Debian package ldnsutils): every signature verifies from the DNSKEY
// that the parent's DS names. Its only complaints must be about the NSEC
// chain, which compact denial does not have (each name's NSEC covers only
// itself, RFC 9824); a signature changed by one bit must add one.
func TestLdnsVerifyZone(t *testing.T) {
	bin, err := exec.LookPath("ldns-verify-zone")
	if err != nil {
		t.Fatalf("ldns-verify-zone is needed (Debian package ldnsutils): %v", err)
	}
	var now atomic.Int64
	now.Store(time.Now().Unix())
	h, _ := signedHandler(t, dns.ECDSAP256SHA256, &now)
	dir := t.TempDir()
	zone := filepath.Join(dir, "example.test.zone")
	signedZoneFile(t, h, zone)
	ds := filepath.Join(dir, "ds")
	os.WriteFile(ds, []byte(h.DS()+"\n"), 0o600)
	verify := func(path string) (others []string) {
		out, _ := exec.Command(bin, "-k", ds, "-V", "3", path).CombinedOutput()
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "Error:") && !strings.Contains(line, "points to the wrong next owner name") && !strings.Contains(line, "there is no NSEC(3) for") {
				others = append(others, line)
			}
		}
		if !strings.Contains(string(out), "Error:") && !strings.Contains(string(out), "All OK") {
			t.Fatalf("ldns-verify-zone said neither OK nor errors:\n%s", out)
		}
		return others
	}
	if errs := verify(zone); len(errs) > 0 {
		t.Errorf("ldns-verify-zone found errors beyond the NSEC chain:\n%s", strings.Join(errs, "\n"))
	}
	// The control: one signature altered.
	b, _ := os.ReadFile(zone)
	lines := strings.Split(string(b), "\n")
	for i, l := range lines {
		if strings.Contains(l, "\tRRSIG\tA ") {
			f := strings.Fields(l)
			sig := []byte(f[len(f)-1])
			if sig[10] == 'A' {
				sig[10] = 'B'
			} else {
				sig[10] = 'A'
			}
			f[len(f)-1] = string(sig)
			lines[i] = strings.Join(f, " ")
			break
		}
	}
	bad := filepath.Join(dir, "bad.zone")
	os.WriteFile(bad, []byte(strings.Join(lines, "\n")), 0o600)
	if errs := verify(bad); len(errs) == 0 {
		t.Error("ldns-verify-zone did not notice an altered signature")
	}
}
