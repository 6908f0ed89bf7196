#!/bin/bash
# The benchmark suite (make bench): every benchmark in turn, each writing
# its result file into results/ (the in-process ones print tables, then a
# JSON line), then perf/scripts/bench-report.py gathers the figures into
# results/bench.json (stable keys, units, baselines of the same run,
# ratios) and draws results/plots/*.svg.
#
#   perf/scripts/bench-all.sh [--quick|--smoke] [--only NAME,NAME...]
#                             [--results DIR] [--bin DIR]
#
# --quick: smaller sizes and fewer rounds (about 10 minutes instead of
# about 45 here); the figures are noisier. --smoke: every measure at the
# smallest size that still runs it (a few minutes, the figures mean
# nothing): what `make test` runs to prove the suite works end to end.
# --results DIR: where the result files, the report and the plots go
# (default results/). --bin DIR: the binaries (default target/release;
# a debug build runs, slower). --only runs those benchmarks
# (firewall, conntrack, policy, k2k, dataplane, sync, failover,
# failover-stop, failover-swap, failover-term, chaos) and keeps the other
# result files: the report then mixes runs, which it says in "runs". Needs root, the release build
# (make build-release) and the packages of scripts/install-deps.sh.
# Benchmarks run one at a time: on this 2-core machine two at once only
# measure each other.
set -euo pipefail
cd "$(dirname "$0")/../.."
quick=0; smoke=0; only=; res=results; bin=target/release
names=" firewall conntrack policy k2k dataplane sync failover failover-stop failover-swap failover-term chaos "
while [ $# -gt 0 ]; do
    case $1 in
        --quick) quick=1; shift ;;
        --smoke) smoke=1; shift ;;
        --results) res=${2:?--results needs a directory}; shift 2 ;;
        --bin) bin=${2:?--bin needs a directory}; shift 2 ;;
        --only)
            only=" ${2//,/ } "
            for n in $only; do
                [[ $names == *" $n "* ]] || { echo "bench-all: --only $n: allowed are$names" >&2; exit 2; }
            done
            shift 2 ;;
        *) echo "bench-all: unknown option $1 (allowed: --quick, --smoke, --only NAME,NAME, --results DIR, --bin DIR)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "bench-all: needs root (network namespaces, hugepages)" >&2; exit 2; }
bin=$(cd "$bin" 2>/dev/null && pwd) || { echo "bench-all: --bin: no such directory" >&2; exit 2; }
for b in tandemd tandemctl tandem-gen tandem-lab bench-firewall bench-conntrack bench-policy bench-k2k bench-failover; do
    [ -x "$bin/$b" ] || { echo "bench-all: $bin/$b is not built (make build-release)" >&2; exit 2; }
done
mkdir -p "$res"
res=$(cd "$res" && pwd)
export TANDEM_BIN_DIR=$bin GEN=$bin/tandem-gen TANDEMD=$bin/tandemd

# Runs one benchmark: NAME COMMAND...; its output is kept in
# $res/raw/NAME.txt and the run stops at the first failure.
step() {
    local name=$1
    shift
    if [ -n "$only" ] && [[ $only != *" $name "* ]]; then
        return 0
    fi
    ran="$ran $name"
    mkdir -p "$res/raw"
    echo "== $name: $*" >&2
    local t=$SECONDS
    if ! "$@" > >(tee "$res/raw/$name.txt") 2>&1; then
        echo "bench-all: $name failed (output in $res/raw/$name.txt)" >&2
        exit 1
    fi
    echo "== $name: $((SECONDS - t)) s" >&2
}
# The last line of an in-process benchmark's output is its JSON.
ran=
last_json() {
    if [[ "$ran " == *" $1 "* ]]; then tail -1 "$res/raw/$1.txt" > "$res/$1.json"; fi
}

# Sizes: flows and packets of the in-process benchmarks, dataplane rounds
# and seconds, connections, failover rounds, chaos faults, table scale,
# sync rates and seconds.
if [ "$smoke" = 1 ]; then
    rounds=1; dur=1; conns=20000; fo_rounds=1; faults=3; scale=1000000
    fw=(--flows 10000 --packets 200000 --threads 2); pol=(--rules 1000 --queries 20000)
    k2k=(--records 20000); sync=(--rates 2000,10000,100000 --seconds 1); fo_conns=10; gen_rate=2000
    dp_rules=10,1000,10000
elif [ "$quick" = 1 ]; then
    rounds=1; dur=3; conns=200000; fo_rounds=3; faults=20; scale=1000000
    fw=(); pol=(); k2k=(); sync=(--rates 2000,10000,100000 --seconds 3); fo_conns=50; gen_rate=10000
    dp_rules=10,1000,10000
else
    rounds=3; dur=5; conns=1000000; fo_rounds=10; faults=200; scale=1000000,4000000
    fw=(); pol=(); k2k=(); sync=(--rates 2000,10000,100000 --seconds 3); fo_conns=50; gen_rate=10000
    dp_rules=10,1000,10000
fi

step firewall "$bin/bench-firewall" "${fw[@]}"; last_json firewall
step conntrack "$bin/bench-conntrack" --connections "$conns"; last_json conntrack
step policy "$bin/bench-policy" "${pol[@]}"; last_json policy
step k2k "$bin/bench-k2k" "${k2k[@]}"; last_json k2k
step dataplane perf/scripts/bench-dataplane.sh --rounds "$rounds" --duration "$dur" \
    --scale-flows "$scale" --rules "$dp_rules" --out "$res/dataplane.json"
step sync "$bin/tandem-lab" bench-sync "${sync[@]}" --sender tandem-gen --out "$res/sync.json"
# Failovers under TCP traffic and tandem-gen's UDP both ways (10,000
# frames/s each), which measures frames lost and the largest silence.
step failover "$bin/bench-failover" --rounds $((fo_rounds * 2)) --connections "$fo_conns" \
    --gen-rate "$gen_rate" --out "$res/failover.json"
for f in stop swap term; do
    step "failover-$f" "$bin/bench-failover" --only tandem --fault "$f" --rounds "$fo_rounds" \
        --connections "$fo_conns" --gen-rate "$gen_rate" --out "$res/failover-$f.json"
done
step chaos "$bin/tandem-lab" chaos --seed 1 --faults "$faults" --out "$res/chaos.json"
python3 perf/scripts/bench-report.py --results "$res"
