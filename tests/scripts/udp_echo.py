#!/usr/bin/env python3
"""UDP echo server for the tandem lab: echoes every datagram back to its
sender and logs one JSON line per datagram ({"event":"recv","peer":...}).
Exits after --timeout seconds."""

import argparse
import socket

from labnet import Deadline, emit, lab_addr, port, positive_time


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bind", type=lab_addr, required=True)
    ap.add_argument("--port", type=port, required=True)
    ap.add_argument("--timeout", type=positive_time, default=300.0,
                    help="lifetime in seconds")
    a = ap.parse_args()
    dl = Deadline(a.timeout)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a.bind, a.port))
    emit({"event": "ready", "bind": a.bind, "port": a.port})
    n = 0
    while not dl.expired():
        s.settimeout(min(1.0, max(0.01, dl.left())))
        try:
            data, peer = s.recvfrom(65535)
        except socket.timeout:
            continue
        n += 1
        emit({"event": "recv", "peer": peer[0], "peer_port": peer[1], "len": len(data),
              "text": data[:200].decode("latin-1")})
        try:
            s.sendto(data, peer)
        except OSError as e:
            emit({"event": "send_error", "error": str(e)})
    emit({"event": "exit", "datagrams": n})


if __name__ == "__main__":
    main()
