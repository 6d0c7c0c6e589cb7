package harness

import (
	"fmt"
	"os"
)

func mkdirAll(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("make %s: %w", dir, err)
	}
	return nil
}

func writeFile(path string, data []byte) error {
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// rotated is the order the systems run in during a round: each round starts
// one system later (A B C, then B C A, then C A B), so that no system always
// runs first or last, where whatever the previous run left behind (dirty
// pages of access logs, a busy Consul, a warm or cold cache) would always
// fall on it.
func rotated[T any](systems []T, round int) []T {
	if len(systems) == 0 {
		return systems
	}
	k := (round - 1) % len(systems)
	return append(append(make([]T, 0, len(systems)), systems[k:]...), systems[:k]...)
}
