#!/bin/bash
# The dataplane measures of the benchmark suite, each next to its baseline
# of the same run (this machine is shared and noisy: the ratio holds, the
# absolute rates do not):
#   throughput  64-byte frames as fast as they go through tandemd's full
#               firewall path on one worker core, next to the plain router
#               and dpdk-testpmd io and mac forwarding on the same memif
#               ports and the same core;
#   latency     the same devices at a fixed rate well below saturation
#               (--latency-rate): one-way latency p50 / p99 / p99.9;
#   scale       the firewall with --scale-flows live connections (e.g.
#               1000000,4000000) against the throughput run's flows;
#   conns       new TCP connections per second through the firewall
#               (tandem-gen --tcp-conns, unpaced, at most 4096 open);
#   rules       the same with --rules policies of that many rules (e.g.
#               10,1000,10000; the generator's connections match the last).
# Rounds alternate the devices; the median of each goes into the JSON
# file (keys: <case>_mpps, <case>_latency_ns, ratios *_over_*).
#
#   perf/scripts/bench-dataplane.sh [--rounds 3] [--duration 5] [--flows 1000]
#       [--latency-rate 1000000] [--scale-flows 1000000,4000000] [--rules 10,1000,10000]
#       [--out results/dataplane.json]
#
# Needs the release binaries (cargo build --release --workspace --bins),
# dpdk-testpmd, root (hugepages). Each run is at most 20 s. KEEP=1 keeps
# the runs' output.
set -euo pipefail
rounds=3; duration=5; flows=1000; size=64; out=results/dataplane.json
latency_rate=1000000; scale_flows=; rules=
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --flows) flows=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --latency-rate) latency_rate=$2; shift 2 ;;
        --scale-flows) scale_flows=$2; shift 2 ;;
        --rules) rules=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "bench-dataplane: unknown option $1 (allowed: --rounds N, --duration S, --flows N, --size B, --latency-rate PPS, --scale-flows N,N, --rules N,N, --out FILE)" >&2; exit 2 ;;
    esac
done
[ "$rounds" -ge 1 ] && [ "$rounds" -le 20 ] || { echo "bench-dataplane: --rounds must be 1..20" >&2; exit 2; }
[ "$latency_rate" -ge 1000 ] || { echo "bench-dataplane: --latency-rate must be at least 1000 frames/s" >&2; exit 2; }
for n in ${scale_flows//,/ }; do
    [ "$n" -ge 1 ] && [ "$n" -le 8000000 ] || { echo "bench-dataplane: --scale-flows takes counts of 1..8000000, comma-separated" >&2; exit 2; }
done
for n in ${rules//,/ }; do
    [ "$n" -ge 1 ] && [ "$n" -le 100000 ] || { echo "bench-dataplane: --rules takes counts of 1..100000, comma-separated" >&2; exit 2; }
done
here=$(dirname "$0")
tmp=$(mktemp -d /tmp/bench-dataplane.XXXXXX)
trap '[ "${KEEP:-0}" = 1 ] && echo "bench-dataplane: runs in $tmp" >&2 || rm -rf "$tmp"' EXIT

# One case: NAME DEVICE [tandem-gen options...]; DEVICE is testpmd,
# testpmd_mac, router or firewall.
run_case() {
    local name=$1 dut=$2 r=$3
    shift 3
    local args=(--duration "$duration" "$@")
    [[ " $* " == *" --warmup "* ]] || args+=(--warmup 1)
    local o="$tmp/$name-$r.json" e="$tmp/$name-$r.err"
    case $dut in
        testpmd) "$here/gen-testpmd.sh" "${args[@]}" > "$o" 2> "$e" ;;
        testpmd_mac) TP_MODE=mac "$here/gen-testpmd.sh" "${args[@]}" > "$o" 2> "$e" ;;
        router) FIREWALL=0 "$here/gen-tandemd.sh" "${args[@]}" > "$o" 2> "$e" ;;
        firewall) "$here/gen-tandemd.sh" "${args[@]}" > "$o" 2> "$e" ;;
    esac || { echo "bench-dataplane: $name round $r failed:" >&2; grep -v '^EAL' "$e" | tail -20 >&2; exit 1; }
    # tandemd's own counters prove the path; a tandemd that died is said.
    if [ "$dut" = router ] || [ "$dut" = firewall ]; then
        grep -q '^tandemd-stats ' "$e" || { echo "bench-dataplane: $name round $r: no tandemd stats: $(grep -v '^EAL' "$e" | tail -5)" >&2; exit 1; }
        if grep -q '^tandemd-died ' "$e"; then
            echo "bench-dataplane: $name round $r: $(grep '^gen-tandemd: tandemd ended' "$e")" >&2
            exit 1
        fi
    fi
    echo "bench-dataplane: round $r $name: $(tail -1 "$o" | python3 -c '
import json, sys
r = json.load(sys.stdin)
if r.get("mode") == "tcp":
    print("%.0f connections/s completed, %d failed of %d, handshake p50 %.1f us" % (r["conns_per_sec"], r["failed"], r["opened"], r["handshake_ns"]["p50"] / 1e3))
else:
    print("%.2f Mpps received of %.2f sent, lost %d, latency p50 %.1f us" % (r["rx_mpps"], r["tx_mpps"], r["lost"], r["latency_ns"]["p50"] / 1e3))')" >&2
}

cases=()
for r in $(seq "$rounds"); do
    for dut in testpmd testpmd_mac router firewall; do
        run_case "$dut" "$dut" "$r" --flows "$flows" --size "$size"
        cases+=("$dut")
    done
    for dut in testpmd router firewall; do
        run_case "${dut}_paced" "$dut" "$r" --flows "$flows" --size "$size" --rate "$latency_rate"
        cases+=("${dut}_paced")
    done
    for n in ${scale_flows//,/ }; do
        # Enough table for every flow, and a warm-up long enough to open
        # them at the slowest rate seen here (about 2 Mpps).
        CONNECTIONS=$((n + n / 4 + 1024)) run_case "firewall_${n}" firewall "$r" --flows "$n" --size "$size" --warmup $((1 + n / 2000000))
        cases+=("firewall_${n}")
    done
    # New connections: the table holds every connection of the run (they
    # stay in TIME_WAIT), about 600,000 a second at the most here.
    conn_table=$(( (duration + 1) * 700000 ))
    CONNECTIONS=$conn_table run_case conns firewall "$r" --tcp-conns 0 --max-open 4096
    for n in ${rules//,/ }; do
        RULES=$n CONNECTIONS=$conn_table run_case "conns_rules_${n}" firewall "$r" --tcp-conns 0 --max-open 4096
    done
done
mkdir -p "$(dirname "$out")"
python3 - "$tmp" "$rounds" "$out" "$duration" "$flows" "$size" "$latency_rate" "$scale_flows" "$rules" <<'PY'
import json, statistics, sys, os, platform, datetime
tmp, rounds, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
duration, flows, size, latency_rate = float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
scale = [int(x) for x in sys.argv[8].split(",") if x]
rules = [int(x) for x in sys.argv[9].split(",") if x]

def load(name, r):
    """One run: tandem-gen's report, with tandemd's own counters."""
    lines = [l for l in open(os.path.join(tmp, f"{name}-{r}.json")) if l.strip()]
    run = json.loads(lines[-1])
    for l in open(os.path.join(tmp, f"{name}-{r}.err")):
        if l.startswith("tandemd-stats "):
            st = json.loads(l.split(" ", 1)[1])
            w = st["workers"]
            run["tandemd"] = {
                "forwarded": sum(x["forwarded"] for x in w),
                "connections": sum(x["connections"] for x in w),
                "drops": {k: v for k, v in st["drops_total"].items() if v},
            }
    return run

names = ["testpmd", "testpmd_mac", "router", "firewall", "testpmd_paced", "router_paced", "firewall_paced", "conns"] + [f"firewall_{n}" for n in scale] + [f"conns_rules_{n}" for n in rules]
runs = {n: [load(n, r) for r in range(1, rounds + 1)] for n in names}
for n, rs in runs.items():
    if n.startswith("router") or n.startswith("firewall") or n.startswith("conns"):
        for i, run in enumerate(rs):
            if "tandemd" not in run:
                sys.exit(f"bench-dataplane: no tandemd stats for {n} round {i + 1}")
    if n.startswith("firewall"):
        want = int(n.split("_")[1]) if n in (f"firewall_{s}" for s in scale) else flows
        for i, run in enumerate(rs):
            got = run["tandemd"]["connections"]
            if got < want:
                sys.exit(f"bench-dataplane: {n} round {i + 1}: the firewall tracked {got} connections for {want} flows: the frames did not all take the firewall path")

med = lambda n, f: statistics.median(f(r) for r in runs[n])
res = {
    "bench": "dataplane",
    "what": "tandem-gen -> device under test (two memif ports, one worker core) -> tandem-gen; figures are medians of the rounds, ratios the medians of the per-round ratios",
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
    "rounds": rounds, "duration_s": duration, "flows": flows, "size": size,
    "latency_rate_pps": latency_rate,
}
for n in ("conns",) + tuple(f"conns_rules_{s}" for s in rules):
    res[f"{n}_per_sec"] = med(n, lambda r: r["conns_per_sec"])
    res[f"{n}_failed"] = [r["failed"] for r in runs[n]]
    res[f"{n}_handshake_ns"] = {p: med(n, lambda r: r["handshake_ns"][p]) for p in ("p50", "p99", "p999")}
for n in ("testpmd", "testpmd_mac", "router", "firewall") + tuple(f"firewall_{s}" for s in scale):
    res[f"{n}_mpps"] = med(n, lambda r: r["rx_mpps"])
for n in ("testpmd_paced", "router_paced", "firewall_paced"):
    res[f"{n}_latency_ns"] = {p: med(n, lambda r: r["latency_ns"][p]) for p in ("p50", "p99", "p999")}
    res[f"{n}_mpps"] = med(n, lambda r: r["rx_mpps"])
def paired(a, b, f):
    """The median over the rounds of a's figure over b's in the same round:
    the two ran a few seconds apart, so the machine's noise of the moment
    moves both (the medians of each alone do not pair up)."""
    return statistics.median(f(x) / max(f(y), 1e-9) for x, y in zip(runs[a], runs[b]))
mpps = lambda r: r["rx_mpps"]
cps = lambda r: r["conns_per_sec"]
res["router_over_testpmd"] = paired("router", "testpmd", mpps)
res["firewall_over_testpmd"] = paired("firewall", "testpmd", mpps)
res["firewall_over_testpmd_mac"] = paired("firewall", "testpmd_mac", mpps)
res["firewall_over_router"] = paired("firewall", "router", mpps)
for p in ("p50", "p99", "p999"):
    res[f"firewall_paced_latency_{p}_over_testpmd"] = paired("firewall_paced", "testpmd_paced", lambda r: r["latency_ns"][p])
for s in scale:
    res[f"firewall_{s}_over_firewall"] = paired(f"firewall_{s}", "firewall", mpps)
for s in rules:
    res[f"conns_rules_{s}_over_conns_rules_{rules[0]}"] = paired(f"conns_rules_{s}", f"conns_rules_{rules[0]}", cps)
# The spread of each figure over the rounds: how noisy this run was.
res["range"] = {n: [min(mpps(r) if "rx_mpps" in r else cps(r) for r in rs),
                    max(mpps(r) if "rx_mpps" in r else cps(r) for r in rs)] for n, rs in runs.items()}
res["lost"] = {n: [r["lost"] for r in rs] for n, rs in runs.items() if not n.startswith("conns")}
res["runs"] = runs
json.dump(res, open(out, "w"), indent=1, sort_keys=True)
print(json.dumps({k: v for k, v in res.items() if k not in ("runs", "lost", "machine", "what")}, sort_keys=True))
PY
