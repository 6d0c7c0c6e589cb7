#!/usr/bin/env bash
# Prints the path of a real Consul agent binary, building a pinned release
# once into a cache outside the repository when none is on PATH.
#
# Consul's own go.mod replaces its submodules (api, sdk, ...) with local paths,
# so `go install github.com/hashicorp/consul@VERSION` is refused. We download
# the module source, drop those replaces and build it in a writable copy.
set -euo pipefail

version="${CONSUL_VERSION:-1.20.6}"
cache="${PODEDGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/podedge}"
bin="$cache/consul-$version/consul"

if [ -z "${PODEDGE_FORCE_CONSUL_BUILD:-}" ] && command -v consul >/dev/null 2>&1; then
	command -v consul
	exit 0
fi
if [ -x "$bin" ]; then
	echo "$bin"
	exit 0
fi

command -v go >/dev/null 2>&1 || { echo "consul.sh: go is not on PATH; install Go first" >&2; exit 1; }
echo "consul.sh: no consul on PATH: building Consul v$version into $bin," >&2
echo "consul.sh: once, from the Go module proxy; this takes 3 to 5 minutes" >&2
echo "consul.sh: downloading its source and dependencies" >&2
dir=$(go mod download -json "github.com/hashicorp/consul@v$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -n "$dir" ] && [ -d "$dir" ] || { echo "consul.sh: go mod download of consul v$version failed" >&2; exit 1; }

work=$(mktemp -d "$cache.build.XXXXXX" 2>/dev/null || { mkdir -p "$(dirname "$cache")"; mktemp -d "$cache.build.XXXXXX"; })
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
cp -R "$dir/." "$work/"
chmod -R u+w "$work"
cd "$work"
for m in api envoyextensions proto-public sdk troubleshoot; do
	go mod edit -dropreplace "github.com/hashicorp/consul/$m"
done
mkdir -p "$(dirname "$bin")"
echo "consul.sh: compiling" >&2
GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -o "$bin.tmp" . &
build=$!
# A line every 20 s, so that a first `make run` or `make test` is not
# silent for minutes.
( start=$SECONDS; while sleep 20; do echo "consul.sh: still compiling ($((SECONDS - start)) s)" >&2; done ) >/dev/null &
ticker=$!
status=0
wait "$build" || status=$?
kill "$ticker" 2>/dev/null || true
[ "$status" = 0 ] || { echo "consul.sh: building Consul failed" >&2; exit "$status"; }
mv "$bin.tmp" "$bin"
echo "consul.sh: built $bin" >&2
echo "$bin"
