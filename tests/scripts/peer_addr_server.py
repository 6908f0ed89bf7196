#!/usr/bin/env python3
"""HTTP server for the tandem lab that answers every GET with the address
it sees its peer at, as JSON: {"peer":"198.18.2.1","peer_port":40000}
(so a test sees what a NAT did to the source). Logs one JSON line per
request on stdout. Exits after --timeout seconds."""

import argparse
import http.server
import json
import threading

from labnet import Deadline, emit, lab_addr, port, positive_time


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        peer, peer_port = self.client_address[:2]
        body = json.dumps({"peer": peer, "peer_port": peer_port, "path": self.path}).encode()
        emit({"event": "request", "peer": peer, "peer_port": peer_port, "path": self.path})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bind", type=lab_addr, required=True)
    ap.add_argument("--port", type=port, required=True)
    ap.add_argument("--timeout", type=positive_time, default=300.0,
                    help="lifetime in seconds")
    a = ap.parse_args()
    dl = Deadline(a.timeout)
    http.server.ThreadingHTTPServer.allow_reuse_address = True
    srv = http.server.ThreadingHTTPServer((a.bind, a.port), Handler)
    srv.timeout = 1.0
    threading.Timer(a.timeout, srv.shutdown).start()
    emit({"event": "ready", "bind": a.bind, "port": a.port})
    srv.serve_forever(poll_interval=0.5)
    emit({"event": "exit", "expired": dl.expired()})


if __name__ == "__main__":
    main()
