#!/usr/bin/env python3
"""Turns the benchmark's result files (bench/run.sh, $WORK/res) into a markdown table.

Usage: report.py RESDIR --huge-mib N --requests N --concurrency N [--readers N]

Result files (one per figure; missing ones are reported as n/a): <proxy>.<name>, proxy one of
pt (pullthrough, S3 store, default settings), dist (distribution), pt-redirect (pullthrough with
[s3] stream_misses = false), pt-fs (pullthrough with the filesystem store), direct (no proxy).
Numbers are whitespace separated, one per repetition; *.json are log windows (logstats.py).
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
    ap.add_argument("--readers", type=int, default=8)
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

    def n_of(name):
        return f"median of {len(nums(name))}"

    # -- pull times (pullthrough with its default settings: cold blobs streamed from a spill file)
    direct = {"many": med("direct.warm_many"), "big": med("direct.warm_big")}
    images = (("many", "24-layer image (manylayers)"), ("big", "210 MiB layer (big)"),
              ("huge", f"{a.huge_mib} MiB layer (huge)"))
    for img, label in images:
        ratio_row(f"cold pull, {label}, s ({n_of('pt.cold_' + img)})",
                  med(f"pt.cold_{img}"), med(f"dist.cold_{img}"), " s", 2, 0.8)
    for n in (2, 4):
        ratio_row(f"{n} concurrent cold pulls of big, until the slowest client ended, s "
                  f"({n_of(f'pt.cold_big_x{n}')})",
                  med(f"pt.cold_big_x{n}"), med(f"dist.cold_big_x{n}"), " s", 2, 0.6)
    fs, dr = med("pt-fs.cold_big"), direct["big"]
    r = fs / dr if fs is not None and dr else None
    rows.append((f"cold pull of big, pullthrough with the filesystem store, s ({n_of('pt-fs.cold_big')}); "
                 f"ratio to the direct pull from the upstream ({n_of('direct.warm_big')}: {fmt(dr, ' s')})",
                 fmt(fs, " s"), "", "n/a" if r is None else f"{r:.2f}", "≤ 1.1× direct",
                 "n/a" if r is None else ("met" if r <= 1.1 else "**missed**")))
    for img, label in images:
        if nums(f"pt-redirect.cold_{img}"):
            ratio_row(f"  context: cold pull, {label}, pullthrough with [s3] stream_misses = false "
                      f"(copy, then redirect), s ({n_of('pt-redirect.cold_' + img)})",
                      med(f"pt-redirect.cold_{img}"), med(f"dist.cold_{img}"), " s", 2)
    for img, label in images[:2]:
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

    def bytes_med(k, what):
        """Median upstream GET bytes over the repetitions' windows (older runs: one window file)."""
        ws = windows(k, what) or [w for w in [js(f"{k}.{what}.json")] if w is not None]
        return mb(statistics.median([w["upstream"]["get_bytes"] for w in ws])) if ws else None

    for what, label in (("cold_big", "one cold pull of big"),
                        ("cold_big_x2", "two concurrent cold pulls of big"),
                        ("cold_big_x4", "four concurrent cold pulls of big"),
                        ("cold_huge", f"one cold pull of the {a.huge_mib} MiB image"),
                        (f"cold_huge_x{a.readers}",
                         f"{a.readers} concurrent GETs of the cold {a.huge_mib} MiB blob")):
        b = {k: bytes_med(k, what) for k in P}
        ratio_row(f"upstream bytes, {label}, MB", b["pt"], b["dist"], " MB", 1)

    # -- memory
    def mib(name):
        """The highest of the repetitions' VmHWM values (KiB), in MiB."""
        v = nums(name)
        return max(v) / 1024 if v else None

    def rss_row(measure, pt, dist, note="", target=96, bad=0):
        r = pt / dist if pt is not None and dist else None
        met = "n/a" if pt is None else ("**missed**" if bad or pt > target else "met")
        rows.append((measure, fmt(pt, " MiB", 1) + note, fmt(dist, " MiB", 1),
                     "n/a" if r is None else f"{r:.2f}", f"≤ {target} MiB (64 + 4 × 8)", met))

    ratio_row("VmHWM after start (idle), MiB", mib("pt.rss_idle_kib"), mib("dist.rss_idle_kib"), " MiB", 1)
    rss_row(f"peak RSS (VmHWM) filling the {a.huge_mib} MiB blob, one client, MiB "
            f"(highest of {len(nums('pt.rss_fill_kib'))})",
            mib("pt.rss_fill_kib"), mib("dist.rss_fill_kib"))
    n = a.readers
    bad = {k: nums(f"{k}.huge_x{n}_bad") for k in P}
    nbad = {k: int(bad[k][0]) if bad[k] else 0 for k in P}
    rss_row(f"peak RSS (VmHWM) while {n} clients GET the cold {a.huge_mib} MiB blob at once, MiB",
            mib(f"pt.rss_x{n}_kib"), mib(f"dist.rss_x{n}_kib"),
            f" ({nbad['pt']} of {n} clients failed)" if nbad["pt"] else "", bad=nbad["pt"])
    if nbad["dist"]:
        rows.append((f"  (distribution: {nbad['dist']} of {n} clients failed)", "", "", "", "", ""))
    ratio_row(f"  {n} concurrent GETs of the cold {a.huge_mib} MiB blob, until the slowest client ended, s",
              med(f"pt.cold_huge_x{n}"), med(f"dist.cold_huge_x{n}"), " s", 2)
    mm = mib("pt.rss_fill_mmap_kib")
    if mm is not None:
        rows.append(("  peak RSS filling, pullthrough with MALLOC_MMAP_THRESHOLD_=1048576 (glibc), MiB",
                     fmt(mm, " MiB", 1), "", "", "≤ 96 MiB", "met" if mm <= 96 else "**missed**"))
    rd = mib("pt-redirect.rss_fill_kib")
    if rd is not None:
        rows.append(("  context: peak RSS filling, pullthrough with [s3] stream_misses = false, MiB",
                     fmt(rd, " MiB", 1), "", "", "", ""))

    try:
        with open(path("lambda_init.txt")) as f:
            lam = f.read().strip()
    except FileNotFoundError:
        lam = "n/a"
    lam_cell = lam if "\n" not in lam and len(lam) < 80 else "see below"
    rows.append(("Lambda init (bench/lambda_init.sh)", lam_cell, "", "", "", ""))

    print(f"Ratios are pullthrough / distribution unless the measure says otherwise (lower is better "
          f"for times, latencies, requests, bytes and memory). pullthrough runs with its default "
          f"settings (cold blobs streamed from a spill file, uploaded to S3 once verified) except in "
          f"rows that name a setting. Manifest GETs: {a.requests} requests at concurrency "
          f"{a.concurrency} (after 50 unmeasured), e2e/manylayers, OCI manifest.")
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
    for k in ("pt", "pt-redirect", "pt-fs", "dist", "direct"):
        for what in ("cold_many", "cold_big", "warm_many", "warm_big", "cold_huge", "cold_big_x2",
                     "cold_big_x4", f"cold_huge_x{a.readers}"):
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
