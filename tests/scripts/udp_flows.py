#!/usr/bin/env python3
"""Opens many UDP flows at once for the tandem lab: one datagram per flow,
sent from --src to --dst with a raw socket (the kernel routes it and
resolves the gateway), flow i using source port 1024 + i % 64000 and
destination port --dport + i // 64000. A flow table of a firewall fills
at a paced --rate (flows per second). Prints one JSON object:
{"result":"udp_flows","sent":N,"seconds":S}. Bounded by --timeout."""

import argparse
import socket
import struct
import time

from labnet import Deadline, checksum, emit, lab_addr, port, positive_time


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--src", type=lab_addr, required=True)
    ap.add_argument("--dst", type=lab_addr, required=True)
    ap.add_argument("--dport", type=port, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--rate", type=int, default=40000, help="flows per second")
    ap.add_argument("--timeout", type=positive_time, default=60.0)
    a = ap.parse_args()
    if not 1 <= a.count <= 1_000_000:
        raise SystemExit("--count must be 1..1000000")
    if a.dport + (a.count - 1) // 64000 > 65535:
        raise SystemExit("--dport too high for --count flows")
    dl = Deadline(a.timeout)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    src = socket.inet_aton(a.src)
    dst = socket.inet_aton(a.dst)
    payload = b"tandem-flow"
    start = time.monotonic()
    sent = 0
    batch = max(1, a.rate // 200)
    for i in range(a.count):
        if dl.expired():
            break
        sport = 1024 + i % 64000
        dport = a.dport + i // 64000
        udp_len = 8 + len(payload)
        pseudo = src + dst + struct.pack("!BBH", 0, 17, udp_len)
        udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
        csum = checksum(pseudo + udp) or 0xFFFF
        udp = struct.pack("!HHHH", sport, dport, udp_len, csum) + payload
        total = 20 + udp_len
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, i & 0xFFFF, 0, 64, 17, 0, src, dst)
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
        try:
            s.sendto(ip + udp, (a.dst, 0))
            sent += 1
        except OSError:
            time.sleep(0.001)
        if sent % batch == 0:
            # Pace: never ahead of the wanted rate.
            ahead = sent / a.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    emit({"result": "udp_flows", "sent": sent, "seconds": round(time.monotonic() - start, 3)})


if __name__ == "__main__":
    main()
