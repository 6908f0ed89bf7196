#!/bin/bash
# tandem-gen -> dpdk-testpmd (io forwarding between two memif server ports)
# -> tandem-gen, on the host, in a private temp directory. Prints
# tandem-gen's JSON lines (per second, then the report) on stdout; DPDK's
# and testpmd's logs go to the temp directory (kept with KEEP=1).
#
#   perf/scripts/gen-testpmd.sh [tandem-gen options...]
#   e.g. perf/scripts/gen-testpmd.sh --duration 5 --size 64 --flows 1000
#
# Environment:
#   GEN        the tandem-gen binary (default: target/release/tandem-gen)
#   GEN_LCORE  CPU of tandem-gen (default 0)
#   TP_FWD     CPU of testpmd's forwarding core (default 1); its main
#              lcore (mostly asleep) shares GEN_LCORE
#   TP_MODE    testpmd's forwarding mode: io (default: frames untouched)
#              or mac (source and destination MAC rewritten, as a router
#              does at the least)
#   NO_HUGE=1  run both without hugepages (functional only; slower)
#   KEEP=1     keep the temp directory with the logs
#
# With hugepages it reserves 512 x 2 MiB pages and mounts hugetlbfs on
# /dev/hugepages if that is not done yet (root needed). Both processes use
# --in-memory (or --no-huge --no-shconf): nothing is left in /dev/hugepages.
# Every wait is bounded; testpmd and tandem-gen are killed on exit, even on
# failure. Runs of more than 20 s are refused (the machine is shared).
set -euo pipefail
trap 'echo "gen-testpmd: failed at line $LINENO (status $?)" >&2' ERR

GEN=${GEN:-target/release/tandem-gen}
GEN_LCORE=${GEN_LCORE:-0}
TP_FWD=${TP_FWD:-1}
TP_MODE=${TP_MODE:-io}
case $TP_MODE in io|mac) ;; *) echo "gen-testpmd: TP_MODE=$TP_MODE (allowed: io, mac)" >&2; exit 2 ;; esac
[ -x "$GEN" ] || { echo "gen-testpmd: $GEN is not built (cargo build --release -p tandem-perf)" >&2; exit 2; }
command -v dpdk-testpmd >/dev/null || { echo "gen-testpmd: dpdk-testpmd missing (apt-get install dpdk)" >&2; exit 2; }

. "$(dirname "$0")/lib-run.sh"
run_seconds gen-testpmd "$@"
if hugepages_ready; then
    TP_MEM=(--in-memory)
    GEN_MEM=()
else
    TP_MEM=(--no-huge --no-shconf -m 512)
    GEN_MEM=(--no-huge)
fi

dir=$(mktemp -d /tmp/tandem-gen-testpmd.XXXXXX)
tp=
gen=
cleanup() {
    # $tp and $gen are the pids of `timeout`, which passes SIGINT on to its
    # command; the commands themselves are killed by pid if they linger.
    stop_all INT 30 $gen $tp
    if [ "${KEEP:-0}" = 1 ]; then echo "gen-testpmd: logs in $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The memif servers first: a memif client cannot start before its server
# listens. --stats-period keeps testpmd running without a terminal;
# io mode forwards port 0 <-> port 1 untouched, mac mode rewrites the
# addresses (tandem-gen counts what arrives whatever its MACs).
timeout 60 dpdk-testpmd -l "$GEN_LCORE,$TP_FWD" --main-lcore "$GEN_LCORE" \
    --file-prefix "tp-$$" "${TP_MEM[@]}" --no-pci --no-telemetry \
    --vdev="net_memif0,role=server,socket=$dir/a.sock" \
    --vdev="net_memif1,role=server,socket=$dir/b.sock" -- \
    --forward-mode=$TP_MODE --auto-start --no-lsc-interrupt --stats-period=1 \
    --nb-cores=1 --total-num-mbufs=16384 > "$dir/testpmd.log" 2>&1 < /dev/null &
tp=$!
for _ in $(seq 100); do
    # memif sockets are abstract by default: look in /proc/net/unix.
    n=$(grep -c -e "@$dir/a.sock\$" -e "@$dir/b.sock\$" /proc/net/unix || true)
    [ "$n" -ge 2 ] && break
    kill -0 "$tp" 2>/dev/null || { echo "gen-testpmd: testpmd exited:" >&2; tail -20 "$dir/testpmd.log" >&2; exit 1; }
    sleep 0.1
done

# The generator holds its ports open, idle, after its report, and testpmd
# stops first: DPDK 22.11's memif PMD can crash a process that polls a
# port while its peer disconnects (perf/README-gen.md).
rc=0
timeout $((total + 45)) "$GEN" --lcore "$GEN_LCORE" --file-prefix "gen-$$" "${GEN_MEM[@]}" \
    --port-a "net_memif0,role=client,socket=$dir/a.sock" \
    --port-b "net_memif1,role=client,socket=$dir/b.sock" --hold-open 30 \
    "$@" > "$dir/gen.out" 2> "$dir/tandem-gen.log" &
gen=$!
gen_wait_report "$dir/gen.out" $(( (total + 15) * 10 ))
kill -INT "$tp" 2>/dev/null || true
for _ in $(seq 50); do kill -0 "$tp" 2>/dev/null || break; sleep 0.1; done
kill -TERM "$gen" 2>/dev/null || true
wait "$gen" || rc=$?
gen=
cat "$dir/gen.out"
if [ "$rc" != 0 ]; then
    echo "gen-testpmd: tandem-gen failed ($rc):" >&2
    grep -v '^EAL: ' "$dir/tandem-gen.log" | tail -20 >&2
fi
exit "$rc"
