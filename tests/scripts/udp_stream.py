#!/usr/bin/env python3
"""A steady UDP probe through the tandem lab: sends --rate datagrams a
second, each carrying its sequence number, to an echo server at
--dst:--port for --duration seconds, and counts the echoes that come
back. A datagram lost either way is a missing echo. Prints one JSON
object when done:

  sent, received      datagrams sent, distinct echoes received
  lost                sent - received
  lost_runs           up to 20 [first, last] runs of missing sequence numbers
  max_gap_ms          the longest time between two consecutive echoes
  max_gap_at_ms       when that gap began (ms after the first send)
  duplicates          echoes received more than once

Echoes still in flight at the end are waited for (--linger s). The run is
bounded by --duration + --linger + 5 s."""

import argparse
import socket
import struct
import time

from labnet import Deadline, emit, lab_addr, port, positive_time

MAGIC = b"TDST"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dst", type=lab_addr, required=True)
    ap.add_argument("--port", type=port, required=True)
    ap.add_argument("--rate", type=int, default=1000, help="datagrams a second (1..20000)")
    ap.add_argument("--duration", type=positive_time, default=5.0)
    ap.add_argument("--linger", type=positive_time, default=0.5)
    a = ap.parse_args()
    if not 1 <= a.rate <= 20000:
        ap.error("--rate must be 1..20000")
    if a.duration > 600:
        ap.error("--duration must be at most 600 s")
    dl = Deadline(a.duration + a.linger + 5.0)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((a.dst, a.port))
    s.setblocking(False)
    interval = 1.0 / a.rate
    total = int(a.duration * a.rate)
    got = {}
    dups = 0
    start = time.monotonic()
    sent = 0
    send_errors = 0

    def receive():
        nonlocal dups
        while True:
            try:
                data = s.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                continue
            if len(data) < 12 or data[:4] != MAGIC:
                continue
            (seq,) = struct.unpack("!Q", data[4:12])
            if seq in got:
                dups += 1
            else:
                got[seq] = time.monotonic()

    while sent < total and not dl.expired():
        due = start + sent * interval
        now = time.monotonic()
        if now < due:
            receive()
            time.sleep(min(due - now, 0.0005))
            continue
        try:
            s.send(MAGIC + struct.pack("!Q", sent) + b"x" * 48)
        except (BlockingIOError, ConnectionRefusedError, OSError):
            send_errors += 1
        sent += 1
        receive()
    end = time.monotonic() + a.linger
    while time.monotonic() < end and not dl.expired():
        receive()
        time.sleep(0.001)
    missing = [q for q in range(sent) if q not in got]
    runs = []
    for q in missing:
        if runs and runs[-1][1] == q - 1:
            runs[-1][1] = q
        else:
            runs.append([q, q])
    times = sorted(got.values())
    gap, gap_at = 0.0, 0.0
    # From the first send: a loss at the start counts too.
    prev = start
    for t in times:
        if t - prev > gap:
            gap, gap_at = t - prev, prev - start
        prev = t
    emit({
        "result": "udp_stream",
        "dst": a.dst,
        "port": a.port,
        "rate": a.rate,
        "sent": sent,
        "send_errors": send_errors,
        "received": len(got),
        "lost": sent - len(got),
        "lost_runs": runs[:20],
        "duplicates": dups,
        "max_gap_ms": round(gap * 1000, 3),
        "max_gap_at_ms": round(gap_at * 1000, 1),
    })


if __name__ == "__main__":
    main()
