package doccheck

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// notYet are pages the docs link to that are being written elsewhere; a
// link to one of them may dangle until it lands. Remove an entry once the
// page exists.
var notYet = map[string]bool{}

// mdLink finds inline Markdown links and images: [text](target) with the
// target up to a space or the closing parenthesis.
var mdLink = regexp.MustCompile(`!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)

// fence finds fenced code blocks, whose brackets are not links.
var fence = regexp.MustCompile("(?ms)^\\s*```.*?^\\s*```")

// inlineCode finds code spans, whose brackets are not links either.
var inlineCode = regexp.MustCompile("`[^`\n]*`")

// TestRelativeLinksResolve checks that every relative link of every
// Markdown file in the repository names a file or folder that exists, and
// that a #fragment names a heading of the page it points to.
func TestRelativeLinksResolve(t *testing.T) {
	var pages []string
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != root && strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(path, ".md") {
			pages = append(pages, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(pages) == 0 {
		t.Fatal("no Markdown files found")
	}
	for _, page := range pages {
		raw, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		text := inlineCode.ReplaceAllString(fence.ReplaceAllString(string(raw), ""), "")
		rel, _ := filepath.Rel(root, page)
		for _, m := range mdLink.FindAllStringSubmatch(text, -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			file, frag, _ := strings.Cut(target, "#")
			dest := page
			if file != "" {
				dest = filepath.Join(filepath.Dir(page), filepath.FromSlash(file))
			}
			destRel, _ := filepath.Rel(root, dest)
			destRel = filepath.ToSlash(destRel)
			st, err := os.Stat(dest)
			if err != nil {
				if os.IsNotExist(err) && notYet[destRel] {
					continue
				}
				t.Errorf("%s: link %s: %s does not exist", rel, target, destRel)
				continue
			}
			if frag == "" || st.IsDir() || !strings.HasSuffix(dest, ".md") {
				continue
			}
			if !hasAnchor(t, dest, frag) {
				t.Errorf("%s: link %s: %s has no heading #%s", rel, target, destRel, frag)
			}
		}
	}
}

// heading finds Markdown headings outside code blocks.
var heading = regexp.MustCompile(`(?m)^#{1,6}\s+(.+?)\s*#*\s*$`)

// hasAnchor reports whether the page at path has a heading whose
// GitHub-style anchor is frag.
func hasAnchor(t *testing.T, path, frag string) bool {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, m := range heading.FindAllStringSubmatch(fence.ReplaceAllString(string(raw), ""), -1) {
		a := anchor(m[1])
		if n := seen[a]; n > 0 {
			seen[a] = n + 1
			a += "-" + strconv.Itoa(n)
		} else {
			seen[a] = 1
		}
		if a == frag {
			return true
		}
	}
	return false
}

// anchor is GitHub's anchor of a heading: lower case, punctuation other
// than - and _ dropped, spaces as -.
func anchor(h string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(h) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r > 127 && isLetter(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

func isLetter(r rune) bool { return unicode.IsLetter(r) || unicode.IsDigit(r) }
