package harness

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// Tool is an outside program the bench runs, and the Debian package that
// has it.
type Tool struct {
	// Name is the program; Package the Debian package installing it.
	Name, Package string
	// Peer names the system it belongs to ("nginx", "knot", ...); empty
	// for a tool every run needs (wrk, h2load, dnsperf, taskset).
	Peer string
}

// Tools are the programs of `make bench`, in the order the README lists
// their packages.
func Tools() []Tool {
	return []Tool{
		{Name: "nginx", Package: "nginx-light", Peer: "nginx"},
		{Name: "haproxy", Package: "haproxy", Peer: "haproxy"},
		{Name: "wrk", Package: "wrk"},
		{Name: "h2load", Package: "nghttp2-client"},
		{Name: "knotd", Package: "knot", Peer: "knot"},
		{Name: "nsd", Package: "nsd", Peer: "nsd"},
		{Name: "dnsperf", Package: "dnsperf"},
		{Name: "taskset", Package: "util-linux"},
	}
}

// InstallCommand is the one command that installs every package the bench
// needs, as bench/README.md gives it.
const InstallCommand = "apt-get install -y nginx-light haproxy wrk nghttp2-client knot nsd dnsperf"

// LookTool returns the path of the program name, searching PATH and then
// the sbin folders Debian installs daemons into, which a user's PATH often
// lacks.
func LookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/local/sbin", "/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

// Missing returns the tools that are not installed.
func Missing() []Tool {
	var out []Tool
	for _, t := range Tools() {
		if _, err := LookTool(t.Name); err != nil {
			out = append(out, t)
		}
	}
	return out
}

// Ensure installs the missing tools with apt-get when running as root, and
// otherwise returns an error giving the command to run. Progress goes to
// out.
func Ensure(out io.Writer) error {
	missing := Missing()
	if len(missing) == 0 {
		return nil
	}
	var pkgs, names []string
	for _, t := range missing {
		names = append(names, t.Name)
		if !slices.Contains(pkgs, t.Package) {
			pkgs = append(pkgs, t.Package)
		}
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("missing %s: run `sudo %s`", strings.Join(names, ", "), InstallCommand)
	}
	fmt.Fprintf(out, "installing %s\n", strings.Join(pkgs, " "))
	run := func(args ...string) error {
		cmd := exec.Command("apt-get", args...)
		cmd.Stdout, cmd.Stderr = out, out
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		return cmd.Run()
	}
	if err := run(append([]string{"install", "-y"}, pkgs...)...); err != nil {
		// A fresh machine may have no package lists yet.
		if err := run("update"); err != nil {
			return fmt.Errorf("apt-get update: %w", err)
		}
		if err := run(append([]string{"install", "-y"}, pkgs...)...); err != nil {
			return fmt.Errorf("apt-get install %s: %w", strings.Join(pkgs, " "), err)
		}
	}
	if still := Missing(); len(still) > 0 {
		return fmt.Errorf("%s still missing after apt-get install", still[0].Name)
	}
	return nil
}
