"""The figures the loop judges by, end to end: the real daemon measures its
request, ingest and commit latencies, SHACL refusals and ring appends (HTTP
and the shared-memory ring), /health and /metrics show them, and validation
stage 2 judges Q2, Q4 and Q5 on them; nothing unmeasured passes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lmdb
import msgspec
import pytest

from knhkd.hotpath.records import SECTOR_CODES
from knhkd.hotpath.ring import Producer
from knhkd.store.schema import TICK_BASELINE
from tests.integration.conftest import RunningDaemon
from tests.integration.test_ingest_shacl import VALID
from tests.integration.test_proposals import policy

pytestmark = pytest.mark.integration

# Every bound but Q2's wide: this test is about what is measured, not about
# how fast a shared machine is (validate/stages/s2_invariants.py has the bounds).
CONFIG = """
[ring]
path = "{ring}"
poll_interval_s = 0.002
lanes = 1
capacity = 4096
event_codes = {{ "1" = "line.tick", "2" = "transaction.execute" }}
[validate.invariants]
unmeasured = "reject"
max_schema_violation_rate = 0.05
hot_path_max_ticks = 100000.0
warm_path_max_ms = 600000.0
max_cpu_percent = 10000.0
max_tail_ms = 600000.0
max_tick_regression = 1000.0
"""
TICK = (SECTOR_CODES["manufacturing"], 1, 7.5)
# A transaction.execute value must be an object: its shapes refuse a number.
BAD = (SECTOR_CODES["finance"], 2, 50000)
# Producers time one append in 1,024 (KNHK_SAMPLE_PERIOD): one per batch here.
BATCH = 1024


def _append(p: Producer, record: tuple[Any, ...], batches: int) -> None:
    for _ in range(batches):
        got = p.append_batch([record] * BATCH)
        assert got.appended == BATCH
        deadline = time.monotonic() + 30
        while p.durable() < got.first_seq + BATCH:
            assert time.monotonic() < deadline, "ring batch not drained"
            time.sleep(0.01)


def _stage2(r: Any) -> dict[str, Any]:
    stage: dict[str, Any] = next(s for s in r.json()["validation"]["stages"] if s["stage"] == 2)
    return stage


def _subs(stage: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {v["id"]: (v["verdict"], v["message"]) for v in stage["sub_verdicts"]}


def _promote(c: Any, event_type: str) -> Any:
    pid = c.post("/api/v1/proposals", json=policy(event_type)).json()["id"]
    return c.post(f"/api/v1/proposals/{pid}/promote")


def test_figures_are_measured_shown_and_judged(make_daemon: Any, tmp_path: Path) -> None:
    ring = tmp_path / "obs.ring"
    d: RunningDaemon = make_daemon(CONFIG.format(ring=ring), auth=True)
    with d.client() as c, Producer(ring) as p:
        fresh = c.get("/health").json()["figures"]
        # No traffic yet: nothing of it is measured; the floor is, at start-up.
        assert fresh["hot_path_floor_ticks_p99"] > 0
        for name in ("hot_path_ticks_p99", "warm_path_ms", "commit_p99_ms",
                     "schema_violation_rate"):
            assert fresh[name] is None, (name, fresh)
        blind = _promote(c, "van.fresh")
        assert blind.status_code == 422
        assert _stage2(blind)["verdict"] == "failed"
        assert "not measured: Q2, Q4, Q5" in _stage2(blind)["message"]

        for _ in range(25):
            assert c.post("/api/v1/observations", json=VALID).status_code == 201
        _append(p, TICK, 22)
        deadline = time.monotonic() + 30
        while (f := c.get("/health").json()["figures"])["cpu_percent"] is None:
            assert time.monotonic() < deadline, "CPU never measured"
            time.sleep(0.5)
        assert f["hot_path_ticks_p99"] > 0 and f["hot_path_samples"] >= 20
        assert f["warm_path_ms"] > 0 and f["commit_p99_ms"] > 0 and f["p99_ms"] > 0
        assert f["request_p99_ms"]["/api/v1/observations"] > 0
        assert f["accepted"] == 25 + 22 * BATCH and f["schema_rejected"] == 0
        assert f["schema_violation_rate"] == 0.0
        assert f["tick_baseline_p99"] > 0 and f["tick_baseline_source"] == "start"

        measured = _promote(c, "van.measured")
        assert measured.status_code == 200, measured.text
        stage = _stage2(measured)
        assert stage["verdict"] == "passed", stage
        subs = _subs(stage)
        assert subs["Q2"] == (
            "passed", subs["Q2"][1]) and "schema-violation rate 0 <= 0.05" in subs["Q2"][1]
        assert subs["Q4"][0] == "passed" and "floor p99" in subs["Q4"][1]
        assert "hot-path p99" in subs["Q4"][1] and "warm-path p99" in subs["Q4"][1]
        assert subs["Q5"][0] == "passed" and "tick regression" in subs["Q5"][1]
        # The promotion took the hot path's p99 as Q5's new baseline.
        after = c.get("/health").json()["figures"]
        assert after["tick_baseline_source"] == "promotion"

        metrics = c.get("/metrics").text
        for series in ('knhk_figure_ticks_p99{figure="floor"}',
                       'knhk_figure_ticks_p99{figure="hot_path"}',
                       'knhk_figure_latency_p99_seconds{figure="ingest"}',
                       'knhk_figure_route_latency_p99_seconds{http_route="/api/v1/observations"}',
                       'knhk_figure_observations{outcome="accepted"}'):
            assert series in metrics, series

        # SHACL-violating traffic, by the ring and HTTP, above Q2's 5 %.
        _append(p, BAD, 2)
        bad_http = {"event_type": "transaction.execute", "sector": "finance",
                    "value": {"amount": -10}}
        assert c.post("/api/v1/observations", json=bad_http).status_code == 422
        f = c.get("/health").json()["figures"]
        assert f["schema_rejected"] == 2 * BATCH + 1
        rejected = _promote(c, "van.rejected")
        assert rejected.status_code == 422
        stage = _stage2(rejected)
        assert stage["verdict"] == "failed"
        verdict, why = _subs(stage)["Q2"]
        assert verdict == "failed" and "schema-violation rate" in why and "> 0.05" in why


def _current(c: Any) -> str:
    current: str = c.get("/api/v1/snapshots/current").json()["snapshot_id"]
    return current


def _restart(d: RunningDaemon) -> None:
    assert d.stop() == 0
    d.start()


def test_q5s_baseline_is_kept_from_the_last_snapshot_change_across_restarts(
    make_daemon: Any, tmp_path: Path
) -> None:
    """Q5's baseline is the hot path as it was when the current snapshot was
    made current, promoted or rolled back to; it is stored with that change,
    so a restart (an upgrade above all) is judged against it, not against
    its own first figures; one taken where this machine's floor was far
    from today's is not used, and the log says why."""
    ring = tmp_path / "obs.ring"
    # Unmeasured figures warn only: this test is about the baseline.
    d: RunningDaemon = make_daemon(
        CONFIG.format(ring=ring).replace('unmeasured = "reject"\n', ""), auth=True
    )
    with d.client() as c, Producer(ring) as p:
        _append(p, TICK, 22)
        assert c.get("/health").json()["figures"]["tick_baseline_source"] == "start"
        assert _promote(c, "van.first").status_code == 200
        promoted = _current(c)
        f = c.get("/health").json()["figures"]
        assert f["tick_baseline_source"] == "promotion"
        assert f["tick_baseline"]["snapshot_id"] == promoted
        baseline = f["tick_baseline"]
        assert baseline["p99_ticks"] == f["tick_baseline_p99"] > 0
        assert baseline["floor_p99_ticks"] == f["hot_path_floor_ticks_p99"]

    _restart(d)
    assert "Q5 tick baseline: " in d.log() and f"snapshot {promoted[:16]}" in d.log()
    with d.client() as c, Producer(ring) as p:
        f = c.get("/health").json()["figures"]
        # Nothing measured since the restart, and the baseline is the promotion's.
        assert f["hot_path_ticks_p99"] is None
        assert f["tick_baseline"] == baseline and f["tick_baseline_source"] == "promotion"
        _append(p, TICK, 22)
        dry = c.post("/api/v1/proposals/validate", json=policy("van.second"))
        assert dry.status_code == 200, dry.text
        stage = next(s for s in dry.json()["stages"] if s["stage"] == 2)
        _, why = _subs(stage)["Q5"]
        assert f"baseline {baseline['p99_ticks']:g} ticks" in why
        assert f"snapshot {promoted[:16]} made current" in why

        # A rollback is a snapshot change too: its baseline is taken then.
        r = c.post("/api/v1/snapshots/rollback")
        assert r.status_code == 200, r.text
        parent = _current(c)
        assert parent != promoted
        f = c.get("/health").json()["figures"]
        assert f["tick_baseline"]["snapshot_id"] == parent

    # A baseline taken where the floor was ten times today's is not comparable.
    assert d.stop() == 0
    env = lmdb.open(str(d.data_dir / "lmdb"), max_dbs=32, map_size=0)
    try:
        meta = env.open_db(b"meta", create=False)
        with env.begin(write=True, db=meta) as txn:
            stored = TICK_BASELINE.value.decode(txn.get(TICK_BASELINE.key))
            assert stored.snapshot_id == parent
            assert stored.floor_p99_ticks is not None
            far = msgspec.structs.replace(stored, floor_p99_ticks=stored.floor_p99_ticks * 10)
            txn.put(TICK_BASELINE.key, TICK_BASELINE.value.encode(far))
    finally:
        env.close()
    d.start()
    assert "not used; the first hot-path p99 measured will be the baseline" in d.log()
    with d.client() as c, Producer(ring) as p:
        f = c.get("/health").json()["figures"]
        assert f["tick_baseline"] is None and f["tick_baseline_p99"] is None
        _append(p, TICK, 22)
        f = c.get("/health").json()["figures"]
        assert f["tick_baseline_source"] == "start" and f["tick_baseline_p99"] > 0


def test_a_damaged_stored_baseline_is_reported_and_the_daemon_starts(make_daemon: Any) -> None:
    """Q5's stored baseline is a figure, not state the store depends on: one
    a failing disk damaged is named in the log and not used, and the daemon
    starts and serves as without one (``knhkctl fsck`` names it too)."""
    d: RunningDaemon = make_daemon()
    assert d.stop() == 0
    env = lmdb.open(str(d.data_dir / "lmdb"), max_dbs=32, map_size=0)
    try:
        meta = env.open_db(b"meta", create=False)
        with env.begin(write=True, db=meta) as txn:
            txn.put(TICK_BASELINE.key, b"\xc1damaged")
    finally:
        env.close()
    d.start()
    assert "Q5 tick baseline: the stored one is unreadable" in d.log(), d.log()
    with d.client(None) as c:
        f = c.get("/health").json()["figures"]
        assert f["tick_baseline"] is None and f["tick_baseline_source"] == ""
        assert c.post("/api/v1/observations", json=VALID).status_code == 201
    fsck = d.ctl("fsck")
    assert fsck.returncode != 0 and "figures.tick_baseline" in fsck.stdout + fsck.stderr
