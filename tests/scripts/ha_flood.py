#!/usr/bin/env python3
"""A flood of HA-shaped frames for the tandem lab: on --iface, as fast as
one process can for --duration seconds (and at most --max frames), sends
broadcast IPv4 ICMP echo frames that look like tandem's last-resort
heartbeats (id 0x5405, 76-byte payload with the heartbeat magic, version
and --cluster id), ICMP checks (id 0x5406, 60-byte payload with the check
magic) and check answers (echo replies), all with source and destination
--addr (a lab address) and random tags: valid-looking, wrong key. Prints
{"event":"ready"}, then {"result":"flood","sent":N,"pps":R,"seconds":S}."""

import argparse
import os
import socket
import struct
import time

from labnet import Deadline, checksum, emit, lab_addr, positive_time

ETH_P_IP = 0x0800
PACKET_QDISC_BYPASS = 20
SOL_PACKET = 263


def frame(src_mac, addr, icmp_type, ident, seq, payload):
    ip_addr = socket.inet_aton(addr)
    total = 20 + 8 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, total, seq, 0x4000, 1, 1, 0, ip_addr, ip_addr)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    icmp = struct.pack("!BBHHH", icmp_type, 0, 0, ident, seq) + payload
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    return b"\xff" * 6 + src_mac + b"\x08\x00" + ip + icmp


def heartbeat(cluster):
    # Version 2: 60 bytes before the 16-byte tag (76 in all).
    body = b"THAB" + bytes([2, 1, 100, 0]) + struct.pack("!I", cluster) + os.urandom(48)
    return body + os.urandom(16)


def check(cluster, kind):
    body = b"THAC" + bytes([1, kind]) + struct.pack("!HI", 1, cluster) + os.urandom(32)
    return body + os.urandom(16)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iface", required=True)
    ap.add_argument("--addr", type=lab_addr, required=True, help="the cluster address to mimic")
    ap.add_argument("--cluster", type=int, default=7)
    ap.add_argument("--duration", type=positive_time, required=True)
    ap.add_argument("--max", type=int, default=50_000_000)
    ap.add_argument("--shape", choices=["ha", "junk"], default="ha",
                    help="junk: the same frames with an identifier that is not tandem's (a control)")
    ap.add_argument("--cpu", type=int, default=None, help="run on this CPU only")
    a = ap.parse_args()
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    s.bind((a.iface, ETH_P_IP))
    try:
        s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    except OSError:
        pass
    mac = s.getsockname()[4][:6]
    frames = []
    hb_id, check_id = (0x5405, 0x5406) if a.shape == "ha" else (0x1405, 0x1406)
    for i in range(96):
        kind = i % 3
        if kind == 0:
            frames.append(frame(mac, a.addr, 8, hb_id, i, heartbeat(a.cluster)))
        elif kind == 1:
            frames.append(frame(mac, a.addr, 8, check_id, i, check(a.cluster, 1)))
        else:
            frames.append(frame(mac, a.addr, 0, check_id, i, check(a.cluster, 2)))
    emit({"event": "ready", "iface": a.iface})
    dl = Deadline(a.duration)
    t0 = time.monotonic()
    sent = rounds = 0
    send = s.send
    while sent < a.max:
        for f in frames:
            try:
                send(f)
                sent += 1
            except OSError:
                pass
        rounds += 1
        if rounds % 32 == 0 and dl.expired():
            break
    secs = time.monotonic() - t0
    emit({"result": "flood", "sent": sent, "seconds": round(secs, 3),
          "pps": round(sent / secs) if secs > 0 else 0})


if __name__ == "__main__":
    main()
