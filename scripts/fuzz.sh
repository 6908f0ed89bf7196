#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for SECONDS_PER_TARGET seconds
# (default 30) and fails if any of them finds a crash (the input is kept in
# fuzz/artifacts/<target>/). Installs cargo-fuzz if it is missing.
#
# The toolchain is stable: cargo-fuzz's nightly flags (-Z sanitizer, ...)
# are accepted through RUSTC_BOOTSTRAP=1. The corpus grows in
# fuzz/corpus/<target>/ and is reused by the next run.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]
#   FUZZ_TARGETS="parse_ipv4" scripts/fuzz.sh 60   # only some targets
set -euo pipefail

SECONDS_PER_TARGET="${1:-30}"
if ! [[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]] || [ "$SECONDS_PER_TARGET" -eq 0 ]; then
  echo "usage: $0 [SECONDS_PER_TARGET]  (a positive number of seconds)" >&2
  exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1

if [ -n "${FUZZ_TARGETS:-}" ]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
else
  mapfile -t targets < <(cargo fuzz list)
fi
if [ "${#targets[@]}" -eq 0 ]; then
  echo "no fuzz targets found in $ROOT/fuzz" >&2
  exit 1
fi

mkdir -p "$ROOT/fuzz/logs"
failed=()
for t in "${targets[@]}"; do
  echo "==> fuzzing $t for ${SECONDS_PER_TARGET}s"
  log="$ROOT/fuzz/logs/$t.log"
  status=0
  cargo fuzz run "$t" -- -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1 || status=$?
  # The last status line: executions, coverage, corpus size, execs/s.
  grep -E '^#[0-9]+' "$log" | tail -n 1 || true
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true
  if [ "$status" -ne 0 ]; then
    echo "!!! $t failed (exit $status); see $log and $ROOT/fuzz/artifacts/$t/" >&2
    tail -n 40 "$log" >&2
    failed+=("$t")
  fi
done

if [ "${#failed[@]}" -ne 0 ]; then
  echo "fuzzing found crashes in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzzing: ${#targets[@]} targets, ${SECONDS_PER_TARGET}s each, no crash"
