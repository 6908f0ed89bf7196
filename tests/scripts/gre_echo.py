#!/usr/bin/env python3
"""GRE for the tandem lab (the kernel here has no GRE tunnels): raw IP
sockets of protocol 47 carry GRE packets with a key (RFC 2890) and a
payload.

  serve  echoes every GRE packet back to its source, same key and payload;
         one JSON line per packet ({"event":"recv",...}), exits after
         --timeout s.
  probe  sends --count packets with --key to --dst, each waiting --wait s
         for its echo; one JSON object: sent, echoed, seconds.

Addresses must be in 198.18.0.0/15."""

import argparse
import socket
import struct
import time

from labnet import Deadline, emit, lab_addr, positive_time

GRE = 47
# Flags: key present (K bit), version 0; protocol type: transparent
# Ethernet bridging is not wanted, use 0x0800 (IPv4) as a plain tunnel.
FLAGS_KEY = 0x2000
PROTO = 0x0800


def gre(key, payload):
    return struct.pack("!HHI", FLAGS_KEY, PROTO, key) + payload


def parse(packet):
    """(src, key, payload) of an IPv4 packet carrying keyed GRE, else None."""
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if packet[9] != GRE or len(packet) < ihl + 8:
        return None
    flags, _proto, key = struct.unpack("!HHI", packet[ihl:ihl + 8])
    if flags & FLAGS_KEY == 0:
        return None
    return socket.inet_ntoa(packet[12:16]), key, packet[ihl + 8:]


def serve(a):
    dl = Deadline(a.timeout)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, GRE)
    s.bind((a.bind, 0))
    emit({"event": "ready", "bind": a.bind})
    n = 0
    while not dl.expired():
        s.settimeout(min(1.0, max(0.01, dl.left())))
        try:
            data, _ = s.recvfrom(65535)
        except socket.timeout:
            continue
        p = parse(data)
        if p is None:
            continue
        src, key, payload = p
        try:
            lab_addr(src)
        except SystemExit:
            continue
        n += 1
        emit({"event": "recv", "peer": src, "key": key, "len": len(payload)})
        try:
            s.sendto(gre(key, payload), (src, 0))
        except OSError as e:
            emit({"event": "send_error", "error": str(e)})
    emit({"event": "exit", "packets": n})


def probe(a):
    dl = Deadline(a.timeout)
    start = time.monotonic()
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, GRE)
    res = {"result": "gre_probe", "dst": a.dst, "key": a.key, "sent": 0, "echoed": 0}
    for i in range(max(1, min(a.count, 1000))):
        if dl.expired():
            break
        payload = f"tandem-gre-{a.key}-{i}".encode()
        s.sendto(gre(a.key, payload), (a.dst, 0))
        res["sent"] += 1
        until = time.monotonic() + min(a.wait, max(0.01, dl.left()))
        while time.monotonic() < until:
            s.settimeout(max(0.01, until - time.monotonic()))
            try:
                data, _ = s.recvfrom(65535)
            except socket.timeout:
                break
            p = parse(data)
            if p and p[0] == a.dst and p[1] == a.key and p[2] == payload:
                res["echoed"] += 1
                break
    res["seconds"] = round(time.monotonic() - start, 4)
    emit(res)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="mode", required=True)
    sv = sub.add_parser("serve")
    sv.add_argument("--bind", type=lab_addr, required=True)
    sv.add_argument("--timeout", type=positive_time, default=300.0)
    pr = sub.add_parser("probe")
    pr.add_argument("--dst", type=lab_addr, required=True)
    pr.add_argument("--key", type=lambda t: int(t, 0), default=42)
    pr.add_argument("--count", type=int, default=5)
    pr.add_argument("--wait", type=positive_time, default=1.0)
    pr.add_argument("--timeout", type=positive_time, default=20.0)
    a = ap.parse_args()
    if a.mode == "serve":
        serve(a)
    else:
        probe(a)


if __name__ == "__main__":
    main()
