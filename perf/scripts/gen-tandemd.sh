#!/bin/bash
# tandem-gen -> tandemd (the router and the stateful firewall between two
# memif server ports, one worker) -> tandem-gen, on the host, in a private
# temp directory: the same setup as gen-testpmd.sh with tandemd as the
# device under test. tandem-gen answers ARP for the hosts behind its ports,
# so tandemd resolves its next hops as on a wire. Prints tandem-gen's JSON
# lines on stdout; tandemd's log goes to the temp directory (KEEP=1 keeps
# it).
#
#   perf/scripts/gen-tandemd.sh [tandem-gen options...]
#   e.g. perf/scripts/gen-tandemd.sh --duration 5 --size 64 --flows 1000
#
# Environment:
#   GEN, GEN_LCORE  as in gen-testpmd.sh (default target/release/tandem-gen, 0)
#   TANDEMD         the tandemd binary (default target/release/tandemd)
#   TANDEMCTL       the tandemctl binary (default: beside tandemd); its
#                   stats after the run go to stderr as "tandemd-stats {json}"
#   FW_CPU          CPU of tandemd's worker (default 1)
#   FIREWALL=0      the router only (no policy, no connection tracking)
#   CONNECTIONS     capacity of tandemd's connection table (default 262144).
#   RULES           rules in the policy (default 2): RULES - 2 rules that
#                   match nothing of the generator's (other sources in
#                   198.19.0.0/16), then the two that pass its UDP and TCP.
#                   The policy passes UDP and TCP from 198.18.1.0/24 to
#                   198.18.2.0/24; closed TCP connections stay in TIME_WAIT
#                   for 120 s, so a --tcp-conns run needs at least
#                   rate x (--warmup + --duration) of it
#   NO_HUGE=1       both without hugepages (functional only; slower)
#   KEEP=1          keep the temp directory with the logs
#
# Every wait is bounded; both processes are stopped on exit, even on
# failure. Runs of more than 20 s are refused (the machine is shared).
set -euo pipefail
trap 'echo "gen-tandemd: failed at line $LINENO (status $?)" >&2' ERR

GEN=${GEN:-target/release/tandem-gen}
TANDEMD=${TANDEMD:-target/release/tandemd}
GEN_LCORE=${GEN_LCORE:-0}
CONNECTIONS=${CONNECTIONS:-262144}
RULES=${RULES:-2}
case $RULES in
    ''|*[!0-9]*) echo "gen-tandemd: RULES=$RULES: give a number of rules from 2 to 65536" >&2; exit 2 ;;
esac
[ "$RULES" -ge 2 ] && [ "$RULES" -le 65536 ] || { echo "gen-tandemd: RULES=$RULES: give a number of rules from 2 to 65536" >&2; exit 2; }
case $CONNECTIONS in
    ''|*[!0-9]*) echo "gen-tandemd: CONNECTIONS=$CONNECTIONS: give a number of connections, such as 262144 or 4194304" >&2; exit 2 ;;
esac
FW_CPU=${FW_CPU:-1}
for b in "$GEN" "$TANDEMD"; do
    [ -x "$b" ] || { echo "gen-tandemd: $b is not built (cargo build --release --workspace --bins)" >&2; exit 2; }
done

. "$(dirname "$0")/lib-run.sh"
run_seconds gen-tandemd "$@"
if hugepages_ready; then
    EAL="in_memory: true"
    GEN_MEM=()
else
    EAL="no_huge: true, memory_mb: Some(512)"
    GEN_MEM=(--no-huge)
fi

dir=$(mktemp -d /tmp/tandem-gen-tandemd.XXXXXX)
fw=
gen=
cleanup() {
    stop_all TERM 50 $gen $fw
    if [ "${KEEP:-0}" = 1 ]; then echo "gen-tandemd: logs in $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

MAC_A=02:00:00:00:fa:01
MAC_B=02:00:00:00:fa:02
firewall=
if [ "${FIREWALL:-1}" = 1 ]; then
    # The rules before the generator's: each from a source of its own.
    fill=$(awk -v n="$((RULES - 2))" 'BEGIN {
        for (i = 0; i < n; i++)
            printf "        (action: Pass, from: [\"198.19.%d.%d/32\"], to: [\"198.18.2.0/24\"], proto: Tcp, dst_ports: [\"%d\"]),\n", int(i / 256), i % 256, 1 + i % 60000
    }')
    cat > "$dir/policy.ron" <<POLICY
(
    rules: [
$fill
        (action: Pass, from: ["198.18.1.0/24"], to: ["198.18.2.0/24"], proto: Udp),
        (action: Pass, from: ["198.18.1.0/24"], to: ["198.18.2.0/24"], proto: Tcp),
    ],
    default_action: Block,
)
POLICY
    firewall="firewall: (policy: Some(\"$dir/policy.ron\"), connections: $CONNECTIONS),"
fi
cat > "$dir/tandemd.ron" <<CONFIG
(
    node: (name: "bench", serial: "BENCH1"),
    control: (socket: "$dir/tandemd.sock", event_log: Some("$dir/events.log")),
    eal: (file_prefix: Some("fw-$$"), lcores: Some("0@($GEN_LCORE)"), $EAL),
    dataplane: (workers: [(cpu: Some($FW_CPU))], poll_mode: Busy, burst: 32),
    interfaces: [
        (name: "in", device: Vdev("net_memif0,role=server,socket=$dir/a.sock,mac=$MAC_A"), addresses: ["198.18.1.1/24"]),
        (name: "out", device: Vdev("net_memif1,role=server,socket=$dir/b.sock,mac=$MAC_B"), addresses: ["198.18.2.1/24"]),
    ],
    routes: [],
    $firewall
)
CONFIG

timeout 120 "$TANDEMD" --config "$dir/tandemd.ron" > "$dir/tandemd.out" 2> "$dir/tandemd.err" < /dev/null &
fw=$!
for _ in $(seq 200); do
    n=$(grep -c -e "@$dir/a.sock\$" -e "@$dir/b.sock\$" /proc/net/unix || true)
    [ "$n" -ge 2 ] && [ -S "$dir/tandemd.sock" ] && break
    kill -0 "$fw" 2>/dev/null || { echo "gen-tandemd: tandemd exited:" >&2; tail -20 "$dir/tandemd.err" >&2; exit 1; }
    sleep 0.1
done

CTL=${TANDEMCTL:-$(dirname "$TANDEMD")/tandemctl}
[ -x "$CTL" ] || { echo "gen-tandemd: $CTL is not built (cargo build --release --workspace --bins)" >&2; exit 2; }

# The generator holds its ports open, idle, after its report: tandemd's
# counters are taken then, and tandemd stops before the generator lets go
# of the memif rings (DPDK 22.11's memif PMD can crash a process that
# polls a port while its peer disconnects; see perf/README-gen.md).
rc=0
timeout $((total + 45)) "$GEN" --lcore "$GEN_LCORE" --file-prefix "gen-$$" "${GEN_MEM[@]}" \
    --port-a "net_memif0,role=client,socket=$dir/a.sock" \
    --port-b "net_memif1,role=client,socket=$dir/b.sock" \
    --dst-mac "$MAC_A" --dst-mac-b "$MAC_B" --hold-open 30 \
    "$@" > "$dir/gen.out" 2> "$dir/tandem-gen.log" &
gen=$!
gen_wait_report "$dir/gen.out" $(( (total + 15) * 10 ))
# What tandemd counted (forwarded, dropped by reason, connections): the
# proof that the frames took the path under test. To the directory and,
# as one JSON line, to stderr.
if "$CTL" --socket "$dir/tandemd.sock" --json stats > "$dir/stats.json" 2> "$dir/tandemctl.err"; then
    echo "tandemd-stats $(tr -d '\n ' < "$dir/stats.json")" >&2
else
    echo "gen-tandemd: no stats from tandemd: $(cat "$dir/tandemctl.err" 2>/dev/null)" >&2
fi
# tandemd first (its workers stop before its ports close), then the
# generator; a tandemd that did not end cleanly is said.
kill -TERM "$fw" 2>/dev/null || true
for _ in $(seq 50); do kill -0 "$fw" 2>/dev/null || break; sleep 0.1; done
st=0
wait "$fw" || st=$?
fw=
if [ "$st" != 0 ]; then
    echo "gen-tandemd: tandemd ended with status $st:" >&2
    grep -v '^EAL' "$dir/tandemd.err" | tail -5 >&2
    echo "tandemd-died $st" >&2
fi
kill -TERM "$gen" 2>/dev/null || true
wait "$gen" || rc=$?
gen=
cat "$dir/gen.out"
if [ "$rc" != 0 ]; then
    echo "gen-tandemd: tandem-gen failed ($rc):" >&2
    grep -v '^EAL: ' "$dir/tandem-gen.log" | tail -20 >&2
    tail -20 "$dir/tandemd.err" >&2
fi
exit "$rc"
