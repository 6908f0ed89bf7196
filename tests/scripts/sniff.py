#!/usr/bin/env python3
"""Packet watcher for the tandem lab: listens on --iface (AF_PACKET, both
directions) for --duration seconds and counts the IPv4 frames whose
payload contains --marker (optionally only TCP/UDP with --port as source
or destination). Prints {"event":"ready"} once listening, then one final
JSON object: {"result":"sniff","frames":N,"matched":M,"matches":[...]}."""

import argparse
import select

from labnet import Deadline, emit, parse_ipv4, positive_time, sniffer, summary


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iface", required=True)
    ap.add_argument("--marker", required=True)
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--duration", type=positive_time, required=True)
    a = ap.parse_args()
    marker = a.marker.encode()
    s = sniffer(a.iface)
    dl = Deadline(a.duration)
    emit({"event": "ready", "iface": a.iface})
    frames, matches = 0, []
    while not dl.expired():
        r, _, _ = select.select([s], [], [], min(0.5, dl.left()))
        if not r:
            continue
        frame = s.recv(65535)
        frames += 1
        p = parse_ipv4(frame)
        if p is None or marker not in p.get("payload", b""):
            continue
        if a.port is not None and a.port not in (p.get("sport"), p.get("dport")):
            continue
        if len(matches) < 50:
            matches.append(summary(p))
        else:
            matches.append(None)
    emit({"result": "sniff", "iface": a.iface, "frames": frames, "matched": len(matches),
          "matches": [m for m in matches if m is not None]})


if __name__ == "__main__":
    main()
