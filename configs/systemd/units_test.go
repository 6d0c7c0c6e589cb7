// Package systemd holds the systemd units of podedge's binaries; its test
// checks them with systemd-analyze verify.
package systemd

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var units = []string{"podedge-edge.service", "podedge-dnsd.service", "podedge-leader.service"}

// Every unit has what docs/operating.md promises of it.
func TestUnitsSayWhatTheDocsPromise(t *testing.T) {
	want := []string{
		"Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure", "NotifyAccess=all",
		"NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "DynamicUser=yes",
	}
	for _, u := range units {
		raw, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(raw), "\n")
		has := func(l string) bool {
			for _, x := range lines {
				if strings.TrimSpace(x) == l {
					return true
				}
			}
			return false
		}
		for _, l := range want {
			if !has(l) {
				t.Errorf("%s lacks %s", u, l)
			}
		}
		// edge binds 80/443 and dnsd 53; the leader nothing below 1024.
		needsCap := u != "podedge-leader.service"
		if got := has("AmbientCapabilities=CAP_NET_BIND_SERVICE"); got != needsCap {
			t.Errorf("%s: AmbientCapabilities=CAP_NET_BIND_SERVICE present %v, want %v", u, got, needsCap)
		}
	}
}

// systemd-analyze verify finds nothing to say: no unknown key, no value it
// would ignore. It wants ExecStart to exist, so the units are checked with
// the test's own executable in place of the binaries.
func TestSystemdAnalyzeVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var paths []string
	for _, u := range units {
		raw, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		for _, bin := range []string{"edge", "dnsd", "leader"} {
			raw = bytes.ReplaceAll(raw, []byte("/usr/local/bin/"+bin+" "), []byte(self+" "))
		}
		p := filepath.Join(dir, u)
		if err := os.WriteFile(p, raw, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	// The upgrade template, as one of its instances.
	raw, err := os.ReadFile("podedge-upgrade@.service")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "podedge-upgrade@edge.service")
	if err := os.WriteFile(p, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	paths = append(paths, p)
	out, err := exec.Command(analyze, append([]string{"verify"}, paths...)...).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
