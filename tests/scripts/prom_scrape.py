#!/usr/bin/env python3
"""Scrapes a Prometheus endpoint in the tandem lab as a monitoring system
would: an HTTP GET of http://ADDR:PORT/metrics (urllib), the body parsed
by the exposition-format parser of the Prometheus project's own Python
client (Debian's python3-prometheus-client). A body the parser refuses
is an error. Prints one JSON object:
{"result":"prom_scrape","status":200,"content_type":...,"families":N,
 "samples":{"name{label=value,...}": value, ...}}.
Bounded by --timeout; the address must be inside the lab's 198.18.0.0/15."""

import argparse
import json
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from labnet import emit, lab_addr, port, positive_time


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--addr", type=lab_addr, required=True)
    ap.add_argument("--port", type=port, required=True)
    ap.add_argument("--timeout", type=positive_time, default=5.0)
    a = ap.parse_args()
    url = f"http://{a.addr}:{a.port}/metrics"
    with urllib.request.urlopen(url, timeout=a.timeout) as r:
        status = r.status
        ctype = r.headers.get("Content-Type", "")
        body = r.read().decode("utf-8")
    samples = {}
    families = 0
    for fam in text_string_to_metric_families(body):
        families += 1
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    emit({
        "result": "prom_scrape",
        "status": status,
        "content_type": ctype,
        "families": families,
        "samples": samples,
    })


if __name__ == "__main__":
    main()
