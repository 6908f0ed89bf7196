#!/usr/bin/env python3
"""Gathers the benchmarks' result files into one: results/bench.json.

Every figure has a stable key, a value, a unit and, where one is measured
in the same run, the key and value of its baseline and the ratio (this
machine is shared and noisy: a ratio holds, an absolute figure does not).
Draws the SVG plots next to it (results/plots/*.svg). Reads what
`make bench` (perf/scripts/bench-all.sh) writes in results/; a source that
is missing is listed under "missing", never invented.

    perf/scripts/bench-report.py [--results DIR] [--out FILE]
"""

import datetime
import json
import os
import platform
import subprocess
import sys


def load(results, name):
    """A result file of `results`, or None when that benchmark did not run."""
    path = os.path.join(results, name)
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        # The in-process benchmarks print tables, then one JSON line.
        last = text.splitlines()[-1] if text else ""
        try:
            return json.loads(last)
        except json.JSONDecodeError as e:
            sys.exit(f"bench-report: {path} holds no JSON ({e}); run its benchmark again")


def dig(doc, path):
    """doc[a][b]... for path 'a.b...' (list indices allowed), or None."""
    cur = doc
    for part in path.split("."):
        if cur is None:
            return None
        if isinstance(cur, list):
            try:
                cur = cur[int(part)]
            except (ValueError, IndexError):
                return None
        else:
            cur = cur.get(part)
    return cur


def cluster(doc, name):
    """The entry of `name` in a failover file's clusters."""
    for c in (doc or {}).get("clusters", []):
        if c.get("cluster") == name:
            return c
    return None


# (key, source file, path in it, unit, what, baseline key or None)
# The keys are stable: the README and later runs refer to them.
FIGURES = [
    # 1. Established-flow forwarding through the full path on one core.
    ("dataplane.testpmd_io_mpps", "dataplane.json", "testpmd_mpps", "Mpps",
     "dpdk-testpmd io forwarding, 64 B, memif, one core", None),
    ("dataplane.testpmd_mac_mpps", "dataplane.json", "testpmd_mac_mpps", "Mpps",
     "dpdk-testpmd mac forwarding, 64 B, memif, one core", "dataplane.testpmd_io_mpps"),
    ("dataplane.router_mpps", "dataplane.json", "router_mpps", "Mpps",
     "tandemd as a router (no firewall), 64 B, one worker core", "dataplane.testpmd_io_mpps"),
    ("dataplane.firewall_mpps", "dataplane.json", "firewall_mpps", "Mpps",
     "tandemd's stateful firewall path, established UDP flows, 64 B, one worker core",
     "dataplane.testpmd_io_mpps"),
    ("dataplane.firewall_vs_mac_mpps", "dataplane.json", "firewall_mpps", "Mpps",
     "the same, against testpmd mac mode", "dataplane.testpmd_mac_mpps"),
    # 3. Latency at a paced rate.
    ("latency.testpmd_p50_us", "dataplane.json", "testpmd_paced_latency_ns.p50", "us",
     "one-way latency through testpmd io at the paced rate, p50", None),
    ("latency.testpmd_p99_us", "dataplane.json", "testpmd_paced_latency_ns.p99", "us",
     "the same, p99", None),
    ("latency.testpmd_p999_us", "dataplane.json", "testpmd_paced_latency_ns.p999", "us",
     "the same, p99.9", None),
    ("latency.firewall_p50_us", "dataplane.json", "firewall_paced_latency_ns.p50", "us",
     "one-way latency through tandemd's firewall at the paced rate, p50", "latency.testpmd_p50_us"),
    ("latency.firewall_p99_us", "dataplane.json", "firewall_paced_latency_ns.p99", "us",
     "the same, p99", "latency.testpmd_p99_us"),
    ("latency.firewall_p999_us", "dataplane.json", "firewall_paced_latency_ns.p999", "us",
     "the same, p99.9", "latency.testpmd_p999_us"),
    # 5. Table scale.
    ("scale.firewall_1m_mpps", "dataplane.json", "firewall_1000000_mpps", "Mpps",
     "firewall path with 1,000,000 live connections", "dataplane.firewall_mpps"),
    ("scale.firewall_4m_mpps", "dataplane.json", "firewall_4000000_mpps", "Mpps",
     "firewall path with 4,000,000 live connections", "dataplane.firewall_mpps"),
    ("scale.bytes_per_connection", "conntrack.json", "bytes_per_conn", "B",
     "memory per IPv4 connection (entry, index, timer, free list)", None),
    # Per-packet cost in process (no I/O).
    ("inproc.router_ns_per_pkt", "firewall.json", "router_ns_per_pkt", "ns",
     "plain router, whole packet, in process", None),
    ("inproc.established_burst_ns_per_pkt", "firewall.json", "established_burst_ns_per_pkt", "ns",
     "established TCP through router + firewall, bursts, in process", "inproc.router_ns_per_pkt"),
    ("inproc.new_conn_per_sec", "firewall.json", "new_conn_per_sec", "1/s",
     "new TCP connections (SYN through policy + create), one core, in process", None),
    ("inproc.dispatch_decision_ns", "firewall.json", "dispatch_decision_ns", "ns",
     "which worker owns a packet", "inproc.router_ns_per_pkt"),
    ("inproc.handoff_ns", "firewall.json", "handoff_ns", "ns",
     "handing a packet to another core's worker", "inproc.router_ns_per_pkt"),
    # 2. New connections through tandemd (tandem-gen's TCP mode).
    ("conns.firewall_tcp_per_sec", "dataplane.json", "conns_per_sec", "1/s",
     "TCP connections (SYN, SYN-ACK, ACK, data + FIN, FIN-ACK, ACK) completed per second through tandemd's firewall, one worker core, tandem-gen unpaced with at most 4096 open",
     "inproc.new_conn_per_sec"),
    ("conns.handshake_p50_us", "dataplane.json", "conns_handshake_ns.p50", "us",
     "SYN sent to SYN-ACK received through tandemd, p50, unpaced", None),
    ("conns.handshake_p99_us", "dataplane.json", "conns_handshake_ns.p99", "us",
     "the same, p99", None),
    # 4. Rules.
    ("rules.small_burst64_ns", "policy.json", "small.burst64_ns", "ns",
     "policy lookup, bursts of 64, the small policy", None),
    ("rules.large_burst64_ns", "policy.json", "large.burst64_ns", "ns",
     "policy lookup, bursts of 64, the large policy", "rules.small_burst64_ns"),
    ("rules.conns_10_per_sec", "dataplane.json", "conns_rules_10_per_sec", "1/s",
     "new TCP connections per second through the firewall, 10 rules (the generator's match the last)", None),
    ("rules.conns_1000_per_sec", "dataplane.json", "conns_rules_1000_per_sec", "1/s",
     "the same, 1,000 rules", "rules.conns_10_per_sec"),
    ("rules.conns_10000_per_sec", "dataplane.json", "conns_rules_10000_per_sec", "1/s",
     "the same, 10,000 rules", "rules.conns_10_per_sec"),
    # 6. K2K.
    ("k2k.auth_records_per_sec", "k2k.json", "auth_records_per_sec", "1/s",
     "K2K records sealed and opened per second, authenticated, one core", None),
    ("k2k.encrypted_records_per_sec", "k2k.json", "encrypted_records_per_sec", "1/s",
     "the same, encrypted", "k2k.auth_records_per_sec"),
    ("k2k.encrypted_bytes_per_record", "k2k.json", "encrypted_bytes_per_record", "B",
     "HA-link bytes per replicated connection record, encrypted", "k2k.auth_bytes_per_record"),
    ("k2k.auth_bytes_per_record", "k2k.json", "auth_bytes_per_record", "B",
     "the same, authenticated", None),
    ("k2k.highest_sustained_rate", "sync.json", "highest_sustained_rate", "1/s",
     "new connections per second (tracked by the active) the passive kept up with, two-node lab", None),
]


# Ratios that the benchmark paired round by round (the device and its
# baseline a few seconds apart): they replace value / baseline value.
PAIRED = {
    "dataplane.router_mpps": "router_over_testpmd",
    "dataplane.firewall_mpps": "firewall_over_testpmd",
    "dataplane.firewall_vs_mac_mpps": "firewall_over_testpmd_mac",
    "latency.firewall_p50_us": "firewall_paced_latency_p50_over_testpmd",
    "latency.firewall_p99_us": "firewall_paced_latency_p99_over_testpmd",
    "latency.firewall_p999_us": "firewall_paced_latency_p999_over_testpmd",
    "scale.firewall_1m_mpps": "firewall_1000000_over_firewall",
    "scale.firewall_4m_mpps": "firewall_4000000_over_firewall",
    "rules.conns_1000_per_sec": "conns_rules_1000_over_conns_rules_10",
    "rules.conns_10000_per_sec": "conns_rules_10000_over_conns_rules_10",
}


def failover_figures(results):
    """Failover figures: per fault kind, tandem's largest stream gap; for
    kill -9 also the Linux pair's, the baseline."""
    out = []
    for fault, name in (("kill", "failover.json"), ("stop", "failover-stop.json"),
                        ("swap", "failover-swap.json"), ("term", "failover-term.json")):
        doc = load(results, name)
        t = cluster(doc, "tandem")
        base = None
        if fault == "kill":
            lx = cluster(doc, "linux")
            for stat in ("median", "max"):
                out.append((f"failover.linux_kill_gap_{stat}_ms", name,
                            dig(lx, f"gap_ms.{stat}") if lx else None, "ms",
                            f"Linux pair (keepalived + conntrackd), kill of the active: largest stream gap per round, {stat} (gaps of 20 ms or more)",
                            None))
        for stat in ("median", "max"):
            if fault == "kill":
                base = f"failover.linux_kill_gap_{stat}_ms"
            out.append((f"failover.tandem_{fault}_gap_{stat}_ms", name,
                        dig(t, f"gap_ms.{stat}") if t else None, "ms",
                        f"tandem, {fault} of the active: largest stream gap per round, {stat} (gaps under 20 ms are not seen: 0 means none of 20 ms or more)", base))
        if fault == "kill":
            out.append(("failover.linux_kill_gen_gap_median_ms", name,
                        dig(lx, "gen_gap_ms.median") if lx else None, "ms",
                        "Linux pair, kill: the largest silence tandem-gen saw per round (UDP both ways), median", None))
        out.append((f"failover.tandem_{fault}_gen_gap_median_ms", name,
                    dig(t, "gen_gap_ms.median") if t else None, "ms",
                    f"tandem, {fault}: the largest silence tandem-gen saw per round (UDP both ways, 10,000 frames/s each, following the gateways' ARP), median",
                    "failover.linux_kill_gen_gap_median_ms" if fault == "kill" else None))
        out.append((f"failover.tandem_{fault}_gen_gap_max_ms", name,
                    dig(t, "gen_gap_ms.max") if t else None, "ms",
                    f"the same, the largest of the rounds", None))
        out.append((f"failover.tandem_{fault}_connections_lost", name,
                    (t or {}).get("connections_lost") if t else None, "connections",
                    f"tandem, {fault}: connections lost over the rounds (of {(t or {}).get('connections_total')})", None))
    return out


def sync_figures(results):
    """Replication lag per new-connection rate (two-node lab): p50 and p99
    at 10k and 100k connections per second against the lowest rate of the
    same run, and the HA-link bytes per connection."""
    doc = load(results, "sync.json")
    rows = (doc or {}).get("results", [])
    by_rate = {r.get("rate"): r for r in rows}
    low = min(by_rate) if by_rate else None
    out = []
    for rate, tag in ((low, "low"), (10000, "10k"), (100000, "100k")):
        r = by_rate.get(rate) if rate is not None else None
        for p in ("p50", "p99"):
            base = None if tag == "low" else f"k2k.lag_{p}_ms_low"
            out.append((f"k2k.lag_{p}_ms_{tag}", "sync.json", (r or {}).get(f"lag_ms_{p}"), "ms",
                        f"replication lag, {p}, at {rate if tag != 'low' else 'the lowest rate of the run'} new connections/s"
                        + (f" (achieved {r.get('achieved_rate'):.0f}/s, kept up: {r.get('kept_up')})" if r else ""),
                        base))
        if tag != "low":
            out.append((f"k2k.ha_bytes_per_connection_{tag}", "sync.json", (r or {}).get("bytes_per_connection"),
                        "B", f"HA-link bytes per replicated connection at {rate}/s", None))
    return out


def chaos_figures(results):
    doc = load(results, "chaos.json")
    g = lambda k: (doc or {}).get(k)
    return [
        ("chaos.faults", "chaos.json", g("faults"), "faults", "seeded faults of the chaos run", None),
        ("chaos.tcp_lost", "chaos.json", g("tcp_lost"), "connections",
         f"long-lived TCP connections lost (of {g('tcp_connections')})", None),
        ("chaos.verify_differences", "chaos.json", g("verify_differences_found"), "connections",
         "differences between the two tables at the end", None),
    ]


def run_date(results, src):
    doc = load(results, src)
    if isinstance(doc, dict) and isinstance(doc.get("date"), str):
        return doc["date"]
    return datetime.datetime.fromtimestamp(
        os.path.getmtime(os.path.join(results, src)), datetime.timezone.utc
    ).strftime("%Y-%m-%dT%H:%M:%SZ")


def build(results):
    figures = {}
    missing = set()
    rows = []
    for key, src, path, unit, what, base in FIGURES:
        doc = load(results, src)
        rows.append((key, src, dig(doc, path) if doc is not None else None, unit, what, base))
    rows += failover_figures(results) + sync_figures(results) + chaos_figures(results)
    for key, src, value, unit, what, base in rows:
        if value is None:
            missing.add(f"{key} ({src})")
            continue
        if unit == "us":
            value = value / 1e3
        figures[key] = {"value": round(value, 4) if isinstance(value, float) else value,
                        "unit": unit, "what": what, "source": src}
        if base:
            figures[key]["baseline"] = base
    for key, f in figures.items():
        b = f.get("baseline")
        paired = dig(load(results, f["source"]), PAIRED[key]) if key in PAIRED else None
        if b and b in figures and figures[b]["value"]:
            f["baseline_value"] = figures[b]["value"]
            f["ratio"] = round(f["value"] / figures[b]["value"], 4)
        elif b:
            missing.add(f"{key}: its baseline {b}")
        if paired is not None:
            f["ratio"] = round(paired, 4)
            f["ratio_paired"] = True
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), None)
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(l for l in f if l.startswith("MemTotal")).split()[1])
            mem_gib = round(kb / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    return {
        "schema": 1,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit,
        "command": "make bench",
        "machine": {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": mem_gib,
                    "kernel": platform.release()},
        # When each result was measured (its own "date", else when its file
        # was written): a report over files of different runs
        # (bench-all.sh --only) says so here.
        "runs": {src: run_date(results, src)
                 for src in sorted({r[1] for r in rows})
                 if os.path.exists(os.path.join(results, src))},
        "figures": dict(sorted(figures.items())),
        "missing": sorted(missing),
    }


# --- SVG (no dependency) ---------------------------------------------------

def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def bars(title, unit, groups, series):
    """A grouped bar chart: `groups` labels on the x axis, `series` a list
    of (name, colour, [value or None per group])."""
    w, h, left, bottom, top = 760, 360, 70, 70, 40
    vmax = max([v for _, _, vs in series for v in vs if v is not None] or [1]) * 1.15
    gw = (w - left - 20) / max(len(groups), 1)
    bw = gw * 0.8 / max(len(series), 1)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="22" text-anchor="middle" font-size="15">{esc(title)}</text>']
    ph = h - top - bottom
    for i in range(5):
        v = vmax * i / 4
        y = top + ph - ph * i / 4
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{w - 20}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    out.append(f'<text x="16" y="{top + ph / 2}" transform="rotate(-90 16 {top + ph / 2})" text-anchor="middle">{esc(unit)}</text>')
    for gi, g in enumerate(groups):
        x0 = left + gi * gw + gw * 0.1
        for si, (_, colour, vs) in enumerate(series):
            v = vs[gi]
            if v is None:
                continue
            bh = ph * v / vmax
            x = x0 + si * bw
            out.append(f'<rect x="{x:.1f}" y="{top + ph - bh:.1f}" width="{bw - 2:.1f}" height="{bh:.1f}" fill="{colour}"/>')
            out.append(f'<text x="{x + bw / 2:.1f}" y="{top + ph - bh - 4:.1f}" text-anchor="middle" font-size="10">{v:.3g}</text>')
        gx, gy = left + gi * gw + gw / 2, h - bottom + 18
        if len(groups) > 8:
            out.append(f'<text x="{gx:.1f}" y="{gy}" text-anchor="end" font-size="10" transform="rotate(-40 {gx:.1f} {gy})">{esc(g)}</text>')
        else:
            out.append(f'<text x="{gx:.1f}" y="{gy}" text-anchor="middle">{esc(g)}</text>')
    for si, (name, colour, _) in enumerate(series):
        x = left + si * (w - left - 20) / len(series)
        out.append(f'<rect x="{x:.1f}" y="{h - 28}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{x + 16:.1f}" y="{h - 18}" font-size="11">{esc(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def median_round_timeline(doc, name):
    """The timeline of the round of cluster `name` whose largest tandem-gen
    silence is the median of the rounds: (timeline, that silence in ms),
    or None."""
    c = cluster(doc, name)
    rounds = []
    for r in (c or {}).get("rounds", []):
        g = r.get("gen") or {}
        t, gaps = g.get("timeline"), g.get("max_gap_ms")
        if t and t.get("rx_pps") and gaps:
            rounds.append((max(gaps), t))
    if not rounds:
        return None
    rounds.sort(key=lambda x: x[0])
    gap, t = rounds[len(rounds) // 2]
    return t, gap


def timelines(title, panels):
    """Throughput over time, one panel per (label, colour, timeline, gap):
    frames per second received against the time from the fault (ms), the
    fault marked by a red line at 0."""
    w, left, right, ph, gap_y, top = 760, 70, 20, 95, 38, 44
    h = top + len(panels) * (ph + gap_y) + 24
    x_lo = min(t["from_ms"] for _, _, t, _ in panels)
    x_hi = max(t["from_ms"] + t["bin_ms"] * len(t["rx_pps"]) for _, _, t, _ in panels)
    span = max(x_hi - x_lo, 1)
    xs = lambda ms: left + (w - left - right) * (ms - x_lo) / span
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="22" text-anchor="middle" font-size="15">{esc(title)}</text>']
    for i, (label, colour, t, gap) in enumerate(panels):
        y0 = top + i * (ph + gap_y) + 16
        vmax = max(max(t["rx_pps"]), 1) * 1.1
        ys = lambda v: y0 + ph - ph * v / vmax
        out.append(f'<text x="{left}" y="{y0 - 6}" font-size="12">{esc(label)}: largest silence {gap:.1f} ms</text>')
        out.append(f'<line x1="{left}" y1="{y0 + ph}" x2="{w - right}" y2="{y0 + ph}" stroke="#999"/>')
        out.append(f'<line x1="{left}" y1="{y0}" x2="{w - right}" y2="{y0}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y0 + 4}" text-anchor="end" font-size="10">{vmax / 1.1 / 1e3:.3g}k</text>')
        out.append(f'<text x="{left - 6}" y="{y0 + ph + 4}" text-anchor="end" font-size="10">0</text>')
        pts = []
        for j, v in enumerate(t["rx_pps"]):
            a = t["from_ms"] + j * t["bin_ms"]
            pts.append(f"{xs(a):.1f},{ys(v):.1f}")
            pts.append(f"{xs(a + t['bin_ms']):.1f},{ys(v):.1f}")
        out.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        out.append(f'<line x1="{xs(0):.1f}" y1="{y0 - 2}" x2="{xs(0):.1f}" y2="{y0 + ph}" stroke="#d22" stroke-width="1.5"/>')
        out.append(f'<text x="{xs(0) + 4:.1f}" y="{y0 + 10}" fill="#d22" font-size="10">fault</text>')
    for ms in range(int(x_lo // 250) * 250, int(x_hi) + 1, 250):
        if ms < x_lo:
            continue
        out.append(f'<text x="{xs(ms):.1f}" y="{h - 10}" text-anchor="middle" font-size="10">{ms}</text>')
    out.append(f'<text x="{w - right}" y="{h - 10}" text-anchor="end" font-size="10">ms from the fault</text>')
    out.append(f'<text x="16" y="{h / 2}" transform="rotate(-90 16 {h / 2})" text-anchor="middle">frames/s received (both ways)</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def plots(doc, results):
    f = doc["figures"]
    v = lambda k: f.get(k, {}).get("value")
    made = {}
    made["dataplane.svg"] = bars(
        "64-byte forwarding on one core (memif), same run", "Mpps",
        ["testpmd io", "testpmd mac", "tandemd router", "tandemd firewall", "firewall, 1M conns", "firewall, 4M conns"],
        [("Mpps", "#4a7ebb", [v("dataplane.testpmd_io_mpps"), v("dataplane.testpmd_mac_mpps"),
                              v("dataplane.router_mpps"), v("dataplane.firewall_mpps"),
                              v("scale.firewall_1m_mpps"), v("scale.firewall_4m_mpps")])])
    made["latency.svg"] = bars(
        "One-way latency at a paced rate, same run", "us",
        ["p50", "p99", "p99.9"],
        [("testpmd io", "#999999", [v("latency.testpmd_p50_us"), v("latency.testpmd_p99_us"), v("latency.testpmd_p999_us")]),
         ("tandemd firewall", "#4a7ebb", [v("latency.firewall_p50_us"), v("latency.firewall_p99_us"), v("latency.firewall_p999_us")])])
    made["failover.svg"] = bars(
        "Largest stream gap per failover (median of the rounds)", "ms",
        ["kill -9", "SIGSTOP", "forced swap", "clean stop"],
        [("tandem, TCP stream", "#4a7ebb", [v(f"failover.tandem_{k}_gap_median_ms") for k in ("kill", "stop", "swap", "term")]),
         ("tandem, tandem-gen UDP", "#7fb24a", [v(f"failover.tandem_{k}_gen_gap_median_ms") for k in ("kill", "stop", "swap", "term")]),
         ("Linux pair, TCP stream", "#999999", [v("failover.linux_kill_gap_median_ms"), None, None, None]),
         ("Linux pair, tandem-gen UDP", "#cccccc", [v("failover.linux_kill_gen_gap_median_ms"), None, None, None])])
    made["rules.svg"] = bars(
        "New TCP connections per second against the number of rules (one core)", "connections/s",
        ["10", "1,000", "10,000"],
        [("connections/s", "#4a7ebb", [v("rules.conns_10_per_sec"), v("rules.conns_1000_per_sec"), v("rules.conns_10000_per_sec")])])
    # The latency histograms of the paced runs (all rounds together), in %
    # of the frames per bucket.
    dp = load(results, "dataplane.json") or {}
    hists = {}
    for name in ("testpmd_paced", "firewall_paced"):
        acc = {}
        for run in dp.get("runs", {}).get(name, []):
            for upper, count in run.get("latency_hist_ns", []):
                acc[upper] = acc.get(upper, 0) + count
        total = sum(acc.values())
        if total:
            hists[name] = {u: 100.0 * c / total for u, c in acc.items()}
    if hists:
        uppers = sorted({u for h in hists.values() for u in h})
        label = lambda ns: f"<{ns / 1e3:.3g} us" if ns >= 1000 else f"<{ns} ns"
        made["latency-histogram.svg"] = bars(
            "One-way latency at the paced rate: frames per bucket (all rounds)", "% of frames",
            [label(u) for u in uppers],
            [("testpmd io", "#999999", [hists.get("testpmd_paced", {}).get(u) for u in uppers]),
             ("tandemd firewall", "#4a7ebb", [hists.get("firewall_paced", {}).get(u) for u in uppers])])
    # Throughput over time across each kind of failover: the round with
    # the median silence.
    panels = []
    for fname, cname, label, colour in (
            ("failover.json", "tandem", "tandem, kill -9", "#4a7ebb"),
            ("failover.json", "linux", "Linux pair (keepalived + conntrackd), kill -9", "#777777"),
            ("failover-stop.json", "tandem", "tandem, SIGSTOP", "#4a7ebb"),
            ("failover-swap.json", "tandem", "tandem, forced swap (hapassive)", "#4a7ebb"),
            ("failover-term.json", "tandem", "tandem, clean stop (SIGTERM)", "#4a7ebb")):
        m = median_round_timeline(load(results, fname), cname)
        if m:
            panels.append((label, colour, m[0], m[1]))
    if panels:
        made["failover-timeline.svg"] = timelines(
            "tandem-gen's UDP through the cluster across a failover (10 ms intervals, the median round)", panels)
    d = os.path.join(results, "plots")
    os.makedirs(d, exist_ok=True)
    for name, svg in made.items():
        with open(os.path.join(d, name), "w") as fh:
            fh.write(svg)
    return sorted(made)


def main(argv):
    results, out = "results", None
    it = iter(argv)
    for a in it:
        if a == "--results":
            results = next(it, None) or sys.exit("bench-report: --results needs a directory")
        elif a == "--out":
            out = next(it, None) or sys.exit("bench-report: --out needs a file")
        else:
            sys.exit(f"bench-report: unknown argument {a!r} (allowed: --results DIR, --out FILE)")
    out = out or os.path.join(results, "bench.json")
    doc = build(results)
    doc["plots"] = [f"plots/{p}" for p in plots(doc, results)]
    with open(out, "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    for k, f in doc["figures"].items():
        r = f" ({f['ratio']:.2f}x {f['baseline']})" if "ratio" in f else ""
        print(f"{k:<44} {f['value']:>14} {f['unit']:<11}{r}")
    if doc["missing"]:
        print(f"missing ({len(doc['missing'])}): " + ", ".join(doc["missing"]))
    print(f"wrote {out} and {len(doc['plots'])} plots in {results}/plots")


if __name__ == "__main__":
    main(sys.argv[1:])
