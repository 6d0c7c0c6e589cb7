// Package configs holds the templates `make bench` renders into a run's
// temporary folder: the configurations of nginx, HAProxy, Knot, NSD, the
// edge, dnsd and the leader, the zone file Knot and NSD serve, the dnsperf query mix and
// the wrk script. bench/README.md explains each choice.
package configs

import "embed"

// FS holds every template (*.tmpl, Go text/template syntax) and report.lua.
// It is read-only.
//
//go:embed *.tmpl report.lua
var FS embed.FS
