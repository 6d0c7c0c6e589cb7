// Package prometheus holds podedge's alert rules; its test checks them
// with promtool (Debian's prometheus package).
package prometheus

import (
	"os/exec"
	"testing"
)

func promtool(t *testing.T, args ...string) {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool is not installed (apt-get install prometheus)")
	}
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %v: %v\n%s", args, err, out)
	}
}

func TestRulesPassPromtoolCheck(t *testing.T) {
	promtool(t, "check", "rules", "podedge-rules.yaml")
}

// The alerts fire on the series podedge-rules.test.yaml feeds them, and
// only then.
func TestRulesPassTheirUnitTests(t *testing.T) {
	promtool(t, "test", "rules", "podedge-rules.test.yaml")
}
