"""Shared helpers of the tandem lab's host tools (stdlib only).

Every tool refuses any address outside the lab's 198.18.0.0/15, prints its
result as JSON on stdout, and is bounded in time by its --timeout.
"""

import ipaddress
import json
import socket
import struct
import sys
import time

LAB_NET = ipaddress.ip_network("198.18.0.0/15")


def lab_addr(text):
    """argparse type: an IPv4 address inside 198.18.0.0/15, else exit 2."""
    try:
        a = ipaddress.ip_address(text)
    except ValueError:
        raise SystemExit(f"refusing {text!r}: not an IPv4 address")
    if a.version != 4 or a not in LAB_NET:
        raise SystemExit(f"refusing {text}: lab traffic must stay inside {LAB_NET}")
    return str(a)


def port(text):
    """argparse type: a TCP/UDP port 1..65535."""
    p = int(text)
    if not 1 <= p <= 65535:
        raise SystemExit(f"bad port {text}")
    return p


def positive_time(text):
    """argparse type: a time in seconds, 0 < t <= 3600."""
    t = float(text)
    if not 0 < t <= 3600:
        raise SystemExit(f"bad time {text} (0 < t <= 3600 s)")
    return t


def emit(obj):
    """One JSON line on stdout, flushed at once."""
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


class Deadline:
    """A hard time limit."""

    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return max(0.0, self.end - time.monotonic())

    def expired(self):
        return self.left() <= 0.0


def checksum(data):
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


TCP_FLAGS = "FSRPAUEC"


def flag_names(flags):
    return "".join(c for i, c in enumerate(TCP_FLAGS) if flags & (1 << i))


def parse_ipv4(frame, offset=14):
    """Parses an Ethernet+IPv4(+TCP/UDP) frame; None if not IPv4.

    Returns a dict with src, dst, proto, and for TCP/UDP sport, dport, and
    for TCP seq, ack, flags, win; payload is the L4 payload bytes."""
    if offset == 14:
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":
            return None
    ip = frame[offset:]
    if len(ip) < 20 or ip[0] >> 4 != 4:
        return None
    ihl = (ip[0] & 15) * 4
    total = struct.unpack("!H", ip[2:4])[0]
    ip = ip[: max(total, ihl)]
    p = {
        "src": socket.inet_ntoa(ip[12:16]),
        "dst": socket.inet_ntoa(ip[16:20]),
        "proto": ip[9],
    }
    l4 = ip[ihl:]
    if p["proto"] == 6 and len(l4) >= 20:
        sport, dport, seq, ack, off, flags, win = struct.unpack("!HHIIBBH", l4[:16])
        doff = (off >> 4) * 4
        p.update(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=win,
                 payload=bytes(l4[doff:]))
    elif p["proto"] == 17 and len(l4) >= 8:
        sport, dport = struct.unpack("!HH", l4[:4])
        p.update(sport=sport, dport=dport, payload=bytes(l4[8:]))
    else:
        p["payload"] = bytes(l4)
    return p


def summary(p):
    """A JSON-friendly summary of a parsed packet."""
    s = {k: p[k] for k in ("src", "dst", "proto", "sport", "dport", "seq", "ack") if k in p}
    if "flags" in p:
        s["flags"] = flag_names(p["flags"])
    s["len"] = len(p.get("payload", b""))
    return s


def build_tcp(src, dst, sport, dport, seq, ack, flags, win, payload, ip_id=0x7a7a, ttl=64):
    """A full IPv4+TCP packet with correct checksums."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                      5 << 4, flags, win, 0, 0) + payload
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(tcp))
    csum = checksum(pseudo + tcp)
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ip_id, 0x4000, ttl, 6, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return hdr + tcp


def send_raw_ip(packet, dst):
    """Sends a complete IPv4 packet (IP_HDRINCL) towards dst (routed by the
    kernel of the namespace)."""
    lab_addr(dst)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        s.sendto(packet, (dst, 0))
    finally:
        s.close()


def sniffer(iface):
    """An AF_PACKET socket receiving every frame of iface in both
    directions (ETH_P_ALL: a socket bound to ETH_P_IP would not see the
    host's own outgoing frames); parse_ipv4 skips what is not IPv4."""
    eth_p_all = 0x0003
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(eth_p_all))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((iface, eth_p_all))
    return s


def seq_after(a, b):
    """True if sequence number a is after b (serial arithmetic)."""
    return 0 < ((a - b) & 0xFFFFFFFF) < 0x80000000
