#!/usr/bin/env python3
"""TCP connect probe for the tandem lab: connects to --dst:--port with a
--connect-timeout and classifies the outcome, as JSON lines:

  {"event":"connected","src":..,"sport":..}  (as soon as connected)
  {"result":"tcp_probe","outcome":"connected"|"refused"|"timeout"|"unreachable",
   "seconds":..., "reply":...}                (last line)

With --send TEXT it sends TEXT and waits for the first answer bytes; with
--hold S it keeps the connection open S seconds before closing it (so the
firewall's table can be inspected meanwhile). Bounded by --timeout."""

import argparse
import errno
import socket
import time

from labnet import Deadline, emit, lab_addr, port, positive_time


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dst", type=lab_addr, required=True)
    ap.add_argument("--port", type=port, required=True)
    ap.add_argument("--connect-timeout", type=positive_time, default=2.0)
    ap.add_argument("--send", default=None)
    ap.add_argument("--hold", type=float, default=0.0)
    ap.add_argument("--timeout", type=positive_time, default=20.0)
    a = ap.parse_args()
    dl = Deadline(a.timeout)
    start = time.monotonic()
    res = {"result": "tcp_probe", "dst": a.dst, "port": a.port, "outcome": None,
           "errno": None, "reply": None}
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(min(a.connect_timeout, dl.left()))
    try:
        s.connect((a.dst, a.port))
        res["outcome"] = "connected"
        res["connect_seconds"] = round(time.monotonic() - start, 4)
        src, sport = s.getsockname()
        res.update(src=src, sport=sport)
        emit({"event": "connected", "src": src, "sport": sport})
    except socket.timeout:
        res["outcome"] = "timeout"
    except ConnectionRefusedError:
        res.update(outcome="refused", errno="ECONNREFUSED")
    except OSError as e:
        res.update(outcome="unreachable", errno=errno.errorcode.get(e.errno, str(e.errno)),
                   error=str(e))
    res["seconds"] = round(time.monotonic() - start, 4)
    if res["outcome"] == "connected":
        try:
            if a.send is not None:
                s.sendall(a.send.encode())
                s.settimeout(max(0.01, min(5.0, dl.left())))
                res["reply"] = s.recv(65535)[:400].decode("latin-1")
            hold = min(max(a.hold, 0.0), dl.left())
            if hold > 0:
                time.sleep(hold)
        except OSError as e:
            res["io_error"] = str(e)
    s.close()
    emit(res)


if __name__ == "__main__":
    main()
