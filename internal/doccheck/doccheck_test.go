// Package doccheck checks that the reference docs keep up with the code:
// every metric the binaries export is in exactly one README table, and
// every key of the example configurations is documented.
package doccheck

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// root is the repository, two folders up.
const root = "../.."

// readmes are the reference pages a metric or key may be documented in.
var readmes = []string{"edge/README.md", "edge/certs/README.md", "dnsd/README.md", "leader/README.md", "docs/consul.md", "docs/operating.md"}

// metricName finds metric names in the code: a Name field or a NewDesc.
var metricName = regexp.MustCompile(`(?:Name:\s+|NewDesc\()"((?:edge|dnsd|leader)_[a-z0-9_]+)"`)

// namespaced finds names the router builds for each binary.
var namespaced = regexp.MustCompile(`namespace\s*\+\s*"(_[a-z0-9_]+)"`)

func exported(t *testing.T) []string {
	t.Helper()
	var names []string
	for _, dir := range []string{"edge", "dnsd", "leader", "router", "internal"} {
		err := filepath.WalkDir(filepath.Join(root, dir), func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			src, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, m := range metricName.FindAllSubmatch(src, -1) {
				names = append(names, string(m[1]))
			}
			for _, m := range namespaced.FindAllSubmatch(src, -1) {
				for _, ns := range []string{"edge", "dnsd", "leader"} {
					names = append(names, ns+string(m[1]))
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// tableRows returns the table rows of every reference page, by page.
func tableRows(t *testing.T) map[string][]string {
	t.Helper()
	rows := map[string][]string{}
	for _, p := range readmes {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			if os.IsNotExist(err) {
				continue
			}
			t.Fatal(err)
		}
		for _, line := range bytes.Split(b, []byte("\n")) {
			if bytes.HasPrefix(bytes.TrimSpace(line), []byte("|")) {
				rows[p] = append(rows[p], string(line))
			}
		}
	}
	return rows
}

// mentions reports whether row names name in backticks, alone or as one of
// the names a row lists with a shared prefix (`edge_x_total`, `_y_total`).
func mentions(row, name string) bool {
	if strings.Contains(row, "`"+name+"`") || strings.Contains(row, "`"+name+"{") {
		return true
	}
	return false
}

func TestEveryMetricIsDocumentedOnce(t *testing.T) {
	rows := tableRows(t)
	for _, name := range exported(t) {
		var where []string
		for page, rs := range rows {
			for _, r := range rs {
				if mentions(r, name) {
					where = append(where, page)
					break
				}
			}
		}
		switch {
		case len(where) == 0:
			t.Errorf("metric %s is in no reference table", name)
		case len(where) > 1:
			sort.Strings(where)
			t.Errorf("metric %s is in the tables of %v; one place is enough", name, where)
		}
	}
}

// keys flattens a YAML document into its dotted key paths (lists of
// objects contribute their items' keys under the list's key).
func keys(prefix string, n *yaml.Node, out *[]string) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			keys(prefix, c, out)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i].Value
			if prefix != "" {
				k = prefix + "." + k
			}
			*out = append(*out, k)
			keys(k, n.Content[i+1], out)
		}
	case yaml.SequenceNode:
		for _, c := range n.Content {
			keys(prefix, c, out)
		}
	}
}

func TestEveryConfigurationKeyIsDocumented(t *testing.T) {
	pages := map[string]string{"edge.yaml": "edge/README.md", "dnsd.yaml": "dnsd/README.md", "leader.yaml": "leader/README.md"}
	for file, page := range pages {
		raw, err := os.ReadFile(filepath.Join(root, "configs", file))
		if err != nil {
			t.Fatal(err)
		}
		var doc yaml.Node
		if err := yaml.Unmarshal(raw, &doc); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		var all []string
		keys("", &doc, &all)
		text := readAll(t, page, "edge/certs/README.md", "docs/operating.md")
		for _, k := range all {
			if !documented(text, k) {
				t.Errorf("%s: key %s is not documented in %s", file, k, page)
			}
		}
	}
}

func readAll(t *testing.T, pages ...string) string {
	var b strings.Builder
	for _, p := range pages {
		raw, err := os.ReadFile(filepath.Join(root, p))
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		b.Write(raw)
	}
	return b.String()
}

// documented reports whether text names key in backticks, by its whole
// path or, in a row that lists siblings (`a.b.c`, `.d`), by its last part.
func documented(text, key string) bool {
	if strings.Contains(text, "`"+key+"`") || strings.Contains(text, "`"+key+".") || strings.Contains(text, "`"+key+"[") {
		return true
	}
	i := strings.LastIndexByte(key, '.')
	if i < 0 {
		return false
	}
	parent, last := key[:i], key[i+1:]
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "|") {
			continue
		}
		// `timeouts.client_header` / `client_body`, `tsig.name`, `.secret`
		sibling := strings.Contains(line, "`"+parent+".") &&
			(strings.Contains(line, "`."+last+"`") || strings.Contains(line, "`"+last+"`"))
		// `mx` | `[{priority, host}]`: a list whose items' keys are named
		item := strings.Contains(line, "`"+parent+"`") && regexp.MustCompile(`\b`+regexp.QuoteMeta(last)+`\b`).MatchString(line)
		if sibling || item {
			return true
		}
	}
	return false
}
