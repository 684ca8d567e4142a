"""The seed's load profile (§2.5.1), open loop, against the real daemon.

Phases, one after the other on the same daemon:
1. ``baseline``: ``POST /api/v1/observations`` at 1,000 obs/s for 10 min, with
   ``POST /api/v1/patterns/detect`` at 10/min and ``POST /api/v1/proposals/validate``
   at 5/min beside it;
2. ``spike``: observations at 5,000 obs/s for 5 min, and beside them (unless
   ``--ring-rate 0``) a local producer appending to the daemon's shared-memory
   ring at ``--ring-rate`` records/s.

Single requests or batches: when the daemon accepts ``[http] workers`` (multi-core
ingest) the observations go one per request and the daemon runs ``--workers``
front-end processes; otherwise one Python event loop cannot take 1,000–5,000
requests/s, so they go ``--batch`` per request (the observation rate is kept:
the request rate is divided). ``--batch N`` forces N either way;
``--spike-batch N`` only in the spike (single requests where the workers can
take them, batches where they cannot). The report names which was used.

Every request's latency runs from its intended send time (no coordinated
omission; see bench/openloop.py). Thresholds, per phase and stream: p95 < 100 ms,
p99 < 150 ms, errors (non-2xx, broken connections, unanswered, ring refusals)
< 1 % of what was scheduled. ``--scale`` multiplies every duration (``--scale
0.05``: 30 s + 15 s). ``--wrk`` adds a cross-check: one closed-loop ingest phase
run by ``loadgen.py`` and by ``wrk`` (bench/wrk/observations.lua) for the same
time on the same connections, both reported (wrk cannot hold a rate, so the
comparison is closed loop).

Outputs: a table (or ``--json``: one JSON object), and in ``--out DIR`` the JSON
(``load.json``) and ``load.png`` (latency percentiles over time, throughput,
CPU and RSS of the daemon's processes) when matplotlib (the ``bench`` extra) is
installed.

Exit status: 0 every threshold met; 1 one missed; 2 the bench could not run.
Traffic goes to loopback only; the daemon started here is always stopped and its
temporary data directory removed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openloop
from openloop import Daemon, RingStream, Sampler, Stream, Windows

HERE = Path(__file__).resolve().parent
WRK_SCRIPT = HERE / "wrk" / "observations.lua"
DETECT_BODY = json.dumps([openloop.OBS] * 20).encode()
VALIDATE_BODY = json.dumps(
    {
        "sector": "logistics",
        "description": "load profile: rate-limit bench.tick",
        "delta": {
            "remove": [],
            "add": [
                [
                    "<urn:knhk:policy:rate-limit:logistics:bench.tick>",
                    "<http://www.w3.org/1999/02/22-rdf-syntax-ns#type>",
                    "<urn:knhk:ontology#RateLimitPolicy>",
                ],
                [
                    "<urn:knhk:policy:rate-limit:logistics:bench.tick>",
                    "<urn:knhk:ontology#eventType>",
                    '"bench.tick"',
                ],
                [
                    "<urn:knhk:policy:rate-limit:logistics:bench.tick>",
                    "<urn:knhk:ontology#maxEvents>",
                    '"500"^^<http://www.w3.org/2001/XMLSchema#integer>',
                ],
                [
                    "<urn:knhk:policy:rate-limit:logistics:bench.tick>",
                    "<urn:knhk:ontology#windowSeconds>",
                    '"60.0"^^<http://www.w3.org/2001/XMLSchema#decimal>',
                ],
                [
                    "<urn:knhk:policy:rate-limit:logistics:bench.tick>",
                    "<urn:knhk:ontology#sector>",
                    "<urn:knhk:ontology#logistics>",
                ],
            ],
        },
    }
).encode()
P95_MS, P99_MS, MAX_ERRORS = 100.0, 150.0, 0.01


def base_config(workers: int | None) -> str:
    text = "[auth]\nanonymous_permissions = " + json.dumps(openloop.ANON_PERMS) + "\n"
    if workers is not None:
        text += f"\n[http]\nworkers = {workers}\n"
    return text


def plan(args: argparse.Namespace, workers: bool) -> dict[str, Any]:
    """Durations, rates and obs per request of each phase."""
    auto = 1 if workers else None
    batch_base = args.batch or auto or args.fallback_batch_baseline
    batch_spike = args.spike_batch or args.batch or auto or args.fallback_batch_spike
    return {
        "baseline": {
            "duration_s": round(600 * args.scale, 3),
            "obs_rate": args.baseline_rate,
            "batch": batch_base,
        },
        "spike": {
            "duration_s": round(300 * args.scale, 3),
            "obs_rate": args.spike_rate,
            "batch": batch_spike,
        },
    }


async def profile(
    args: argparse.Namespace,
    url: str,
    ring: Path | None,
    pid: int | None,
    port: int | None,
    data_dir: Path | None,
    phases: dict[str, Any],
) -> dict[str, Any]:
    sampler = Sampler(pid, port, data_dir, args.sample)
    stop = asyncio.Event()
    sampling = asyncio.ensure_future(sampler.run(stop))
    out: dict[str, Any] = {}
    try:
        for name, ph in phases.items():
            dur, batch = ph["duration_s"], ph["batch"]
            origin = asyncio.get_running_loop().time()
            win = functools.partial(Windows, args.window, origin)
            streams: list[Stream | RingStream] = [
                Stream(
                    "observations",
                    url + "/api/v1/observations",
                    openloop.obs_body(batch),
                    rate=ph["obs_rate"] / batch,
                    duration=dur,
                    warmup=args.warmup,
                    connections=args.connections,
                    windows=win(),
                    per_request=batch,
                ),
            ]
            if name == "baseline":
                streams += [
                    Stream(side, url + path, body, rate=per_min / 60, duration=dur, warmup=0,
                           connections=2, windows=win())
                    for side, path, body, per_min in (
                        ("patterns_detect", "/api/v1/patterns/detect", DETECT_BODY,
                         args.detect_per_min),
                        ("proposals_validate", "/api/v1/proposals/validate", VALIDATE_BODY,
                         args.validate_per_min),
                    )
                ]  # fmt: skip
            if name == "spike" and ring is not None and args.ring_rate > 0:
                streams.append(
                    RingStream(
                        ring,
                        rate=args.ring_rate,
                        duration=dur,
                        warmup=args.warmup,
                        tick=0.002,
                        windows=win(),
                    )
                )
            t_start = time.monotonic() - sampler.t0
            await openloop.run_streams(streams, args.drain)
            out[name] = {
                **ph,
                "started_at_s": round(t_start, 3),
                "ended_at_s": round(time.monotonic() - sampler.t0, 3),
                "streams": {s.name: s.summary() for s in streams},
            }
    finally:
        stop.set()
        await sampling
    out["samples"] = sampler.rows
    return out


def run_wrk(args: argparse.Namespace, url: str, duration: float) -> dict[str, Any]:
    """Closed loop: loadgen, then wrk, same endpoint, connections and time."""
    target = url + "/api/v1/observations"
    body = openloop.obs_body(1).decode()
    conns = args.wrk_connections
    lg = subprocess.run(
        [
            sys.executable,
            str(openloop.loadgen.__file__),
            "closed",
            "--url",
            target,
            "--body",
            body,
            "--duration",
            str(duration),
            "--warmup",
            "1",
            "--connections",
            str(conns),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    )
    ours = json.loads(lg.stdout)
    out: dict[str, Any] = {
        "duration_s": duration,
        "connections": conns,
        "loadgen": {
            "rps": ours["rps"],
            "ok_rps": ours["ok_rps"],
            "non_2xx": ours["non_2xx"],
            "errors": ours["errors"],
            "latency_ms": ours["latency_ms"],
        },
    }
    if shutil.which("wrk") is None:
        out["wrk"] = {"skipped": "wrk is not installed (Debian package wrk)"}
        return out
    done = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "-s",
            str(WRK_SCRIPT),
            target,
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=False,
    )
    out["wrk"] = parse_wrk(done.stdout)
    out["wrk"]["exit_status"] = done.returncode
    return out


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(text: str) -> dict[str, Any]:
    """Requests/sec, the latency distribution and error counts of wrk's report."""
    out: dict[str, Any] = {}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", text):
        out["rps"] = float(m.group(1))
    lat = {}
    for q, v, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M):
        lat[f"p{q}"] = round(float(v) * _UNITS[unit], 3)
    out["latency_ms"] = lat
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    if m := re.search(r"(\d+) requests in", text):
        out["requests"] = int(m.group(1))
    if "rps" not in out:
        out["raw"] = text[-2000:]
    return out


def verdicts(result: dict[str, Any]) -> dict[str, bool]:
    v: dict[str, bool] = {}
    for phase in ("baseline", "spike"):
        for name, s in result.get(phase, {}).get("streams", {}).items():
            lat = s["latency_ms"]
            ok = (
                lat["p95"] is not None
                and lat["p95"] < P95_MS
                and lat["p99"] is not None
                and lat["p99"] < P99_MS
                and s["error_rate"] is not None
                and s["error_rate"] < MAX_ERRORS
            )
            v[f"{phase}.{name}"] = ok
    if "durability" in result:
        v["durability"] = result["durability"]["pass"]
    return v


def plot(plt: Any, result: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(4, 1, figsize=(10, 12), sharex=True)
    lat_ax, thr_ax, cpu_ax, rss_ax = axes
    for phase in ("baseline", "spike"):
        ph = result.get(phase)
        if not ph:
            continue
        offset = ph["started_at_s"]
        for name, s in ph["streams"].items():
            rows = [r for r in s["windows"] if r["p99"] is not None]
            if not rows:
                continue
            t = [offset + r["t"] for r in rows]
            if name in ("observations", "ring"):
                for q, style in (("p50", ":"), ("p95", "--"), ("p99", "-")):
                    lat_ax.plot(t, [r[q] for r in rows], style, label=f"{phase} {name} {q}")
                thr_ax.plot(t, [r["ok_per_s"] for r in rows], label=f"{phase} {name}")
            else:
                lat_ax.plot(t, [r["p99"] for r in rows], "x", label=f"{phase} {name} p99")
        for ax in axes:
            ax.axvspan(ph["started_at_s"], ph["ended_at_s"], alpha=0.05)
    lat_ax.axhline(P95_MS, color="orange", lw=0.8)
    lat_ax.axhline(P99_MS, color="red", lw=0.8)
    lat_ax.set_yscale("log")
    lat_ax.set_ylabel("latency ms (from intended time)")
    lat_ax.legend(fontsize=6, ncol=2)
    thr_ax.set_ylabel("observations/s durable")
    thr_ax.legend(fontsize=7)
    samples = [s for s in result.get("samples", []) if s.get("cpu_cores") is not None]
    ts = [s["t"] for s in samples]
    cpu_ax.plot(ts, [s["cpu_cores"] for s in samples])
    cpu_ax.set_ylabel("daemon CPU (cores)")
    rss_ax.plot(ts, [s.get("rss_mb") for s in samples], label="RSS")
    rss_ax.plot(ts, [s.get("rss_anon_mb") for s in samples], label="anonymous")
    rss_ax.set_ylabel("daemon MB")
    rss_ax.set_xlabel("seconds")
    rss_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "scale": args.scale,
        "window_s": args.window,
        "thresholds": {"p95_ms": P95_MS, "p99_ms": P99_MS, "error_rate": MAX_ERRORS},
    }
    if args.url:
        openloop.loadgen.parse_target(args.url + "/")  # loopback only, before any load
        supported = args.batch == 1
        phases = plan(args, supported)
        report.update(target=args.url, workers=None, phases=phases)
        report.update(
            openloop.run_loop(
                profile(
                    args,
                    args.url,
                    Path(args.ring) if args.ring else None,
                    args.pid,
                    None,
                    None,
                    phases,
                )
            )
        )
        if args.wrk:
            report["wrk_crosscheck"] = run_wrk(args, args.url, args.wrk_duration)
        return report
    supported = openloop.workers_supported(base_config(None), args.daemon_cmd)
    workers = args.workers if supported else None
    phases = plan(args, supported)
    report.update(workers=workers, workers_supported=supported, phases=phases)
    with openloop.start_daemon(
        base_config(workers), daemon_cmd=args.daemon_cmd, report=report
    ) as d:
        report.update(openloop.run_loop(_profile_daemon(args, d, phases)))
        if args.wrk:
            report["wrk_crosscheck"] = run_wrk(
                args, f"http://127.0.0.1:{d.port}", args.wrk_duration
            )
        counted = report["samples"][-1].get("ingested_total") if report["samples"] else None
        streams = [
            s
            for ph in ("baseline", "spike")
            for s in report.get(ph, {}).get("streams", {}).values()
        ]
        acked = sum(
            s["all_ok"] * s["obs_per_request"] for s in streams if s["name"] == "observations"
        )
        # Every ring record the lane's durable cursor passed (warm-up included).
        ring = sum(s["durable"] for s in streams if s["name"] == "ring")
        report["durability"] = {
            "acknowledged_obs": acked,
            "ring_durable": ring,
            "ingested_total_metric": counted,
            "pass": counted is not None and counted >= acked + ring,
        }
    return report


async def _profile_daemon(
    args: argparse.Namespace, d: Daemon, phases: dict[str, Any]
) -> dict[str, Any]:
    return await profile(
        args, f"http://127.0.0.1:{d.port}", d.ring, d.proc.pid, d.port, d.data_dir, phases
    )


def table(r: dict[str, Any], v: dict[str, bool]) -> str:
    lines = [f"workers: {r.get('workers')} (supported: {r.get('workers_supported')})"]
    lines.append(
        f"{'phase.stream':32} {'obs/req':>7} {'ok obs/s':>9} {'p50':>8} {'p95':>8} "
        f"{'p99':>8} {'max':>9} {'err%':>7}  verdict"
    )
    for key, ok in v.items():
        if "." not in key:
            continue
        phase, name = key.split(".")
        s = r[phase]["streams"][name]
        lat = s["latency_ms"]
        err = s["error_rate"]
        lines.append(
            f"{key:32} {s.get('obs_per_request', 1):>7} {s['ok_obs_per_s']:>9,.1f} "
            f"{lat['p50']!s:>8} {lat['p95']!s:>8} {lat['p99']!s:>8} {lat['max']!s:>9} "
            f"{100 * err if err is not None else math.nan:>7.3f}  {'ok' if ok else 'MISSED'}"
        )
    if "wrk_crosscheck" in r:
        w = r["wrk_crosscheck"]
        lines.append(
            f"wrk cross-check (closed loop, {w['connections']} conns, "
            f"{w['duration_s']} s): loadgen {w['loadgen']['ok_rps']} req/s "
            f"p50 {w['loadgen']['latency_ms']['p50']} ms p99 "
            f"{w['loadgen']['latency_ms']['p99']} ms; wrk {w['wrk'].get('rps')} req/s "
            f"{w['wrk'].get('latency_ms')} non-2xx {w['wrk'].get('non_2xx')}"
        )
    cpu = [s["cpu_cores"] for s in r.get("samples", []) if s.get("cpu_cores") is not None]
    rss = [s["rss_mb"] for s in r.get("samples", []) if s.get("rss_mb") is not None]
    anon = [s["rss_anon_mb"] for s in r.get("samples", []) if s.get("rss_anon_mb") is not None]
    if cpu:
        # RSS counts the pages of LMDB's mapped file a process has touched
        # (page cache, given back under pressure); anonymous is its own memory.
        lines.append(
            f"daemon CPU max {max(cpu):.2f} cores; RSS max {max(rss):.1f} MB"
            + (f", anonymous max {max(anon):.1f} MB (the rest: the mapped store)" if anon else "")
        )
    if "durability" in r:
        lines.append(f"durability: {r['durability']}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="load", description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every duration")
    p.add_argument("--baseline-rate", type=float, default=1000.0, help="obs/s")
    p.add_argument("--spike-rate", type=float, default=5000.0, help="obs/s")
    p.add_argument("--detect-per-min", type=float, default=10.0)
    p.add_argument("--validate-per-min", type=float, default=5.0)
    p.add_argument(
        "--ring-rate", type=float, default=5000.0, help="ring records/s beside the spike (0: none)"
    )
    openloop.add_common_args(p, "obs per request (0: 1 with workers, else the fallback sizes)")
    p.add_argument(
        "--spike-batch",
        type=int,
        default=0,
        help="obs per request in the spike only (the workers' capacity is below 5,000 req/s "
        "on a small box: single requests at baseline, batches in the spike)",
    )
    p.add_argument("--fallback-batch-baseline", type=int, default=10)
    p.add_argument("--fallback-batch-spike", type=int, default=50)
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured s before each phase")
    p.add_argument("--window", type=float, default=5.0, help="s per plotted window")
    p.add_argument("--sample", type=float, default=2.0, help="s between daemon samples")
    p.add_argument("--url", default="", help="target a running daemon (http://127.0.0.1:PORT)")
    p.add_argument("--pid", type=int, default=None, help="with --url: the daemon's pid")
    p.add_argument("--ring", default="", help="with --url: its ring file")
    p.add_argument("--wrk", action="store_true", help="add the wrk cross-check phase")
    p.add_argument("--wrk-duration", type=float, default=10.0)
    p.add_argument("--wrk-connections", type=int, default=16)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 0 < args.scale <= 1.0 or args.window <= 0 or args.sample <= 0:
        print("load: --scale in (0, 1], --window and --sample > 0", file=sys.stderr)
        return 2
    try:
        result = run(args)
    except (openloop.ingest.BenchError, subprocess.SubprocessError, OSError) as exc:
        print(f"load: could not run: {exc}", file=sys.stderr)
        return 2
    v = verdicts(result)
    result["verdicts"] = v
    openloop.write_out(args.out, "load", result, plot)
    print(json.dumps(result) if args.json else table(result, v))
    return 0 if v and all(v.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
