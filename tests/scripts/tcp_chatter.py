#!/usr/bin/env python3
"""Long-lived TCP connections for the tandem lab's fault runs.

serve: a quiet TCP echo server on --bind:--port (prints only
{"event":"ready"}), for --timeout seconds.

chat: opens --connections TCP connections to --dst:--port, then on each
one sends a numbered line every --interval seconds and reads its echo. A
connection is lost when it is reset or closed, or when an echo is more
than --stall seconds late; the others go on. Prints {"event":"ready"} once
every connection is open, a {"event":"status",...} line every second, and
when --duration is over (or on SIGTERM) one result:
{"result":"tcp_chatter","connections":N,"lost":K,"max_wait_ms":W,
 "exchanges":E,"failures":[...]}.

Addresses must be inside 198.18.0.0/15; everything is bounded in time."""

import argparse
import select
import signal
import socket
import threading
import time

from labnet import Deadline, emit, lab_addr, port, positive_time


def serve(a):
    dl = Deadline(a.timeout)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a.bind, a.port))
    s.listen(256)
    emit({"event": "ready", "bind": a.bind, "port": a.port})

    def echo(c):
        try:
            while not dl.expired():
                c.settimeout(1.0)
                try:
                    d = c.recv(65536)
                except socket.timeout:
                    continue
                if not d:
                    break
                c.sendall(d)
        except OSError:
            pass
        finally:
            c.close()

    while not dl.expired():
        s.settimeout(min(1.0, max(0.01, dl.left())))
        try:
            c, _ = s.accept()
        except socket.timeout:
            continue
        threading.Thread(target=echo, args=(c,), daemon=True).start()


class Conn:
    def __init__(self, sock, i):
        self.sock, self.i = sock, i
        self.n, self.sent_at, self.buf, self.next_send = 0, None, b"", 0.0
        self.lost, self.exchanges, self.max_wait = None, 0, 0.0


def chat(a):
    dl = Deadline(a.duration + 30)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    conns = []
    for i in range(a.connections):
        s = socket.create_connection((a.dst, a.port), timeout=5)
        s.setblocking(False)
        conns.append(Conn(s, i))
    emit({"event": "ready", "connections": len(conns)})
    start = time.monotonic()
    next_status = start + 1
    while not stop["now"] and time.monotonic() - start < a.duration and not dl.expired():
        now = time.monotonic()
        for c in conns:
            if c.lost:
                continue
            if c.sent_at is None and now >= c.next_send:
                c.n += 1
                line = f"{c.i} {c.n}\n".encode()
                try:
                    c.sock.send(line)
                    c.sent_at = now
                except OSError as e:
                    c.lost = f"send: {e}"
            elif c.sent_at is not None and now - c.sent_at > a.stall:
                c.lost = f"no echo for {a.stall} s"
        live = [c for c in conns if not c.lost]
        r, _, _ = select.select([c.sock for c in live], [], [], 0.02)
        for c in live:
            if c.sock not in r:
                continue
            try:
                d = c.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                c.lost = f"recv: {e}"
                continue
            if not d:
                c.lost = "closed by the peer"
                continue
            c.buf += d
            if c.buf.endswith(b"\n") and c.sent_at is not None:
                t = time.monotonic()
                c.max_wait = max(c.max_wait, t - c.sent_at)
                c.exchanges += 1
                c.buf = b""
                c.sent_at = None
                c.next_send = t + a.interval
        if now >= next_status:
            next_status = now + 1
            emit({"event": "status", "lost": sum(1 for c in conns if c.lost),
                  "exchanges": sum(c.exchanges for c in conns)})
    for c in conns:
        try:
            c.sock.close()
        except OSError:
            pass
    emit({"result": "tcp_chatter", "connections": len(conns),
          "lost": sum(1 for c in conns if c.lost),
          "exchanges": sum(c.exchanges for c in conns),
          "max_wait_ms": round(max((c.max_wait for c in conns), default=0) * 1000, 1),
          "failures": [{"conn": c.i, "why": c.lost} for c in conns if c.lost][:20]})


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--bind", type=lab_addr, required=True)
    s.add_argument("--port", type=port, required=True)
    s.add_argument("--timeout", type=positive_time, default=3600)
    c = sub.add_parser("chat")
    c.add_argument("--dst", type=lab_addr, required=True)
    c.add_argument("--port", type=port, required=True)
    c.add_argument("--connections", type=int, default=10)
    c.add_argument("--interval", type=positive_time, default=0.2)
    c.add_argument("--stall", type=positive_time, default=10.0)
    c.add_argument("--duration", type=positive_time, required=True)
    a = ap.parse_args()
    if a.cmd == "serve":
        serve(a)
    else:
        if not 1 <= a.connections <= 1000:
            raise SystemExit("--connections must be 1..1000")
        chat(a)


if __name__ == "__main__":
    main()
