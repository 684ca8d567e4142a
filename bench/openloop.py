"""What ``bench/load.py`` and ``bench/soak.py`` share: open-loop streams with
latency kept per time window, a ring producer driven at a fixed rate, a sampler
of the daemon's processes and figures, and a daemon started with a config.

Guarantees:
- Latency is measured from each request's *intended* send time (request *i* of
  a stream is due at t0 + i/R), never from when it was written: a slow answer
  delays the clock of everything queued behind it and that wait is counted (no
  coordinated omission). The streams are ``loadgen.OpenLoop`` runs; several run
  side by side in one event loop, each on its own connections.
- Ring records' latency runs from their intended append time to the moment the
  lane's *durable* cursor passes them (polled every tick, so it is an upper
  bound by at most one tick); a record the full lane refused counts as an error.
- The sampler reads ``/proc`` of the daemon and every process under it (front-end
  workers included) and ``/metrics`` on a thread, so the generator's schedule is
  not stalled by a slow scrape.
- ``http.workers`` is used only when the daemon accepts the key: ``knhkd
  check-config`` on a file naming it must exit 0 (an older daemon refuses unknown
  keys with exit 2), so the same bench runs before and after multi-core ingest.
- Targets are loopback only (``loadgen.parse_target``); the daemon started here
  gets a temporary data directory that is removed, and is stopped whatever happens.

Must never: measure from the actual write time; hold a request back to keep a
rate (an open loop sends on schedule or queues with its clock running).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter, defaultdict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import ingest  # noqa: E402
import loadgen  # noqa: E402

OBS = {"event_type": "bench.tick", "value": {"n": 1}, "sector": "generic", "metadata": {}}
# Routes beside ingest need permissions anonymous lacks by default; authentication
# stays off (loopback only) so the bench measures the stack, not token checks.
ANON_PERMS = [
    "READ_OBSERVATIONS",
    "READ_SNAPSHOTS",
    "READ_RECEIPTS",
    "READ_METRICS",
    "INGEST",
    "DETECT_PATTERNS",
    "VALIDATE_PROPOSALS",
]


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    return loadgen._nearest_rank(sorted_values, q)


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def summarize(lat: Sequence[float]) -> dict[str, float | None]:
    s = sorted(lat)
    return {
        "p50": ms(percentile(s, 0.50)),
        "p95": ms(percentile(s, 0.95)),
        "p99": ms(percentile(s, 0.99)),
        "max": ms(s[-1]) if s else None,
    }


# --------------------------------------------------------------------------- #
# HTTP streams
# --------------------------------------------------------------------------- #


@dataclass
class Windows:
    """Latencies and outcomes bucketed by intended send time."""

    width: float
    origin: float
    lat: dict[int, array[float]] = field(default_factory=lambda: defaultdict(lambda: array("d")))
    ok: Counter[int] = field(default_factory=Counter)
    bad: Counter[int] = field(default_factory=Counter)

    def index(self, stamp: float) -> int:
        return int((stamp - self.origin) // self.width)

    def rows(self, per_ok: int = 1) -> list[dict[str, Any]]:
        out = []
        for i in sorted(set(self.lat) | set(self.bad)):
            row: dict[str, Any] = {"t": round(i * self.width, 3), **summarize(self.lat[i])}
            row["ok_per_s"] = round(self.ok[i] * per_ok / self.width, 1)
            row["errors"] = self.bad[i]
            out.append(row)
        return out


class Stream(loadgen.OpenLoop):
    """One open-loop stream of one request, latency also kept per window."""

    def __init__(
        self,
        name: str,
        url: str,
        body: bytes,
        *,
        rate: float,
        duration: float,
        warmup: float,
        connections: int,
        windows: Windows,
        method: str = "POST",
        content_type: str = "application/json",
        per_request: int = 1,
    ) -> None:
        target = loadgen.parse_target(url)
        request = loadgen.build_request(target, method, body, content_type)
        res = loadgen.Result("open", url, connections, duration, warmup)
        super().__init__(
            target, request, connections, res, rate=rate, duration=duration, warmup=warmup
        )
        self.name = name
        self.win = windows
        self.per_request = per_request

    def record(self, stamp: float, t: float, status: int) -> None:
        super().record(stamp, t, status)
        if stamp >= self.record_from:
            i = self.win.index(stamp)
            self.win.lat[i].append(t - stamp)
            if 200 <= status < 300:
                self.win.ok[i] += 1
            else:
                self.win.bad[i] += 1

    def on_error(self, conn: loadgen.Conn) -> None:
        if conn.stamp >= self.record_from:
            self.win.bad[self.win.index(conn.stamp)] += 1
        super().on_error(conn)

    def summary(self) -> dict[str, Any]:
        self.res.extra.update(self.extra())
        self.res.extra["reconnects"] = self.reconnects
        s = self.res.summary()
        failed = s["non_2xx"] + s["errors"] + s["unanswered"]
        s["name"] = self.name
        s["obs_per_request"] = self.per_request
        s["ok_obs_per_s"] = round(s["ok_rps"] * self.per_request, 1)
        s["error_rate"] = round(failed / s["scheduled"], 6) if s["scheduled"] else None
        s["windows"] = self.win.rows(self.per_request)
        return s


async def run_streams(streams: Sequence[Stream | RingStream], drain: float) -> None:
    """Run streams side by side; every one is stopped and closed afterwards."""
    try:
        await asyncio.gather(*(s.go(drain) for s in streams))
    finally:
        for s in streams:
            if isinstance(s, Stream):
                s.stopping = True
                for conn in list(s.conns):
                    conn.close()


def obs_body(batch: int) -> bytes:
    if batch <= 1:
        return json.dumps(OBS).encode()
    return json.dumps([OBS] * batch).encode()


# --------------------------------------------------------------------------- #
# The ring
# --------------------------------------------------------------------------- #


class RingStream:
    """Appends records to one ring lane at a fixed rate; latency to durable."""

    def __init__(
        self,
        path: Path,
        *,
        rate: float,
        duration: float,
        warmup: float,
        tick: float,
        windows: Windows,
    ) -> None:
        from knhkd.hotpath.records import SECTOR_CODES, pack_record
        from knhkd.hotpath.ring import Producer

        self.name = "ring"
        self.producer = Producer(path)
        self.record = pack_record(SECTOR_CODES["generic"], 1, 21.5)
        self.rate, self.duration, self.warmup, self.tick = rate, duration, warmup, tick
        self.win = windows
        self.total = math.ceil((warmup + duration) * rate)
        self.pending: deque[tuple[int, float]] = deque()  # (seq, intended) not yet durable
        self.lat = array("d")
        self.appended = 0
        self.refused = 0
        self.unanswered = 0
        self.producer_durable = 0
        self.first_seq = self.producer.head()

    async def go(self, drain: float) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.005
        record_from = t0 + self.warmup
        interval = 1.0 / self.rate
        i = 0
        try:
            while True:
                t = loop.time()
                due = min(self.total, int((t - t0) / interval) + 1) if t >= t0 else 0
                if due > i:
                    n = due - i
                    got = self.producer.append_packed(self.record * n)
                    for k in range(got.appended):
                        stamp = t0 + (i + k) * interval
                        if stamp >= record_from:
                            self.pending.append((got.first_seq + k, stamp))
                    self.appended += got.appended
                    for k in range(got.appended, n):
                        if t0 + (i + k) * interval >= record_from:
                            self.refused += 1
                            self.win.bad[self.win.index(t0 + (i + k) * interval)] += 1
                    i = due
                self._collect(loop.time())
                if i >= self.total and not self.pending:
                    return
                if i >= self.total and loop.time() > t0 + self.total * interval + drain:
                    self.unanswered = len(self.pending)
                    give_up = loop.time()
                    self.lat.extend(give_up - stamp for _, stamp in self.pending)
                    return
                await asyncio.sleep(self.tick)
        finally:
            self.producer_durable = self.producer.durable() - self.first_seq
            self.producer.close()

    def _collect(self, t: float) -> None:
        durable = self.producer.durable()
        pending, win = self.pending, self.win
        while pending and pending[0][0] < durable:
            _, stamp = pending.popleft()
            self.lat.append(t - stamp)
            j = win.index(stamp)
            win.lat[j].append(t - stamp)
            win.ok[j] += 1

    def summary(self) -> dict[str, Any]:
        scheduled = math.ceil(self.duration * self.rate)
        failed = self.refused + self.unanswered
        return {
            "name": self.name,
            "target_rate": self.rate,
            "scheduled": scheduled,
            "appended": self.appended,
            "durable": self.producer_durable,
            "refused_full": self.refused,
            "unanswered": self.unanswered,
            "ok_obs_per_s": round(len(self.lat) / self.duration, 1) if self.duration else None,
            "error_rate": round(failed / scheduled, 6) if scheduled else None,
            "latency_ms": summarize(self.lat),
            "latency_from": "intended append time to the lane's durable cursor",
            "windows": self.win.rows(),
        }


# --------------------------------------------------------------------------- #
# The daemon
# --------------------------------------------------------------------------- #


def workers_supported(config_text: str, daemon_cmd: str = "") -> bool:
    """Whether this knhkd accepts ``[http] workers`` (check-config exit 0)."""
    with tempfile.TemporaryDirectory(prefix="knhkd-probe-") as tmp:
        path = Path(tmp) / "probe.toml"
        path.write_text(config_text + "\n[http]\nworkers = 2\n", encoding="utf-8")
        cmd = [*ingest.daemon_command(_Args(daemon_cmd)), "check-config", str(path)]
        done = subprocess.run(cmd, capture_output=True, timeout=60, check=False, cwd=ingest.REPO)
        return done.returncode == 0


@dataclass
class _Args:
    daemon_cmd: str = ""
    start_timeout: float = 60.0
    stop_timeout: float = 30.0


@dataclass
class Daemon:
    port: int
    proc: subprocess.Popen[bytes]
    data_dir: Path
    config: str
    log: Path

    @property
    def ring(self) -> Path:
        return self.data_dir / "observations.ring"


@contextlib.contextmanager
def start_daemon(
    config_text: str,
    *,
    daemon_cmd: str = "",
    start_timeout: float = 60.0,
    stop_timeout: float = 30.0,
    report: dict[str, Any],
) -> Iterator[Daemon]:
    """``knhkd run`` on 127.0.0.1 with a temp data dir; stopped (SIGTERM) at exit."""
    args = _Args(daemon_cmd, start_timeout, stop_timeout)
    with tempfile.TemporaryDirectory(prefix="knhkd-load-") as tmp:
        tmpdir = Path(tmp)
        data_dir = tmpdir / "data"
        config = tmpdir / "knhkd.toml"
        config.write_text(config_text, encoding="utf-8")
        port = ingest.free_port()
        cmd = [
            *ingest.daemon_command(args),
            "run",
            "--config",
            str(config),
            "--data-dir",
            str(data_dir),
            "--http-bind",
            f"127.0.0.1:{port}",
        ]
        log_path = tmpdir / "daemon.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=ingest.REPO, env=ingest.daemon_env(), stdout=log, stderr=subprocess.STDOUT
            )
            try:
                ingest._wait_ready(proc, port, start_timeout, log_path)
                report["daemon"] = {"pid": proc.pid, "config": config_text}
                yield Daemon(port, proc, data_dir, config_text, log_path)
            finally:
                code, took = ingest.stop(proc, stop_timeout)
                report["shutdown"] = {"exit_status": code, "seconds": round(took, 3)}
                if code != 0:
                    report["daemon_log_tail"] = ingest._tail(log_path)


# --------------------------------------------------------------------------- #
# Sampling
# --------------------------------------------------------------------------- #

_METRIC = re.compile(rb"^(knhk_[a-z_]+?)(?:\{[^}]*\})? (\S+)$", re.M)
WANTED = (
    "knhk_mape_k_cycle_duration_seconds_sum",
    "knhk_mape_k_cycle_duration_seconds_count",
    "knhk_observations_ingested_total",
)


def scrape(port: int) -> dict[str, float]:
    """The few counters the benches read, summed over their labels."""
    try:
        status, body = ingest.http_get(port, "/metrics", timeout=5.0)
    except OSError:
        return {}
    if status != 200:
        return {}
    out: dict[str, float] = {}
    for name, value in _METRIC.findall(body):
        key = name.decode()
        if key in WANTED:
            out[key] = out.get(key, 0.0) + float(value)
    return out


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


class Sampler:
    """Figures of the daemon (its process tree) every ``every`` seconds."""

    def __init__(
        self, pid: int | None, port: int | None, data_dir: Path | None, every: float
    ) -> None:
        self.pid, self.port, self.data_dir, self.every = pid, port, data_dir, every
        self.rows: list[dict[str, Any]] = []
        self._prev: tuple[float, float, dict[str, float]] | None = None
        self.t0 = time.monotonic()

    def _tree(self) -> list[int]:
        if self.pid is None:
            return []
        import psutil

        try:
            root = psutil.Process(self.pid)
            return [root.pid, *(c.pid for c in root.children(recursive=True))]
        except psutil.Error:
            return []

    def sample(self) -> dict[str, Any]:
        import psutil

        now = time.monotonic()
        pids = self._tree()
        cpu = 0.0
        rss = anon = fds = 0
        for pid in pids:
            with contextlib.suppress(OSError, ValueError, psutil.Error):
                times = psutil.Process(pid).cpu_times()
                cpu += times.user + times.system
                rss += _status_kb(pid, "VmRSS:")
                anon += _status_kb(pid, "RssAnon:")
                fds += len(os.listdir(f"/proc/{pid}/fd"))
        metrics = scrape(self.port) if self.port else {}
        row: dict[str, Any] = {"t": round(now - self.t0, 3), "processes": len(pids)}
        if pids:
            row.update(rss_mb=round(rss / 1024, 2), rss_anon_mb=round(anon / 1024, 2), fds=fds)
        if self.data_dir is not None:
            mdb = [p for p in self.data_dir.rglob("*.mdb") if p.name == "data.mdb"]
            row["lmdb_mb"] = round(sum(p.stat().st_blocks * 512 for p in mdb) / 2**20, 2)
        if self._prev is not None:
            pt, pcpu, pm = self._prev
            row["cpu_cores"] = round((cpu - pcpu) / (now - pt), 3) if pids else None
            n = metrics.get(WANTED[1], 0.0) - pm.get(WANTED[1], 0.0)
            s = metrics.get(WANTED[0], 0.0) - pm.get(WANTED[0], 0.0)
            row["cycles"] = int(n)
            row["cycle_ms"] = round(1000 * s / n, 3) if n > 0 else None
        row["ingested_total"] = metrics.get(WANTED[2])
        self._prev = (now, cpu, metrics)
        return row

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.rows.append(await loop.run_in_executor(None, self.sample))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every)
            if stop.is_set():
                last = await loop.run_in_executor(None, self.sample)
                last["after_load"] = True  # connections closed: not a load figure
                self.rows.append(last)
                return


def add_common_args(p: Any, batch_help: str) -> None:
    """The options load.py and soak.py share."""
    p.add_argument(
        "--workers", type=int, default=2, help="[http] workers, when the daemon accepts the key"
    )
    p.add_argument("--batch", type=int, default=0, help=batch_help)
    p.add_argument("--connections", type=int, default=64, help="per observation stream")
    p.add_argument("--drain", type=float, default=10.0, help="max s to wait for the last replies")
    p.add_argument("--daemon-cmd", default="", help="command instead of knhkd")
    p.add_argument("--out", default="", help="directory for the JSON and the PNG")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, or None (the bench extra is absent)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


NO_PLOT = "matplotlib is not installed (pip install -e '.[bench]'): no plot"


def write_out(out: str, name: str, report: dict[str, Any], draw: Any) -> None:
    """``--out``: NAME.png drawn by ``draw(report, path)`` when matplotlib is
    there (else a note in the report), then NAME.json."""
    if not out:
        return
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    plt = pyplot()
    if plt is None:
        report["plot"] = NO_PLOT
    else:
        draw(plt, report, path / f"{name}.png")
    (path / f"{name}.json").write_text(json.dumps(report, indent=1), encoding="utf-8")


def run_loop(coro: Any) -> Any:
    """Run on loadgen's event loop (select(): microsecond timers, tight slack)."""
    loop = loadgen._new_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()
