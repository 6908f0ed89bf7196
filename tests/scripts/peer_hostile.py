#!/usr/bin/env python3
"""Hostile clients of tandem's members' service (TCP 1300) for the lab:
against --addr:--port (a member's HA address), one case after the other:
garbage (HTTP instead of a hello), oversize (a frame length over the
limit), badproof (a well-formed hello, then a proof made without the
key), half (half a frame, then silence until the server gives up), busy
(more connections than the server takes). Prints one JSON line per case:
{"case": NAME, "answer": what the server sent (text), "closed": bool}."""

import argparse
import os
import socket
import struct
import time

from labnet import emit, lab_addr, port


def read_all(s, wait):
    """What the server sends until it closes or `wait` seconds pass."""
    out = b""
    end = time.monotonic() + wait
    closed = False
    while time.monotonic() < end:
        s.settimeout(max(0.05, end - time.monotonic()))
        try:
            b = s.recv(4096)
        except socket.timeout:
            break
        except OSError:
            closed = True
            break
        if not b:
            closed = True
            break
        out += b
    return out, closed


def frame(body):
    return struct.pack("!H", len(body)) + body


def hello():
    serial = b"EVIL0001"
    return frame(b"T13C" + bytes([1, 1, len(serial)]) + serial + os.urandom(32))


def case(name, addr, p, data, wait, then=None):
    s = socket.create_connection((addr, p), timeout=3)
    if data:
        s.sendall(data)
    if then:
        first, _ = read_one(s)
        s.sendall(then(first))
    out, closed = read_all(s, wait)
    s.close()
    emit({"case": name, "answer": out[2:].decode("utf-8", "replace"), "closed": closed})


def read_one(s):
    """One pre-auth frame."""
    s.settimeout(3)
    head = b""
    while len(head) < 2:
        head += s.recv(2 - len(head))
    n = struct.unpack("!H", head)[0]
    body = b""
    while len(body) < n:
        body += s.recv(n - len(body))
    return body, n


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--addr", type=lab_addr, required=True)
    ap.add_argument("--port", type=port, default=1300)
    ap.add_argument("--connections", type=int, default=8, help="the server's limit")
    a = ap.parse_args()
    case("garbage", a.addr, a.port, b"\x00\x10GET / HTTP/1.1\r\n", 3)
    case("oversize", a.addr, a.port, b"\xff\xff" + b"x" * 100, 3)
    case("badproof", a.addr, a.port, hello(), 3, then=lambda _: frame(os.urandom(32)))
    case("half", a.addr, a.port, b"\x00\x40T1", 8)
    held = [socket.create_connection((a.addr, a.port), timeout=3) for _ in range(a.connections)]
    time.sleep(0.5)
    case("busy", a.addr, a.port, b"", 3)
    for s in held:
        s.close()


if __name__ == "__main__":
    main()
