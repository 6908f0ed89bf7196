#!/usr/bin/env python3
"""ARP census for the tandem lab: broadcasts --count ARP requests for
--target on --iface (one every 200 ms) and reports, as one JSON object,
every distinct MAC address that answered for it within --wait seconds
after the last request. A cluster must answer with exactly one."""

import argparse
import socket
import struct
import time

from labnet import Deadline, emit, lab_addr, positive_time


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iface", required=True)
    ap.add_argument("--target", type=lab_addr, required=True)
    ap.add_argument("--source", type=lab_addr, required=True, help="our address")
    ap.add_argument("--count", type=int, default=3)
    ap.add_argument("--wait", type=positive_time, default=1.0)
    ap.add_argument("--timeout", type=positive_time, default=10.0)
    a = ap.parse_args()
    dl = Deadline(a.timeout)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
    s.bind((a.iface, 0))
    mac = s.getsockname()[4][:6]
    tip, sip = socket.inet_aton(a.target), socket.inet_aton(a.source)
    req = (b"\xff" * 6 + mac + b"\x08\x06"
           + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
           + mac + sip + b"\x00" * 6 + tip).ljust(60, b"\x00")
    macs = {}
    sent = 0
    end = None
    next_send = time.monotonic()
    s.settimeout(0.05)
    while not dl.expired():
        now = time.monotonic()
        if sent < max(1, min(a.count, 20)) and now >= next_send:
            s.send(req)
            sent += 1
            next_send = now + 0.2
            if sent == max(1, min(a.count, 20)):
                end = now + a.wait
        if end is not None and now >= end:
            break
        try:
            f = s.recv(2048)
        except socket.timeout:
            continue
        if len(f) < 42 or f[12:14] != b"\x08\x06":
            continue
        op = struct.unpack("!H", f[20:22])[0]
        if op == 2 and f[28:32] == tip:
            m = f[22:28].hex(":")
            macs[m] = macs.get(m, 0) + 1
    emit({"result": "arp_who", "target": a.target, "sent": sent, "macs": macs})


if __name__ == "__main__":
    main()
