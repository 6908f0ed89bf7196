#!/usr/bin/env python3
"""A misbehaving host for the tandem lab: listens on --iface (AF_PACKET)
for tandem ICMP checks (IPv4 ICMP echo requests with identifier 0x5406
whose source and destination are the same lab address) and sends each one
back twice: as an echo reply (type 0, to the sender, from the MAC the
check was sent to: what a host that answers pings for any address does)
and unchanged (a loop). Prints {"event":"ready"} once listening, one
{"event":"reflected",...} line per check, and at the end (after
--duration seconds, or --max checks) one JSON object:
{"result":"reflector","checks":N,"frames_sent":M}."""

import argparse
import ipaddress
import select
import socket
import struct

from labnet import LAB_NET, Deadline, checksum, emit, positive_time, sniffer

PACKET_OUTGOING = 4
ID_PROBE = 0x5406


def check_request(frame):
    """True for a tandem ICMP check request inside the lab's range."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[14] != 0x45:
        return False
    if frame[23] != 1 or frame[26:30] != frame[30:34]:
        return False
    if ipaddress.ip_address(frame[26:30]) not in LAB_NET:
        return False
    return frame[34] == 8 and struct.unpack("!H", frame[38:40])[0] == ID_PROBE


def as_reply(frame):
    """The echo reply a ping-answering host would make of the check."""
    total = struct.unpack("!H", frame[16:18])[0]
    f = bytearray(frame[: 14 + total])
    f[0:6], f[6:12] = frame[6:12], frame[0:6]
    if f[6:12] == b"\xff" * 6:
        f[6:12] = b"\x02\x00\x00\x00\xee\x01"
    f[34] = 0
    f[36:38] = b"\x00\x00"
    f[36:38] = struct.pack("!H", checksum(bytes(f[34:])))
    return bytes(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iface", required=True)
    ap.add_argument("--duration", type=positive_time, required=True)
    ap.add_argument("--max", type=int, default=1000, help="checks to reflect at most")
    a = ap.parse_args()
    s = sniffer(a.iface)
    dl = Deadline(a.duration)
    emit({"event": "ready", "iface": a.iface})
    checks = sent = 0
    while not dl.expired() and checks < a.max:
        r, _, _ = select.select([s], [], [], min(0.2, dl.left()))
        if not r:
            continue
        frame, addr = s.recvfrom(65535)
        if addr[2] == PACKET_OUTGOING or not check_request(frame):
            continue
        checks += 1
        for f in (as_reply(frame), frame):
            try:
                s.send(f)
                sent += 1
            except OSError:
                pass
        emit({"event": "reflected", "to": frame[6:12].hex(":"), "dst": frame[0:6].hex(":"),
              "addr": socket.inet_ntoa(frame[26:30])})
    emit({"result": "reflector", "checks": checks, "frames_sent": sent})


if __name__ == "__main__":
    main()
