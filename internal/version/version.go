// Package version reports what build a binary is.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// version is set at link time by the Makefile (-X); "dev" otherwise.
var version = "dev"

// String is "<version> (<vcs revision>, <go version>)", or without the
// revision when the build has none (go build -buildvcs=false, a build out
// of a tarball): the Makefile's version then names the build alone.
func String() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return fmt.Sprintf("%s (%s, %s)", version, s.Value[:12], runtime.Version())
			}
		}
	}
	return fmt.Sprintf("%s (%s)", version, runtime.Version())
}
