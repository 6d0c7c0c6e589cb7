// Package version reports what build a binary is.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// version is set at link time by the Makefile (-X); "dev" otherwise.
var version = "dev"

// String is "<version> (<vcs revision>, <go version>)".
func String() string {
	rev := "unknown revision"
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				rev = s.Value[:12]
			}
		}
	}
	return fmt.Sprintf("%s (%s, %s)", version, rev, runtime.Version())
}
