#!/usr/bin/env python3
"""Counts what happened in a window of the benchmark's logs; prints one JSON object.

Usage: logstats.py --kind pt|dist --upstream LOG N --s3 LOG N --proxy LOG N
(each LOG is read from line N+1 on: the window starts where `mark` left it).

- upstream: distribution's access log (combined format): requests by kind, bytes sent for GETs.
- s3: s3s-fs's debug log, one "resolved route, op: <Op>" line per S3 request, by operation.
- proxy: pullthrough's request lines (status, store_calls) or distribution's access log (status).
- proxy busy_ms: the sum of the proxy's own response durations (pullthrough's `ms=`, whole
  milliseconds; distribution's `http.response.duration`): the proxy's share of a pull.
- store_by_proxy: S3 requests made by the proxy itself = all S3 requests minus the presigned GETs
  of clients, one per 307 the proxy answered (skopeo follows each redirect once).
"""
import argparse
import json
import re

ACCESS = re.compile(r'"(?P<m>[A-Z]+) (?P<path>/v2/\S*) HTTP/[\d.]+" (?P<status>\d{3}) (?P<bytes>\d+|-)')
S3_OP = re.compile(r"resolved route, op: (\w+)")
# pullthrough's request line (text format): ` request method=GET path=/v2/... status=307 ms=0 ...
# store_calls=1 ...`, fields read by name so that added fields never break the count.
PT_REQ = re.compile(r" request (method=.*)$")
PT_FIELD = re.compile(r"(\w+)=(\S+)")
DIST_DONE = re.compile(r'msg="response completed".* http\.response\.duration="?([0-9.]+)(ns|µs|us|ms|s)"?')
GO_UNIT_MS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1000.0}


def window(path, start):
    with open(path, errors="replace") as f:
        for i, line in enumerate(f):
            if i >= start:
                yield line


def access(path, start):
    out = {"requests": 0, "manifest_get": 0, "manifest_head": 0, "blob_get": 0, "blob_head": 0,
           "other": 0, "get_bytes": 0, "status_307": 0}
    for line in window(path, start):
        m = ACCESS.search(line)
        if not m:
            continue
        out["requests"] += 1
        kind = "manifest" if "/manifests/" in m["path"] else "blob" if "/blobs/" in m["path"] else None
        if kind and m["m"] in ("GET", "HEAD"):
            out[f"{kind}_{m['m'].lower()}"] += 1
        else:
            out["other"] += 1
        if m["m"] == "GET" and m["bytes"] != "-":
            out["get_bytes"] += int(m["bytes"])
        if m["status"] == "307":
            out["status_307"] += 1
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=["pt", "dist"], required=True)
    ap.add_argument("--upstream", nargs=2, required=True)
    ap.add_argument("--s3", nargs=2, required=True)
    ap.add_argument("--proxy", nargs=2, required=True)
    a = ap.parse_args()

    up = access(a.upstream[0], int(a.upstream[1]))
    ops = {}
    for line in window(a.s3[0], int(a.s3[1])):
        m = S3_OP.search(line)
        if m:
            ops[m[1]] = ops.get(m[1], 0) + 1
    s3_total = sum(ops.values())

    if a.kind == "pt":
        px = {"requests": 0, "status_307": 0, "store_calls": 0, "busy_ms": 0.0}
        for line in window(a.proxy[0], int(a.proxy[1])):
            m = PT_REQ.search(line)
            if m:
                f = dict(PT_FIELD.findall(m[1]))
                if not {"status", "ms", "store_calls"} <= f.keys():
                    # A changed log format must stop the run, not turn into wrong figures.
                    raise SystemExit(f"logstats: a pullthrough request line without status, ms "
                                     f"or store_calls: {line.strip()}")
                px["requests"] += 1
                px["status_307"] += f["status"] == "307"
                px["busy_ms"] += int(f["ms"])
                px["store_calls"] += int(f["store_calls"])
    else:
        px = access(a.proxy[0], int(a.proxy[1]))
        px["busy_ms"] = 0.0
        for line in window(a.proxy[0], int(a.proxy[1])):
            m = DIST_DONE.search(line)
            if m:
                px["busy_ms"] += float(m[1]) * GO_UNIT_MS[m[2]]

    print(json.dumps({
        "upstream": up,
        "s3": {"total": s3_total, "ops": ops},
        "proxy": px,
        "store_by_proxy": s3_total - px["status_307"],
    }))


if __name__ == "__main__":
    main()
