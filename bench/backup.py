"""Backup figures: backup time and size for N observations, ingest p99 with
and without a backup running (one run), incremental size and time, and
restore-to-ready time (RTO). Loopback only; run with a small --n to check it.

    .venv/bin/python bench/backup.py --n 20000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.integration.conftest import RunningDaemon, free_port, run_ctl, write_config

OBS = {"event_type": "bench.tick", "value": {"n": 0}, "sector": "generic", "metadata": {}}
BATCH = 500


def ingest(d: RunningDaemon, n: int) -> None:
    with httpx.Client(base_url=d.base, timeout=60.0) as c:
        for start in range(0, n, BATCH):
            body = [{**OBS, "value": {"n": i}} for i in range(start, min(n, start + BATCH))]
            r = c.post("/api/v1/observations", json=body)
            r.raise_for_status()


def p99_while(d: RunningDaemon, busy: threading.Event | None, seconds: float) -> float:
    lat: list[float] = []
    with httpx.Client(base_url=d.base, timeout=30.0) as c:
        end = time.monotonic() + seconds
        while time.monotonic() < end and (busy is None or busy.is_set()):
            t = time.perf_counter()
            c.post("/api/v1/observations", json=OBS).raise_for_status()
            lat.append(time.perf_counter() - t)
    lat.sort()
    return lat[int(len(lat) * 0.99) - 1] * 1000 if lat else float("nan")


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="knhkd-bench-backup-"))
    out: dict[str, float] = {"observations": args.n}
    d = RunningDaemon(tmp / "data", free_port(), write_config(tmp / "knhkd.toml"))
    try:
        d.start()
        t = time.perf_counter()
        ingest(d, args.n)
        out["ingest_s"] = time.perf_counter() - t
        out["ingest_p99_ms_idle"] = p99_while(d, None, 2.0)
        busy = threading.Event()
        busy.set()
        result: dict[str, float] = {}

        def take() -> None:
            t0 = time.perf_counter()
            res = d.ctl("backup", "--out", str(tmp / "backups"), "--kind", "base", timeout=3600)
            result["s"] = time.perf_counter() - t0
            result["rc"] = res.returncode
            busy.clear()

        th = threading.Thread(target=take)
        th.start()
        out["ingest_p99_ms_during_backup"] = p99_while(d, busy, 3600.0)
        th.join()
        assert result["rc"] == 0, "backup failed"
        out["backup_s"] = result["s"]
        out["backup_bytes"] = size_of(tmp / "backups")
        ingest(d, max(1, args.n // 10))
        t = time.perf_counter()
        assert d.ctl("backup", "--out", str(tmp / "backups")).returncode == 0
        out["incremental_s"] = time.perf_counter() - t
        out["incremental_bytes"] = size_of(tmp / "backups") - out["backup_bytes"]
        key = d.data_dir / "keys" / "signing.key"
        t = time.perf_counter()
        res = run_ctl(
            d.data_dir,
            "restore",
            "--from",
            str(tmp / "backups"),
            "--data-dir",
            str(tmp / "restored"),
            "--signing-key",
            str(key),
            timeout=3600,
        )
        assert res.returncode == 0, res.stderr
        r = RunningDaemon(tmp / "restored", free_port(), d.config)
        r.start()
        out["restore_to_ready_s"] = time.perf_counter() - t
        r.stop()
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:32} {v:,.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
