package harness

import (
	"fmt"
	"os"
	"strings"
)

// The markers around the generated results in bench/README.md.
const (
	readmeBegin = "<!-- bench:results:begin -->"
	readmeEnd   = "<!-- bench:results:end -->"
)

// UpdateReadme replaces what lies between the results markers of the
// README at path with markdown.
func UpdateReadme(path, markdown string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	text := string(raw)
	before, rest, ok := strings.Cut(text, readmeBegin)
	if !ok {
		return fmt.Errorf("%s has no %s marker", path, readmeBegin)
	}
	_, after, ok := strings.Cut(rest, readmeEnd)
	if !ok {
		return fmt.Errorf("%s has no %s marker", path, readmeEnd)
	}
	text = before + readmeBegin + "\n" + markdown + readmeEnd + after
	return os.WriteFile(path, []byte(text), 0o644)
}
