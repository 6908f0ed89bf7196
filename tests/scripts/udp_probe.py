#!/usr/bin/env python3
"""UDP probe for the tandem lab: a connected UDP socket sends a payload to
--dst:--port up to --count times (each try waits --wait s for an answer)
and reports, as one JSON object, what came back:

  outcome "reply"      an answer arrived (its text is included)
  outcome "refused"    ICMP port unreachable (ConnectionRefusedError)
  outcome "unreachable" another ICMP error (host/net unreachable, prohibited)
  outcome "timeout"    nothing at all within the tries

The whole run is bounded by --timeout."""

import argparse
import errno
import socket
import time

from labnet import Deadline, emit, lab_addr, port, positive_time


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dst", type=lab_addr, required=True)
    ap.add_argument("--port", type=port, required=True)
    ap.add_argument("--bind", type=lab_addr, default=None, help="local address")
    ap.add_argument("--sport", type=int, default=0, help="local port (0: any)")
    ap.add_argument("--payload", default="tandem-udp-probe")
    ap.add_argument("--count", type=int, default=3)
    ap.add_argument("--wait", type=positive_time, default=1.0)
    ap.add_argument("--timeout", type=positive_time, default=10.0)
    a = ap.parse_args()
    dl = Deadline(a.timeout)
    start = time.monotonic()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if a.bind or a.sport:
        s.bind((a.bind or "0.0.0.0", a.sport))
    s.connect((a.dst, a.port))
    local = s.getsockname()
    res = {"result": "udp_probe", "dst": a.dst, "port": a.port, "src": local[0],
           "sport": local[1], "outcome": "timeout", "sent": 0, "errno": None}
    for _ in range(max(1, min(a.count, 100))):
        if dl.expired():
            break
        try:
            s.send(a.payload.encode())
            res["sent"] += 1
            s.settimeout(max(0.01, min(a.wait, dl.left())))
            data = s.recv(65535)
            res.update(outcome="reply", text=data[:200].decode("latin-1"))
            break
        except socket.timeout:
            continue
        except ConnectionRefusedError:
            res.update(outcome="refused", errno="ECONNREFUSED")
            break
        except OSError as e:
            res.update(outcome="unreachable", errno=errno.errorcode.get(e.errno, str(e.errno)),
                       error=str(e))
            break
    res["seconds"] = round(time.monotonic() - start, 4)
    emit(res)


if __name__ == "__main__":
    main()
