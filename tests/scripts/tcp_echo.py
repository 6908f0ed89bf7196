#!/usr/bin/env python3
"""TCP echo server for the tandem lab: echoes what each client sends and
logs, as JSON lines, every connection and every chunk it received
({"event":"recv","peer":..,"peer_port":..,"len":..,"text":..}), so a test
can tell whether some marker ever reached the application. Exits after
--timeout seconds."""

import argparse
import socket
import threading

from labnet import Deadline, emit, lab_addr, port, positive_time

LOCK = threading.Lock()


def log(obj):
    with LOCK:
        emit(obj)


def serve(conn, peer, dl):
    try:
        log({"event": "accept", "peer": peer[0], "peer_port": peer[1]})
        while not dl.expired():
            conn.settimeout(min(1.0, max(0.01, dl.left())))
            try:
                data = conn.recv(65536)
            except socket.timeout:
                continue
            if not data:
                break
            log({"event": "recv", "peer": peer[0], "peer_port": peer[1], "len": len(data),
                 "text": data[:400].decode("latin-1")})
            conn.sendall(data)
    except OSError as e:
        log({"event": "error", "peer": peer[0], "peer_port": peer[1], "error": str(e)})
    finally:
        conn.close()
        log({"event": "close", "peer": peer[0], "peer_port": peer[1]})


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bind", type=lab_addr, required=True)
    ap.add_argument("--port", type=port, required=True)
    ap.add_argument("--timeout", type=positive_time, default=300.0,
                    help="lifetime in seconds")
    a = ap.parse_args()
    dl = Deadline(a.timeout)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a.bind, a.port))
    s.listen(64)
    log({"event": "ready", "bind": a.bind, "port": a.port})
    while not dl.expired():
        s.settimeout(min(1.0, max(0.01, dl.left())))
        try:
            conn, peer = s.accept()
        except socket.timeout:
            continue
        threading.Thread(target=serve, args=(conn, peer, dl), daemon=True).start()
    log({"event": "exit"})


if __name__ == "__main__":
    main()
