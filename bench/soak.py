"""Soak: a steady mixed read/write load for a long time, and whether anything drifts.

Writes: ``POST /api/v1/observations`` at ``--rate`` obs/s (default 1,000), one per
request when the daemon accepts ``[http] workers``, else ``--batch`` per request
(same observation rate). Reads beside them at ``--read-rate`` requests/s in total,
spread over ``GET /api/v1/receipts?limit=10``, ``GET /api/v1/snapshots/current``
and ``GET /api/v1/patterns?limit=10``. Open loop: latency from each request's
intended send time (bench/openloop.py).

Every ``--sample`` seconds (default 10): resident memory (all and anonymous) and
open file descriptors of the daemon's processes, the LMDB file's allocated size,
the p99 of the writes sent in that interval, and the MAPE-K cycle time (mean of
``knhk_mape_k_cycle_duration_seconds`` over the interval).

Pass/fail (each reported with its figures):
- ``errors``: no non-2xx, broken connection or unanswered request, writes or reads;
- ``rss_growth``: anonymous resident memory at the end at most ``--max-rss-growth``
  (10 %) above its value when the warm-up ends (``--warmup``, default a tenth of
  the run). Anonymous, because LMDB's map is file-backed: the pages of a growing
  database count in RSS without being a leak (total RSS is reported too);
- ``fd_growth``: open descriptors at the end at most ``--fd-slack`` above the
  value after warm-up, each the fewest of ``FD_SAMPLES`` samples (a leak stays
  in every sample; a forwarded request's socket pair in flight at one sample,
  two descriptors each, does not);
- ``durability``: the daemon's ``knhk_observations_ingested_total`` at the end
  covers every observation a 201 acknowledged;
- ``p99_drift``: p99 of the writes in the last span ≤ ``--max-p99-ratio`` (1.2) ×
  the first span after warm-up; a span is 10 minutes, or a sixth of a shorter run.
  ``--no-latency-verdict`` reports the ratio without judging it (a shared machine's
  latency is no verdict on the daemon; the test in ``make test`` uses this).

Outputs: a summary (``--json``: one JSON object), ``--out DIR``: ``soak.json`` and
``soak.png`` (needs matplotlib, the ``bench`` extra). Exit status: 0 pass, 1 a
criterion failed, 2 the soak could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from pathlib import Path
from typing import Any

import openloop
from openloop import Sampler, Stream, Windows

READS = ("/api/v1/receipts?limit=10", "/api/v1/snapshots/current", "/api/v1/patterns?limit=10")
# Samples at each end of the run whose fewest open descriptors are compared.
FD_SAMPLES = 3


async def soak(args: argparse.Namespace, d: openloop.Daemon, batch: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{d.port}"
    sampler = Sampler(d.proc.pid, d.port, d.data_dir, args.sample)
    origin = asyncio.get_running_loop().time()
    writes = Stream(
        "writes",
        url + "/api/v1/observations",
        openloop.obs_body(batch),
        rate=args.rate / batch,
        duration=args.duration,
        warmup=0,
        connections=args.connections,
        windows=Windows(args.sample, origin),
        per_request=batch,
    )
    reads = [
        Stream(
            f"read {path}",
            url + path,
            b"",
            method="GET",
            rate=args.read_rate / len(READS),
            duration=args.duration,
            warmup=0,
            connections=4,
            windows=Windows(args.sample, origin),
        )
        for path in READS
    ]
    stop = asyncio.Event()
    sampling = asyncio.ensure_future(sampler.run(stop))
    try:
        await openloop.run_streams([writes, *reads], args.drain)
    finally:
        stop.set()
        await sampling
    return {
        "p99_spans": span_p99s(writes.win, args),
        "writes": writes.summary(),
        "reads": {s.name: s.summary() for s in reads},
        "samples": sampler.rows,
    }


def span_p99s(win: Windows, args: argparse.Namespace) -> tuple[float | None, float | None, float]:
    """p99 of the writes sent in the first span after warm-up and in the last span.

    A span is 10 minutes, or a sixth of a shorter run, in whole sampling windows.
    """
    per = max(1, round(min(600.0, args.duration / 6) / win.width))
    start = math.ceil(args.warmup / win.width)
    end = math.floor(args.duration / win.width)  # windows past the run hold its drain only

    def p99(first: int, last: int) -> float | None:
        lat = sorted(x for i in range(first, last) for x in win.lat.get(i, ()))
        return openloop.ms(openloop.percentile(lat, 0.99))

    return p99(start, start + per), p99(max(start, end - per), end), per * win.width


def judge(r: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    samples = [s for s in r["samples"] if "rss_anon_mb" in s and not s.get("after_load")]
    after = [s for s in samples if s["t"] >= args.warmup] or samples[-1:]
    first, last = after[0], samples[-1]
    streams = [r["writes"], *r["reads"].values()]
    errors = sum(s["non_2xx"] + s["errors"] + s["unanswered"] for s in streams)
    growth = (last["rss_anon_mb"] - first["rss_anon_mb"]) / first["rss_anon_mb"]
    fds_start = min(s["fds"] for s in after[:FD_SAMPLES])
    fds_end = min(s["fds"] for s in samples[-FD_SAMPLES:])
    first_ms, last_ms, span = r["p99_spans"]
    ratio = round(last_ms / first_ms, 3) if first_ms and last_ms else None
    v: dict[str, Any] = {
        "errors": {"value": errors, "pass": errors == 0},
        "rss_growth": {
            "value": round(growth, 4),
            "max": args.max_rss_growth,
            "from_mb": first["rss_anon_mb"],
            "to_mb": last["rss_anon_mb"],
            "pass": growth <= args.max_rss_growth,
        },
        "fd_growth": {
            "value": fds_end - fds_start,
            "max": args.fd_slack,
            "from": fds_start,
            "to": fds_end,
            "pass": fds_end - fds_start <= args.fd_slack,
        },
        "p99_drift": {
            "span_s": span,
            "first_ms": first_ms,
            "last_ms": last_ms,
            "ratio": ratio,
            "max": args.max_p99_ratio,
            "pass": None
            if args.no_latency_verdict
            else (ratio is not None and ratio <= args.max_p99_ratio),
        },
    }
    # Every acknowledged write is counted by the daemon (201 = durable).
    acked = r["writes"]["all_ok"] * r["obs_per_write"]
    counted = r["samples"][-1].get("ingested_total")  # taken once the load is over
    v["durability"] = {
        "acknowledged_obs": acked,
        "ingested_total_metric": counted,
        "pass": counted is not None and counted >= acked,
    }
    v["pass"] = all(c["pass"] is not False for c in v.values())
    return v


def plot(plt: Any, r: dict[str, Any], path: Path) -> None:
    s = r["samples"]
    t = [x["t"] for x in s]
    fig, axes = plt.subplots(5, 1, figsize=(10, 13), sharex=True)
    axes[0].plot(t, [x.get("rss_mb") for x in s], label="RSS")
    axes[0].plot(t, [x.get("rss_anon_mb") for x in s], label="anonymous")
    axes[0].set_ylabel("daemon MB")
    axes[0].legend(fontsize=7)
    axes[1].plot(t, [x.get("fds") for x in s])
    axes[1].set_ylabel("open FDs")
    axes[2].plot(t, [x.get("lmdb_mb") for x in s])
    axes[2].set_ylabel("LMDB MB (allocated)")
    w = [x for x in r["writes"]["windows"] if x["p99"] is not None]
    axes[3].plot([x["t"] for x in w], [x["p99"] for x in w], label="writes p99")
    axes[3].plot([x["t"] for x in w], [x["p50"] for x in w], ":", label="writes p50")
    axes[3].set_ylabel("ms from intended time")
    axes[3].legend(fontsize=7)
    c = [x for x in s if x.get("cycle_ms") is not None]
    axes[4].plot([x["t"] for x in c], [x["cycle_ms"] for x in c], "o-")
    axes[4].set_ylabel("MAPE-K cycle ms (mean)")
    axes[4].set_xlabel("seconds")
    for ax in axes:
        ax.axvline(r["warmup_s"], color="grey", lw=0.6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=3600.0, help="seconds of load")
    p.add_argument("--rate", type=float, default=1000.0, help="observations/s written")
    p.add_argument("--read-rate", type=float, default=100.0, help="read requests/s in all")
    openloop.add_common_args(p, "obs per write (0: 1 with workers, else --fallback-batch)")
    p.add_argument("--fallback-batch", type=int, default=10)
    p.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--warmup", type=float, default=None, help="s (default: a tenth)")
    p.add_argument("--max-rss-growth", type=float, default=0.10)
    p.add_argument("--fd-slack", type=int, default=8)
    p.add_argument("--max-p99-ratio", type=float, default=1.2)
    p.add_argument("--no-latency-verdict", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 0 < args.duration <= 86_400 or args.rate <= 0 or args.sample <= 0:
        print("soak: --duration in (0, 86400], --rate and --sample > 0", file=sys.stderr)
        return 2
    if args.warmup is None:
        args.warmup = args.duration / 10
    config = "[auth]\nanonymous_permissions = " + json.dumps(openloop.ANON_PERMS) + "\n"
    report: dict[str, Any] = {
        "duration_s": args.duration,
        "rate": args.rate,
        "read_rate": args.read_rate,
        "warmup_s": args.warmup,
    }
    try:
        supported = openloop.workers_supported(config, args.daemon_cmd)
        if supported:
            config += f"\n[http]\nworkers = {args.workers}\n"
        batch = args.batch or (1 if supported else args.fallback_batch)
        report.update(workers=args.workers if supported else None, obs_per_write=batch)
        with openloop.start_daemon(config, daemon_cmd=args.daemon_cmd, report=report) as d:
            report.update(openloop.run_loop(soak(args, d, batch)))
    except (openloop.ingest.BenchError, OSError) as exc:
        print(f"soak: could not run: {exc}", file=sys.stderr)
        return 2
    v = judge(report, args)
    report["verdict"] = v
    openloop.write_out(args.out, "soak", report, plot)
    if args.json:
        print(json.dumps(report))
    else:
        w = report["writes"]
        print(
            f"soak {args.duration:g} s at {args.rate:g} obs/s ({batch}/request), "
            f"reads {args.read_rate:g}/s: writes ok {w['ok']} p99 {w['latency_ms']['p99']} ms"
        )
        for name, c in v.items():
            if name != "pass":
                mark = {True: "ok", False: "FAILED", None: "not judged"}[c["pass"]]
                figures = json.dumps({k: x for k, x in c.items() if k != "pass"})
                print(f"  {name:11} {mark:10} {figures}")
        print("PASS" if v["pass"] else "FAIL")
    return 0 if v["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
