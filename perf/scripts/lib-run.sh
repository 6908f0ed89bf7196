# Shared by gen-testpmd.sh and gen-tandemd.sh (sourced, not run).

# hugepages_ready: with NO_HUGE=1 nothing; otherwise reserves 512 x 2 MiB
# pages and mounts hugetlbfs on /dev/hugepages if that is not done yet
# (root needed). Returns 0 when hugepages are to be used.
hugepages_ready() {
    [ "${NO_HUGE:-0}" = 1 ] && return 1
    if [ "$(awk '/HugePages_Total/ {print $2}' /proc/meminfo)" -lt 512 ]; then
        echo 512 > /proc/sys/vm/nr_hugepages
    fi
    mkdir -p /dev/hugepages
    mountpoint -q /dev/hugepages || mount -t hugetlbfs none /dev/hugepages
    return 0
}

# stop_all SIGNAL TRIES PID...: sends SIGNAL to each PID (the pids of
# `timeout`, which passes it on to its command), waits up to TRIES x 0.1 s
# for them and their children, then kills whatever lingers.
stop_all() {
    local sig=$1 tries=$2
    shift 2
    local pids="$*" p alive
    for p in "$@"; do pids="$pids $(pgrep -P "$p" || true)"; done
    for p in "$@"; do kill "-$sig" "$p" 2>/dev/null || true; done
    for _ in $(seq "$tries"); do
        alive=
        for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ -z "$alive" ] && break
        sleep 0.1
    done
    for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}

# gen_wait_report OUT TRIES: waits until tandem-gen (pid $gen, started
# with --hold-open) has written its report, the line that ends its output
# ({"sent"... or {"mode"...), into OUT, or has ended; at most TRIES x 0.1 s.
gen_wait_report() {
    local out=$1 tries=$2
    for _ in $(seq "$tries"); do
        kill -0 "$gen" 2>/dev/null || return 0
        grep -q -e '^{"sent"' -e '^{"mode"' "$out" && return 0
        sleep 0.1
    done
}

# run_seconds WHO ARGS...: sets $total, the whole seconds tandem-gen runs
# with ARGS (its --duration + --warmup, defaults 10 + 1), and refuses runs
# of more than 20 s (the machine is shared).
run_seconds() {
    local who=$1 dur=10 warm=1 prev= a
    shift
    for a in "$@"; do
        case $prev in --duration) dur=$a ;; --warmup) warm=$a ;; esac
        prev=$a
    done
    total=$(awk -v d="$dur" -v w="$warm" 'BEGIN { printf "%d", d + w + 0.999 }')
    if [ "$total" -gt 20 ]; then
        echo "$who: --duration + --warmup = ${total} s; keep runs at 20 s or less on this shared machine" >&2
        exit 2
    fi
}
