#!/usr/bin/env bash
# Build tests/ferretdb/bin/ferretdb-embedded: FerretDB (pinned in go.mod) with
# the SQLite backend, wrapped by main.go. Needs only a Go toolchain and the Go
# module proxy. Idempotent: does nothing when the binary is newer than its
# inputs (main.go, go.mod, go.sum, this script). FORCE=1 rebuilds anyway.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/bin/ferretdb-embedded"
inputs=("$here/main.go" "$here/go.mod" "$here/go.sum" "$here/build.sh")

if [[ "${FORCE:-0}" != 1 && -x "$out" ]]; then
    fresh=1
    for f in "${inputs[@]}"; do
        if [[ ! "$out" -nt "$f" ]]; then
            fresh=0
            break
        fi
    done
    if [[ $fresh == 1 ]]; then
        echo "ferretdb-embedded is up to date: $out"
        exit 0
    fi
fi

go_bin="$(command -v go || true)"
if [[ -z "$go_bin" && -x /usr/local/go/bin/go ]]; then
    go_bin=/usr/local/go/bin/go
fi
if [[ -z "$go_bin" ]]; then
    echo "build.sh: no Go toolchain found (need go >= 1.24 on PATH or at /usr/local/go/bin/go)" >&2
    exit 1
fi

mkdir -p "$here/bin"
tmp="$(mktemp "$here/bin/.ferretdb-embedded.XXXXXX")"
trap 'rm -f "$tmp"' EXIT

start_ns=$(date +%s%N)
echo "building ferretdb-embedded with $("$go_bin" version) ..."
# Pure Go (modernc SQLite): no C compiler needed, static binary.
# ferretdb_no_postgresql drops the unused PostgreSQL backend (smaller binary).
(
    cd "$here"
    CGO_ENABLED=0 "$go_bin" build \
        -mod=readonly \
        -buildvcs=false \
        -trimpath \
        -tags ferretdb_no_postgresql \
        -ldflags='-s -w' \
        -o "$tmp" \
        .
)
chmod 0755 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT

elapsed_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
printf 'built %s in %d.%03ds\n' "$out" $((elapsed_ms / 1000)) $((elapsed_ms % 1000))
