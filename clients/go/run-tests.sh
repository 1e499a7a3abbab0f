#!/usr/bin/env bash
# Runs the Go client's checks: gofmt, go vet, and go test (golden vectors, behaviour
# against a fake daemon, and the real mechad, which the tests start from
# $MECHA_BIN_DIR, else ${CARGO_TARGET_DIR:-/work/target}/debug, building it with cargo
# if a binary is missing). Installs Debian's Go toolchain first if `go` is missing.
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v go >/dev/null 2>&1; then
    echo "go not found: installing golang-go with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq golang-go >/dev/null
fi
go version

# No network: the module has no dependencies, and nothing may be fetched.
export GOPROXY=off GOTOOLCHAIN=local
# go needs a build cache; without $HOME (some CI shells) it has no default.
if [ -z "${GOCACHE:-}" ] && [ -z "${HOME:-}" ] && [ -z "${XDG_CACHE_HOME:-}" ]; then
    export GOCACHE="${TMPDIR:-/tmp}/mecha-go-cache"
fi

unformatted="$(gofmt -l .)"
if [ -n "$unformatted" ]; then
    echo "gofmt would change:" >&2
    echo "$unformatted" >&2
    exit 1
fi
go vet ./...
# A long timeout: the first run may have to build the Rust workspace.
go test -count=1 -timeout 45m ./... "$@"
