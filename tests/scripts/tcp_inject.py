#!/usr/bin/env python3
"""Injects a crafted TCP segment for the tandem lab's firewall tests.

--mode window (default): opens a real TCP connection to --dst:--port (an
echo server), exchanges --hello, learns the connection's current sequence
numbers from an AF_PACKET sniffer on --iface (started before the SYN),
then sends --count raw segments (IP_HDRINCL, correct IP and TCP checksums)
with the same 4-tuple, flags ACK|PSH, ack = the current receive point and
seq = the current send point + --offset (default 2^30: far outside any
window; 0: exactly in window), carrying --marker. After --settle seconds it
checks the real connection still works (sends --after, expects the echo).

--mode bare: no connection at all; sends --count ACK|PSH segments with
--marker from --sport to --dst:--port with arbitrary seq/ack (unsolicited
inbound-looking traffic).

Prints one JSON object: {"result":"tcp_inject", "mode":..., "src":...,
"sport":..., "dst":..., "dport":..., "snd_nxt":..., "rcv_nxt":...,
"injected_seq":..., "injected":N, "hello_ok":bool, "after_ok":bool, ...}.
Exit code 0 even when the connection fails afterwards (the JSON says so);
2 on bad arguments. Bounded by --timeout."""

import argparse
import os
import socket
import time

from labnet import (Deadline, build_tcp, emit, lab_addr, parse_ipv4, port, positive_time,
                    send_raw_ip, seq_after, sniffer)

ACK, PSH = 0x10, 0x08


def recv_exactly(s, n, dl):
    got = b""
    while len(got) < n and not dl.expired():
        s.settimeout(max(0.01, min(1.0, dl.left())))
        try:
            chunk = s.recv(n - len(got))
        except socket.timeout:
            continue
        if not chunk:
            break
        got += chunk
    return got


def learn_seqs(sn, local, remote, quiet, dl):
    """Drains the sniffer until it has been quiet for `quiet` seconds;
    returns (snd_nxt, rcv_nxt, window, frames seen for the connection)."""
    snd = rcv = None
    win = 502
    seen = 0
    last = time.monotonic()
    sn.setblocking(False)
    while not dl.expired() and time.monotonic() - last < quiet:
        try:
            frame = sn.recv(65535)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        p = parse_ipv4(frame)
        if p is None or p["proto"] != 6:
            continue
        a, b = (p["src"], p["sport"]), (p["dst"], p["dport"])
        syn_fin = (1 if p["flags"] & 0x02 else 0) + (1 if p["flags"] & 0x01 else 0)
        end = (p["seq"] + len(p["payload"]) + syn_fin) & 0xFFFFFFFF
        if (a, b) == (local, remote):
            seen += 1
            last = time.monotonic()
            if snd is None or seq_after(end, snd):
                snd = end
            win = p["win"]
        elif (a, b) == (remote, local):
            seen += 1
            last = time.monotonic()
            if rcv is None or seq_after(end, rcv):
                rcv = end
    return snd, rcv, win, seen


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dst", type=lab_addr, required=True)
    ap.add_argument("--port", type=port, required=True)
    ap.add_argument("--iface", default="eth0")
    ap.add_argument("--mode", choices=["window", "bare"], default="window")
    ap.add_argument("--offset", type=int, default=1 << 30,
                    help="added to the current send sequence number")
    ap.add_argument("--marker", default="TANDEM-INJECTED-MARKER")
    ap.add_argument("--count", type=int, default=1, help="segments to inject (1..20)")
    ap.add_argument("--hello", default="hello-before")
    ap.add_argument("--after", default="hello-after")
    ap.add_argument("--settle", type=float, default=0.5)
    ap.add_argument("--src", type=lab_addr, default=None, help="source (bare mode)")
    ap.add_argument("--sport", type=port, default=47123, help="source port (bare mode)")
    ap.add_argument("--timeout", type=positive_time, default=15.0)
    a = ap.parse_args()
    dl = Deadline(a.timeout)
    count = max(1, min(a.count, 20))
    marker = a.marker.encode()
    res = {"result": "tcp_inject", "mode": a.mode, "dst": a.dst, "dport": a.port,
           "offset": a.offset, "injected": 0, "hello_ok": False, "after_ok": False,
           "error": None}

    if a.mode == "bare":
        src = a.src
        if src is None:
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probe.connect((a.dst, a.port))
            src = probe.getsockname()[0]
            probe.close()
        lab_addr(src)
        seq = int.from_bytes(os.urandom(4), "big")
        ack = int.from_bytes(os.urandom(4), "big")
        res.update(src=src, sport=a.sport, injected_seq=seq, injected_ack=ack)
        for i in range(count):
            pkt = build_tcp(src, a.dst, a.sport, a.port, seq, ack, ACK | PSH, 502, marker,
                            ip_id=(0x5a00 + i) & 0xFFFF)
            send_raw_ip(pkt, a.dst)
            res["injected"] += 1
            time.sleep(0.02)
        emit(res)
        return

    sn = sniffer(a.iface)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(min(5.0, dl.left()))
    try:
        s.connect((a.dst, a.port))
    except OSError as e:
        res["error"] = f"connect: {e}"
        emit(res)
        return
    local = s.getsockname()
    remote = (a.dst, a.port)
    res.update(src=local[0], sport=local[1])
    hello = a.hello.encode()
    s.sendall(hello)
    res["hello_ok"] = recv_exactly(s, len(hello), dl) == hello
    snd, rcv, win, seen = learn_seqs(sn, local, remote, 0.3, dl)
    res.update(snd_nxt=snd, rcv_nxt=rcv, frames_seen=seen)
    if snd is None or rcv is None:
        res["error"] = "the sniffer did not see the connection's segments"
        emit(res)
        s.close()
        return
    seq = (snd + a.offset) & 0xFFFFFFFF
    res["injected_seq"] = seq
    for i in range(count):
        pkt = build_tcp(local[0], a.dst, local[1], a.port, seq, rcv, ACK | PSH, win, marker,
                        ip_id=(0x6b00 + i) & 0xFFFF)
        send_raw_ip(pkt, a.dst)
        res["injected"] += 1
        time.sleep(0.02)
    time.sleep(max(0.0, min(a.settle, dl.left())))
    after = a.after.encode()
    try:
        s.sendall(after)
        echo = recv_exactly(s, len(after), dl)
        res["after_ok"] = echo == after
        if not res["after_ok"]:
            res["after_got"] = echo[:200].decode("latin-1")
    except OSError as e:
        res["after_error"] = str(e)
    s.close()
    sn.close()
    emit(res)


if __name__ == "__main__":
    main()
