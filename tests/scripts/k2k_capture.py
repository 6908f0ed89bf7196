#!/usr/bin/env python3
"""K2K capture and replay for the tandem lab.

capture: listens on --iface (AF_PACKET) for --duration seconds, keeps the
UDP payload of every datagram to or from --port (44242 by default), writes
them to --out (one hex line each) and prints one JSON object with the
number captured and the nonce check: a datagram's key is named by its
(serial, session, peer session) header fields and its nonce by its seq,
so two different datagrams with the same four fields would be a nonce
reused under one key ("reused": the count of such pairs, must be 0).

replay: sends every datagram of --file, in order, from --bind to --to
(UDP), --times times. Prints {"result":"replay","sent":N}.

Addresses must be inside 198.18.0.0/15; every run is bounded in time."""

import argparse
import select
import socket
import sys

from labnet import Deadline, emit, lab_addr, parse_ipv4, port, positive_time, sniffer

HEADER = 76


def header_key(d):
    """(serial, session, peer session, seq) of a version-2 K2K datagram."""
    if len(d) < HEADER or d[0:4] != b"TK2K":
        return None
    return (d[12:28].hex(), d[28:44].hex(), d[44:60].hex(), d[60:68].hex())


def capture(a):
    s = sniffer(a.iface)
    dl = Deadline(a.duration)
    emit({"event": "ready", "iface": a.iface})
    seen, datagrams, reused = {}, [], 0
    while not dl.expired() and len(datagrams) < 200_000:
        r, _, _ = select.select([s], [], [], min(0.2, dl.left()))
        if not r:
            continue
        frame = s.recv(65535)
        p = parse_ipv4(frame)
        if p is None or p.get("proto") != 17 or a.port not in (p.get("sport"), p.get("dport")):
            continue
        d = p.get("payload", b"")
        k = header_key(d)
        if k is None:
            continue
        # Each frame is seen once per direction at most on a veth end.
        if k in seen and seen[k] != d:
            reused += 1
        seen.setdefault(k, d)
        datagrams.append(d)
    with open(a.out, "w") as f:
        for d in datagrams:
            f.write(d.hex() + "\n")
    sessions = sorted({k[1] for k in seen})
    emit({"result": "k2k_capture", "datagrams": len(datagrams), "distinct": len(seen),
          "reused": reused, "sessions": sessions})


def replay(a):
    lines = [l.strip() for l in open(a.file) if l.strip()]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a.bind, 0))
    dl = Deadline(a.timeout)
    sent = 0
    for _ in range(max(1, min(a.times, 10))):
        for l in lines:
            if dl.expired():
                break
            s.sendto(bytes.fromhex(l), (a.to, a.to_port))
            sent += 1
    emit({"result": "replay", "sent": sent})


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("capture")
    c.add_argument("--iface", required=True)
    c.add_argument("--port", type=port, default=44242)
    c.add_argument("--duration", type=positive_time, required=True)
    c.add_argument("--out", required=True)
    r = sub.add_parser("replay")
    r.add_argument("--file", required=True)
    r.add_argument("--bind", type=lab_addr, required=True)
    r.add_argument("--to", type=lab_addr, required=True)
    r.add_argument("--to-port", type=port, default=44242)
    r.add_argument("--times", type=int, default=1)
    r.add_argument("--timeout", type=positive_time, default=30.0)
    a = ap.parse_args()
    if a.cmd == "capture":
        capture(a)
    else:
        replay(a)


if __name__ == "__main__":
    main()
