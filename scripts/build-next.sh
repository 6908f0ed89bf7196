#!/bin/bash
# Builds the "next version" of tandem that the rolling-upgrade tests
# install: this same tree with TANDEM_VERSION=0.2.0 and
# TANDEM_K2K_VERSION=3 (build-time settings read by the programs only, so
# only they are compiled again), stripped, into target/debug/next/. Then
# builds the programs again without the settings, so that target/debug
# holds this version. `make test` runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
NEXT_VERSION=${NEXT_VERSION:-0.2.0}
out=target/debug/next
TANDEM_VERSION=$NEXT_VERSION TANDEM_K2K_VERSION=3 $CARGO build -p tandem-control --bins
rm -rf "$out.tmp"
mkdir -p "$out.tmp"
for b in tandemd tandemctl tandem-boot; do
    strip -o "$out.tmp/$b" "target/debug/$b"
done
"$out.tmp/tandemd" --build-info | grep -q "\"version\":\"$NEXT_VERSION\"" || {
    echo "build-next: $out.tmp/tandemd does not say version $NEXT_VERSION" >&2
    exit 1
}
rm -rf "$out"
mv "$out.tmp" "$out"
$CARGO build -p tandem-control --bins
./target/debug/tandemd --build-info | grep -vq "\"version\":\"$NEXT_VERSION\"" || {
    echo "build-next: target/debug/tandemd is still the next version" >&2
    exit 1
}
echo "build-next: $out holds tandem $NEXT_VERSION (K2K 3)"
