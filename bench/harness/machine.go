package harness

import (
	"bufio"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
)

// Machine describes where the bench ran.
type Machine struct {
	CPUs     int
	Model    string
	MemoryGB float64
	Kernel   string
	OS       string
}

func readMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU()}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.Model = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if raw, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(raw), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
				m.MemoryGB = kb / (1 << 20)
			}
		}
	}
	if raw, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(raw))
	}
	if raw, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, line := range strings.Split(string(raw), "\n") {
			if v, ok := strings.CutPrefix(line, "PRETTY_NAME="); ok {
				m.OS = strings.Trim(v, `"`)
			}
		}
	}
	return m
}

// Version is a program and its version, as it reports it.
type Version struct{ Name, Version string }

// versionRE picks the first dotted version number out of a program's
// banner.
var versionRE = regexp.MustCompile(`\d+\.\d+(\.\d+)?`)

// readVersions asks every program of the bench for its version.
func readVersions(opts Options) []Version {
	run := func(bin string, args ...string) string {
		out, _ := exec.Command(bin, args...).CombinedOutput()
		return string(out)
	}
	tool := func(name string, args ...string) string {
		p, err := LookTool(name)
		if err != nil {
			return ""
		}
		return run(p, args...)
	}
	pick := func(s string) string {
		if v := versionRE.FindString(s); v != "" {
			return v
		}
		return "?"
	}
	var out []Version
	add := func(name, banner string) {
		if banner != "" {
			out = append(out, Version{name, pick(banner)})
		}
	}
	// "edge 440e273 (...)": the second word is the version.
	if f := strings.Fields(run(opts.Bin+"/edge", "-version")); len(f) > 1 {
		out = append(out, Version{"podedge", f[1]})
	}
	out = append(out, Version{"Go", strings.TrimPrefix(runtime.Version(), "go")})
	add("Consul", run(opts.Consul, "version"))
	add("nginx", tool("nginx", "-v"))
	add("HAProxy", tool("haproxy", "-v"))
	add("Knot", tool("knotd", "-V"))
	add("NSD", tool("nsd", "-v"))
	add("wrk", tool("wrk", "-v"))
	if banner := tool("dnsperf", "-h"); banner != "" {
		_, v, _ := strings.Cut(banner, "Version ")
		add("dnsperf", v)
	}
	return out
}
