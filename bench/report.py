#!/usr/bin/env python3
"""Turns the benchmark's result files (bench/run.sh, $WORK/res) into a markdown table.

Usage: report.py RESDIR --huge-mib N --requests N --concurrency N
"""
import argparse
import glob
import json
import os
import statistics

P = ("pt", "dist")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("res")
    ap.add_argument("--huge-mib", type=int, required=True)
    ap.add_argument("--requests", type=int, required=True)
    ap.add_argument("--concurrency", type=int, required=True)
    a = ap.parse_args()
    res = a.res

    def path(name):
        return os.path.join(res, name)

    def nums(name):
        try:
            with open(path(name)) as f:
                return [float(x) for x in f.read().split()]
        except FileNotFoundError:
            return []

    def med(name):
        v = nums(name)
        return statistics.median(v) if v else None

    def js(name):
        try:
            with open(path(name)) as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def windows(k, what):
        """The log windows of every repetition of one measurement."""
        found = (js(os.path.basename(p)) for p in sorted(glob.glob(path(f"{k}.{what}.[0-9]*.json"))))
        return [w for w in found if w is not None]

    rows = []  # (measure, pt, dist, ratio, target, met)

    def fmt(v, unit="", nd=2):
        return "n/a" if v is None else f"{v:.{nd}f}{unit}"

    def ratio_row(measure, pt, dist, unit, nd=2, target=None):
        r = pt / dist if pt is not None and dist else None
        met = ""
        tgt = ""
        if target is not None:
            tgt = f"≤ {target}×"
            met = "n/a" if r is None else ("met" if r <= target else "**missed**")
        rows.append((measure, fmt(pt, unit, nd), fmt(dist, unit, nd),
                     "n/a" if r is None else f"{r:.2f}", tgt, met))

    # -- pull times
    direct = {"many": med("direct.warm_many"), "big": med("direct.warm_big")}
    for img, label in (("many", "24-layer image (manylayers)"), ("big", "210 MiB layer (big)")):
        ratio_row(f"cold pull, {label}, s (median of {len(nums('pt.cold_' + img))})",
                  med(f"pt.cold_{img}"), med(f"dist.cold_{img}"), " s", 2, 0.8)
    for img, label in (("many", "24-layer image (manylayers)"), ("big", "210 MiB layer (big)")):
        if nums(f"pt-stream.cold_{img}"):
            ratio_row(f"cold pull, {label}, pullthrough with [s3] stream_misses = true, s "
                      f"(median of {len(nums('pt-stream.cold_' + img))})",
                      med(f"pt-stream.cold_{img}"), med(f"dist.cold_{img}"), " s", 2, 0.8)
    for img, label in (("many", "24-layer image (manylayers)"), ("big", "210 MiB layer (big)")):
        ratio_row(f"warm pull, {label}, s (median of {len(nums('pt.warm_' + img))}; "
                  f"direct from upstream: {fmt(direct[img], ' s')})",
                  med(f"pt.warm_{img}"), med(f"dist.warm_{img}"), " s", 2, 0.5)

    # -- manifest latency
    for by in ("tag", "digest"):
        lp, ld = js(f"pt.load_{by}.json") or {}, js(f"dist.load_{by}.json") or {}
        ratio_row(f"manifest GET by {by}, p50, ms", lp.get("p50_ms"), ld.get("p50_ms"), " ms", 2)
        ratio_row(f"manifest GET by {by}, p99, ms", lp.get("p99_ms"), ld.get("p99_ms"), " ms", 2, 0.5)
        ratio_row(f"manifest GET by {by}, requests/s", lp.get("rps"), ld.get("rps"), "", 0)
        for k, l in (("pt", lp), ("dist", ld)):
            if l and (l.get("errors") or l.get("not_sent")):
                rows.append((f"  ({k} by {by}: {l.get('errors')} errors, {l.get('not_sent')} not sent: "
                             f"{l.get('first_error')})", "", "", "", "", ""))
        wp, wd = js(f"pt.load_{by}.window.json"), js(f"dist.load_{by}.window.json")
        if wp and wd:
            n = a.requests + 50  # warm-up requests included in the window
            ratio_row(f"  upstream requests per manifest GET by {by}",
                      wp["upstream"]["requests"] / n, wd["upstream"]["requests"] / n, "", 2)
            ratio_row(f"  store (S3) requests per manifest GET by {by}",
                      wp["store_by_proxy"] / n, wd["store_by_proxy"] / n, "", 2)

    # -- upstream and store requests per pull
    def per_pull(k, what, f):
        ws = windows(k, what)
        return sum(f(w) for w in ws) / len(ws) if ws else None

    for phase in ("warm", "cold"):
        for img, label in (("many", "manylayers"), ("big", "big")):
            what = f"{phase}_{img}"
            up_all = {k: per_pull(k, what, lambda w: w["upstream"]["requests"]) for k in P}
            up_mget = {k: per_pull(k, what, lambda w: w["upstream"]["manifest_get"]) for k in P}
            up_mhead = {k: per_pull(k, what, lambda w: w["upstream"]["manifest_head"]) for k in P}
            st = {k: per_pull(k, what, lambda w: w["store_by_proxy"]) for k in P}
            ratio_row(f"upstream requests per {phase} pull, {label}", up_all["pt"], up_all["dist"], "", 1)
            if phase == "warm":
                met = {k: up_mget[k] for k in P}
                rows.append((f"upstream manifest GETs (HEADs) per warm pull, {label}",
                             f"{fmt(met['pt'], '', 1)} ({fmt(up_mhead['pt'], '', 1)})",
                             f"{fmt(met['dist'], '', 1)} ({fmt(up_mhead['dist'], '', 1)})", "",
                             "0 GETs", "n/a" if met["pt"] is None else
                             ("met" if met["pt"] == 0 else "**missed**")))
            ratio_row(f"store (S3) requests by the proxy per {phase} pull, {label}", st["pt"], st["dist"], "", 1)
            if phase == "warm":
                busy = {k: per_pull(k, what, lambda w: w["proxy"]["busy_ms"]) for k in P}
                ratio_row(f"  time in the proxy's answers per warm pull (sum of response times), {label}",
                          busy["pt"], busy["dist"], " ms", 0)
    calls = per_pull("pt", "warm_many", lambda w: w["proxy"]["store_calls"])
    if calls is not None:
        rows.append(("  (pullthrough's own count, sum of store_calls per warm manylayers pull)",
                     fmt(calls, "", 1), "", "", "", ""))

    # -- upstream bytes for cold pulls of the 210 MiB image
    def mb(v):
        return None if v is None else v / 1e6

    one = {k: mb(statistics.median([w["upstream"]["get_bytes"] for w in windows(k, "cold_big")]))
           if windows(k, "cold_big") else None for k in P}
    two = {k: mb((js(f"{k}.cold_big_x2.json") or {}).get("upstream", {}).get("get_bytes")) for k in P}
    ratio_row("upstream bytes, one cold pull of big, MB", one["pt"], one["dist"], " MB", 1)
    ratio_row("upstream bytes, two concurrent cold pulls of big, MB", two["pt"], two["dist"], " MB", 1)
    hb = {k: mb((js(f"{k}.cold_huge.json") or {}).get("upstream", {}).get("get_bytes")) for k in P}
    ratio_row(f"upstream bytes, one cold pull of the {a.huge_mib} MiB image, MB", hb["pt"], hb["dist"], " MB", 1)

    # -- memory
    def mib(name):
        v = nums(name)
        return v[0] / 1024 if v else None

    ratio_row("VmHWM after start (idle), MiB", mib("pt.rss_idle_kib"), mib("dist.rss_idle_kib"), " MiB", 1)
    pt_fill = mib("pt.rss_fill_kib")
    r = pt_fill / mib("dist.rss_fill_kib") if pt_fill and mib("dist.rss_fill_kib") else None
    rows.append((f"peak RSS (VmHWM) filling the {a.huge_mib} MiB blob, MiB", fmt(pt_fill, " MiB", 1),
                 fmt(mib("dist.rss_fill_kib"), " MiB", 1), "n/a" if r is None else f"{r:.2f}",
                 "≤ 96 MiB (64 + 4 × 8)",
                 "n/a" if pt_fill is None else ("met" if pt_fill <= 96 else "**missed**")))
    mm = mib("pt.rss_fill_mmap_kib")
    if mm is not None:
        rows.append((f"  same, pullthrough with MALLOC_MMAP_THRESHOLD_=1048576 (glibc), MiB",
                     fmt(mm, " MiB", 1), "", "", "≤ 96 MiB", "met" if mm <= 96 else "**missed**"))
    st = mib("pt-stream.rss_fill_kib")
    if st is not None:
        rows.append(("  same, pullthrough with [s3] stream_misses = true, MiB",
                     fmt(st, " MiB", 1), "", "", "≤ 96 MiB", "met" if st <= 96 else "**missed**"))
    ratio_row(f"cold pull of the {a.huge_mib} MiB image, s", med("pt.cold_huge"), med("dist.cold_huge"), " s", 2)
    if nums("pt-stream.cold_huge"):
        ratio_row("  same with [s3] stream_misses = true, s", med("pt-stream.cold_huge"),
                  med("dist.cold_huge"), " s", 2)

    try:
        with open(path("lambda_init.txt")) as f:
            lam = f.read().strip()
    except FileNotFoundError:
        lam = "n/a"
    lam_cell = lam if "\n" not in lam and len(lam) < 80 else "see below"
    rows.append(("Lambda init (bench/lambda_init.sh)", lam_cell, "", "", "", ""))

    print(f"Ratios are pullthrough / distribution (lower is better for times, latencies, requests, "
          f"bytes and memory). Manifest GETs: {a.requests} requests at concurrency {a.concurrency} "
          f"(after 50 unmeasured), e2e/manylayers, OCI manifest.")
    print()
    print("| measure | pullthrough (S3) | distribution 2.8 proxy (S3) | ratio | target | |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if lam_cell == "see below":
        print()
        print("Lambda init (bench/lambda_init.sh):")
        print()
        print("```")
        print(lam)
        print("```")
    print()
    print("Raw pull times (s):")
    print()
    for k in ("pt", "pt-stream", "dist", "direct"):
        for what in ("cold_many", "cold_big", "warm_many", "warm_big", "cold_huge"):
            v = nums(f"{k}.{what}")
            if v:
                print(f"- {k} {what}: {' '.join(f'{x:.2f}' for x in v)}")
    print()
    print("Upstream requests per pull by kind (averages over the repetitions; `other` is mostly "
          "`GET /v2/`):")
    print()
    kinds = ("manifest_get", "manifest_head", "blob_get", "blob_head", "other")
    print("| pull | proxy | " + " | ".join(kinds) + " |")
    print("|---|---|" + "---|" * len(kinds))
    for what in ("cold_many", "cold_big", "warm_many", "warm_big"):
        for k in P:
            ws = windows(k, what)
            if ws:
                print(f"| {what} | {k} | " + " | ".join(
                    f"{sum(w['upstream'][x] for w in ws) / len(ws):.1f}" for x in kinds) + " |")
    print()
    print("S3 operations per proxy, whole warm pulls of manylayers (all repetitions, incl. clients' presigned GETs):")
    print()
    for k in P:
        ops = {}
        for w in windows(k, "warm_many"):
            for op, n in w["s3"]["ops"].items():
                ops[op] = ops.get(op, 0) + n
        print(f"- {k}: {json.dumps(ops, sort_keys=True)}")


if __name__ == "__main__":
    main()
