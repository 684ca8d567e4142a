"""Restart to ready after ``kill -9`` (``python bench/restart.py``).

Stores ``--count`` observations (default 1,000,000) through the shared-memory
ring (the fastest durable path: the C codec, group commits; SHACL at ingest
off while filling, as it changes nothing of what is stored), waits until every
record is durable, then ``kill -9``s knhkd and times, ``--restarts`` times,
from the exec of ``knhkd run`` on the same data directory to the first 200 of
``GET /ready`` (polled every 2 ms over loopback), killing it with ``-9``
again after each. Reported: every restart, their median and minimum, the
stored count, the data file's size; the goal is a median ≤ 2 s.

Exit status: 0 goal met; 1 goal missed; 2 the bench could not run.

Guarantees: every file it makes is under one temporary directory (the ring in
/dev/shm is removed with it), removed whatever happens; every daemon it starts
is killed; nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import ring as ring_bench  # noqa: E402  (bench/ring.py)

from knhkd.hotpath.records import RECORD, pack_record  # noqa: E402
from knhkd.hotpath.ring import Producer, Reader, ticks_now  # noqa: E402

GOAL_S = 2.0
LANES = 4
CAPACITY = 1 << 16
CHUNK = 4096


class BenchError(Exception):
    """The bench could not run (exit status 2)."""


def start(args: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """``knhkd run`` again with the command line ``ring_bench.daemon`` used,
    on another port."""
    args = [*args[:-1], f"127.0.0.1:{port}"]
    with log.open("ab") as out:
        # The shipped defaults (conf/doctrines, ...) are relative to the repository.
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO))


def wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float) -> None:
    url = f"http://127.0.0.1:{port}/ready"
    deadline = time.monotonic() + timeout
    while True:
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(url, timeout=1) as r,
        ):
            if r.status == 200:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise BenchError("knhkd did not become ready:\n" + log.read_text()[-3000:])
        time.sleep(0.002)


def kill9(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGKILL)
    proc.wait()


def fill(ring: Path, count: int) -> float:
    """Append ``count`` records over the lanes, waiting whenever a lane is
    full, until all are durable; returns the seconds it took."""
    stamp = ticks_now()
    chunk = b"".join(pack_record(3, 1 + i % 7, 20.0 + i / 10, stamp + i) for i in range(CHUNK))
    producers = [Producer(ring) for _ in range(LANES)]
    t0 = time.perf_counter()
    try:
        left = count
        stalled_since = time.monotonic()
        while left:
            progressed = False
            for p in producers:
                n = min(left, CHUNK)
                if n == 0:
                    break
                got = p.append_packed(chunk[: n * RECORD.size]).appended
                left -= got
                progressed |= got > 0
            if progressed:
                stalled_since = time.monotonic()
            elif time.monotonic() - stalled_since > 60:
                raise BenchError("the ring stayed full for 60 s: knhkd is not draining")
            else:
                time.sleep(0.005)
        with Reader(ring) as r:
            while any(s.durable < s.head for s in r.lane_stats()):
                if time.monotonic() - stalled_since > 300:
                    raise BenchError("records not durable after 300 s")
                time.sleep(0.01)
            durable = sum(s.durable for s in r.lane_stats())
        if durable < count:
            raise BenchError(f"only {durable} of {count} records durable")
    finally:
        for p in producers:
            p.close()
    return time.perf_counter() - t0


@contextlib.contextmanager
def workdir() -> Iterator[tuple[Path, Path]]:
    tmp = Path(tempfile.mkdtemp(prefix="knhk-restart-bench-"))
    shm = Path("/dev/shm")
    ring_dir = (
        Path(tempfile.mkdtemp(prefix="knhk-restart-bench-", dir=shm))
        if shm.is_dir() and os.access(shm, os.W_OK)
        else tmp
    )
    try:
        yield tmp, ring_dir / "obs.ring"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(ring_dir, ignore_errors=True)


def run(count: int, restarts: int) -> dict[str, Any]:
    with workdir() as (tmp, ring):
        # bench/ring.py's daemon: the ring, SHACL at ingest off; ready once it
        # logs so. Killed with -9 here; its own stop then finds it gone.
        with ring_bench.daemon(tmp, ring, LANES, CAPACITY, shacl=False) as proc:
            fill_s = fill(ring, count)
            kill9(proc)
        args = [str(a) for a in proc.args]  # type: ignore[union-attr]
        data = Path(args[args.index("--data-dir") + 1])
        log = tmp / "restarts.log"
        times: list[float] = []
        for _ in range(restarts):
            port = ring_bench.free_port()
            t0 = time.perf_counter()
            proc = start(args, port, log)
            try:
                wait_ready(proc, port, log, 120)
                times.append(time.perf_counter() - t0)
            finally:
                kill9(proc)
        size = sum(f.stat().st_size for f in data.rglob("*.mdb"))
    median = statistics.median(times)
    return {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "observations": count,
        "fill_s": round(fill_s, 3),
        "fill_obs_per_s": round(count / fill_s),
        "data_mdb_bytes": size,
        "restart_to_ready_s": [round(t, 3) for t in times],
        "median_s": round(median, 3),
        "min_s": round(min(times), 3),
        "goal_s": GOAL_S,
        "goal_met": median <= GOAL_S,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1_000_000, help="observations to store")
    ap.add_argument("--restarts", type=int, default=3, help="kill -9 / restart rounds")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if args.count < 1 or args.restarts < 1:
        print("restart.py: --count and --restarts must be at least 1", file=sys.stderr)
        return 2
    try:
        result = run(args.count, args.restarts)
    except BenchError as exc:
        print(f"restart.py: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if result["goal_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
