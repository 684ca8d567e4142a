"""Durability and integrity under faults: kill -9, SIGTERM, tampering."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import lmdb
import pytest

from tests.integration.conftest import RunningDaemon, run_ctl

pytestmark = pytest.mark.integration

OBS = {"event_type": "line.tick", "value": {"n": 0}, "sector": "manufacturing", "metadata": {}}


def _hammer(d: RunningDaemon, acked: list[str], stop: threading.Event, worker: int) -> None:
    """Post until stopped; record every id the daemon acknowledged with 201."""
    n = 0
    with httpx.Client(base_url=d.base, timeout=10.0, headers=d.headers("producer")) as c:
        while not stop.is_set() and n < 5000:
            n += 1
            batch = n % 3 == 0
            body = [OBS] * 4 if batch else {**OBS, "value": {"n": n, "w": worker}}
            try:
                r = c.post("/api/v1/observations", json=body)
            except httpx.HTTPError:
                return  # the daemon died mid-request: that request was never acknowledged
            if r.status_code == 201:
                data = r.json()
                acked.extend(data["ids"] if batch else [data["id"]])


def _load(
    d: RunningDaemon, seconds: float, workers: int = 8
) -> tuple[list[str], threading.Event, list[threading.Thread]]:
    acked: list[str] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_hammer, args=(d, acked, stop, i)) for i in range(workers)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    return acked, stop, threads


def _all_present(d: RunningDaemon, ids: list[str]) -> None:
    with d.client() as c:
        for obs_id in ids:
            r = c.get(f"/api/v1/observations/{obs_id}")
            assert r.status_code == 200, f"acknowledged observation {obs_id} lost"


def test_kill9_during_concurrent_ingest_loses_nothing_acknowledged(daemon: RunningDaemon) -> None:
    acked, stop, threads = _load(daemon, 2.0)
    daemon.kill9()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    snapshot = list(acked)
    assert len(snapshot) > 50, "the load should have had time to get acknowledgements"
    assert len(set(snapshot)) == len(snapshot), "ids must be unique"

    daemon.start()
    _all_present(daemon, snapshot)
    st = json.loads(daemon.ctl("status", "--format", "json").stdout)
    assert st["observations"] >= len(snapshot)
    res = daemon.ctl("receipts", "verify-chain", "--format", "json")
    assert res.returncode == 0, res.stdout
    # Every stored observation is covered by a batch receipt.
    with daemon.client() as c:
        receipts = c.get("/api/v1/receipts", params={"limit": 1000}).json()["receipts"]
        after = receipts[-1]["body"]["seq"] if receipts else -1
        while len(receipts) % 1000 == 0 and receipts:
            more = c.get("/api/v1/receipts", params={"limit": 1000, "after": after}).json()
            if not more["receipts"]:
                break
            receipts += more["receipts"]
            after = more["next_after"]
    counted = sum(
        int(r["body"]["inputs"]["count"])
        for r in receipts
        if r["body"]["kind"] == "observation_batch_committed"
    )
    assert counted == st["observations"]


def test_sigterm_drains_and_exits_zero(daemon: RunningDaemon) -> None:
    acked, stop, threads = _load(daemon, 1.0, workers=4)
    code = daemon.stop(signal.SIGTERM)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert code == 0, daemon.log()
    assert not (daemon.data_dir / "admin.sock").exists()
    snapshot = list(acked)
    daemon.start()
    _all_present(daemon, snapshot)


def test_one_altered_byte_names_exactly_that_receipt(daemon: RunningDaemon) -> None:
    with daemon.client() as c:
        for _ in range(5):
            assert c.post("/api/v1/observations", json=OBS).status_code == 201
        c.post("/api/v1/mape-k/execute")
    assert daemon.stop() == 0
    ok = run_ctl(daemon.data_dir, "receipts", "verify-chain", "--format", "json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    total = json.loads(ok.stdout)["total_count"]
    victim = total // 2

    env = lmdb.open(str(daemon.data_dir / "lmdb"), max_dbs=16)
    db = env.open_db(b"receipts")
    with env.begin(write=True) as txn:
        raw = bytearray(txn.get(victim.to_bytes(8, "big"), db=db))
        raw[len(raw) // 2] ^= 0x01
        txn.put(victim.to_bytes(8, "big"), bytes(raw), db=db)
    env.close()

    bad = run_ctl(daemon.data_dir, "receipts", "verify-chain", "--format", "json")
    assert bad.returncode == 1
    rep = json.loads(bad.stdout)
    named = rep["signature_failures"] + rep["chain_breaks"] + rep["retrocausation_violations"]
    assert named == [f"rcpt-{victim:012d}"]
    assert rep["verified_count"] == total - 1

    # The running daemon reports the same through the admin socket.
    daemon.start()
    live = daemon.ctl("receipts", "verify-chain", "--format", "json")
    assert live.returncode == 1
    assert json.loads(live.stdout)["signature_failures"] == [f"rcpt-{victim:012d}"]
