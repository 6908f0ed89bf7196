#!/bin/bash
# Measure 1 of the benchmark suite: established-flow forwarding of 64-byte
# frames through tandemd's full path on one worker core, next to
# dpdk-testpmd io and mac forwarding on the same memif ports and the same core, in
# the same run (this machine is shared and noisy: the ratio holds, the
# absolute rates do not). Rounds alternate testpmd io, testpmd mac, tandemd as a router,
# tandemd with the firewall; the median of each goes into the JSON file.
#
#   perf/scripts/bench-dataplane.sh [--rounds 3] [--duration 5] [--flows 1000] [--out results/dataplane.json]
#
# Needs the release binaries (cargo build --release --workspace --bins),
# dpdk-testpmd, root (hugepages). Each run is at most 20 s.
set -euo pipefail
rounds=3; duration=5; flows=1000; size=64; out=results/dataplane.json
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --flows) flows=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "bench-dataplane: unknown option $1 (allowed: --rounds N, --duration S, --flows N, --size B, --out FILE)" >&2; exit 2 ;;
    esac
done
[ "$rounds" -ge 1 ] && [ "$rounds" -le 20 ] || { echo "bench-dataplane: --rounds must be 1..20" >&2; exit 2; }
here=$(dirname "$0")
tmp=$(mktemp -d /tmp/bench-dataplane.XXXXXX)
trap '[ "${KEEP:-0}" = 1 ] && echo "bench-dataplane: runs in $tmp" >&2 || rm -rf "$tmp"' EXIT
args=(--duration "$duration" --warmup 1 --flows "$flows" --size "$size")
for r in $(seq "$rounds"); do
    for dut in testpmd testpmd_mac router firewall; do
        case $dut in
            testpmd) "$here/gen-testpmd.sh" "${args[@]}" > "$tmp/$dut-$r.json" ;;
            testpmd_mac) TP_MODE=mac "$here/gen-testpmd.sh" "${args[@]}" > "$tmp/$dut-$r.json" ;;
            router) FIREWALL=0 "$here/gen-tandemd.sh" "${args[@]}" > "$tmp/$dut-$r.json" 2> "$tmp/$dut-$r.err" ;;
            firewall) "$here/gen-tandemd.sh" "${args[@]}" > "$tmp/$dut-$r.json" 2> "$tmp/$dut-$r.err" ;;
        esac
        echo "bench-dataplane: round $r $dut: $(tail -1 "$tmp/$dut-$r.json" | python3 -c 'import json, sys; r = json.load(sys.stdin); print("%.2f Mpps received of %.2f sent, lost %d" % (r["rx_mpps"], r["tx_mpps"], r["lost"]))')" >&2
    done
done
mkdir -p "$(dirname "$out")"
python3 - "$tmp" "$rounds" "$out" "$duration" "$flows" "$size" <<'PY'
import json, statistics, sys, os, platform, datetime
tmp, rounds, out, duration, flows, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
runs = {}
for dut in ("testpmd", "testpmd_mac", "router", "firewall"):
    rs = []
    for r in range(1, rounds + 1):
        lines = [l for l in open(os.path.join(tmp, f"{dut}-{r}.json")) if l.strip()]
        run = json.loads(lines[-1])
        err = os.path.join(tmp, f"{dut}-{r}.err")
        if os.path.exists(err):
            # tandemd's own counters: the frames took the path under test.
            for l in open(err):
                if l.startswith("tandemd-stats "):
                    st = json.loads(l.split(" ", 1)[1])
                    w = st["workers"]
                    run["tandemd"] = {
                        "forwarded": sum(x["forwarded"] for x in w),
                        "connections": sum(x["connections"] for x in w),
                        "drops": {k: v for k, v in st["drops_total"].items() if v},
                    }
            if "tandemd" not in run:
                sys.exit(f"bench-dataplane: no tandemd stats for {dut} round {r} (see {err})")
            if dut == "firewall" and run["tandemd"]["connections"] < flows:
                sys.exit(f"bench-dataplane: the firewall tracked {run['tandemd']['connections']} connections for {flows} flows: the frames did not take the firewall path")
        rs.append(run)
    runs[dut] = rs
def med(dut, key):
    """The median of `key` over the rounds of `dut`."""
    return statistics.median(r[key] for r in runs[dut])
res = {
    "bench": "dataplane",
    "what": "64-byte UDP frames, tandem-gen -> device under test (memif, one worker core) -> tandem-gen; received Mpps, median of the rounds",
    "date": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
    "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
    "rounds": rounds, "duration_s": duration, "flows": flows, "size": size,
    "unit": "Mpps",
    "testpmd_io_mpps": med("testpmd", "rx_mpps"),
    "testpmd_mac_mpps": med("testpmd_mac", "rx_mpps"),
    "tandemd_router_mpps": med("router", "rx_mpps"),
    "tandemd_firewall_mpps": med("firewall", "rx_mpps"),
    "latency_p50_ns": {d: statistics.median(r["latency_ns"]["p50"] for r in runs[d]) for d in runs},
    "lost": {d: [r["lost"] for r in runs[d]] for d in runs},
    "runs": runs,
}
res["firewall_over_testpmd"] = res["tandemd_firewall_mpps"] / max(res["testpmd_io_mpps"], 1e-9)
res["router_over_testpmd"] = res["tandemd_router_mpps"] / max(res["testpmd_io_mpps"], 1e-9)
res["firewall_over_testpmd_mac"] = res["tandemd_firewall_mpps"] / max(res["testpmd_mac_mpps"], 1e-9)
json.dump(res, open(out, "w"), indent=1, sort_keys=True)
print(json.dumps({k: res[k] for k in ("testpmd_io_mpps", "testpmd_mac_mpps", "tandemd_router_mpps", "tandemd_firewall_mpps", "router_over_testpmd", "firewall_over_testpmd", "firewall_over_testpmd_mac")}, sort_keys=True))
PY
