# podedge — make targets. `make run` brings up a local platform, `make test`
# runs every test (integration tests included) with the race detector.

SHELL := /usr/bin/env bash
GO ?= go
BIN := $(CURDIR)/bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/podedge/podedge/internal/version.version=$(VERSION)
# The Consul agent the tests and `make run` use: `consul` on PATH, else a
# pinned release built once into ~/.cache/podedge (see scripts/consul.sh).
CONSUL_BIN = $(shell scripts/consul.sh)
CMDS := $(wildcard */cmd/*)

.PHONY: all build consul run test bench vet fmt clean

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ $(addprefix ./,$(CMDS))

consul:
	@scripts/consul.sh

# The whole platform on this machine, in the foreground; Ctrl-C stops it.
run: build
	@consul=$$(scripts/consul.sh) || exit 1; \
	$(GO) build -o $(BIN)/localpod ./internal/localpod/cmd/localpod && \
	exec $(BIN)/localpod -bin $(BIN) -consul "$$consul" -configs configs/local -logs $(BIN)/logs

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...

test: vet
	@consul=$$(scripts/consul.sh) || exit 1; \
	echo "using consul at $$consul"; \
	PATH="$$(dirname $$consul):$$PATH" $(GO) test -race -count=1 -timeout 20m ./...

# Side-by-side load tests against nginx, HAProxy, Knot and NSD (bench/README.md);
# about 20 minutes. Not part of `make test`. The report goes to
# bench/results/<YYYY-MM-DD-HHMM>.md and bench/RESULTS.md.
bench: build
	@consul=$$(scripts/consul.sh) || exit 1; \
	$(BIN)/bench -bin $(BIN) -consul-bin "$$consul" -results bench

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf $(BIN)
