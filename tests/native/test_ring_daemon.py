"""The ring with the real daemon (a subprocess): drain into LMDB, exactly once
across kill -9, back-pressure, the snapshot descriptor following promotion and
rollback, and a ring header this build cannot read refused at start."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from knhkd.hotpath.records import SECTOR_CODES
from knhkd.hotpath.ring import Consumer, Producer, Reader, RingFull
from knhkd.model import Observation
from knhkd.store.env import open_store
from tests.integration.conftest import RunningDaemon
from tests.native.conftest import (
    LANE_CONSUMED,
    LANE_DURABLE,
    VERSION_OFFSET,
    lane_field,
    spawn_producer,
    write_bytes,
)
from tests.native.producer_proc import well_formed

pytestmark = pytest.mark.integration

MakeDaemon = Callable[..., RunningDaemon]


def _ring_config(ring: Path, **extra: Any) -> str:
    lines = ["[ring]", f'path = "{ring}"', "poll_interval_s = 0.002"]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def _wait(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _all_durable(ring: Path) -> bool:
    with Reader(ring) as r:
        return all(s.durable == s.head for s in r.lane_stats())


def _stored(d: RunningDaemon) -> list[Observation]:
    """Every observation in the daemon's store (the daemon must be stopped)."""
    store = open_store(d.data_dir, readonly=True, exclusive=False)
    try:
        with store.reader() as txn:
            return list(store.tables.observations.values(txn))
    finally:
        store.close()


def _metric(d: RunningDaemon, name: str) -> float:
    text = httpx.get(d.base + "/metrics", headers=d.headers("observer"), timeout=10).text
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _exactly_once(stored: list[Observation], counts: dict[int, int]) -> None:
    seen = Counter((o.value[0], o.value[1]) for o in stored if well_formed(o.value))
    dupes = [k for k, n in seen.items() if n > 1]
    assert not dupes, f"ingested twice: {dupes[:5]}"
    for tag, n in counts.items():
        missing = [i for i in range(n) if (tag, i) not in seen]
        assert not missing, f"producer {tag}: {len(missing)} records lost, e.g. {missing[:5]}"


def test_producer_processes_and_http_share_the_daemon(
    make_daemon: MakeDaemon,
    procs: list[subprocess.Popen[str]],
    c_producer: Path,
    tmp_path: Path,
) -> None:
    ring = tmp_path / "obs.ring"
    d = make_daemon(
        _ring_config(ring, lanes=4, capacity=256, drain_batch=512)
        + 'event_codes = { "1" = "line.tick", "42" = "press.temperature" }\n'
    )
    counts = {1: 3000, 2: 3000, 3: 2000}
    procs += [spawn_producer(ring, tag, count=n, batch=16) for tag, n in counts.items()]
    c_proc = subprocess.Popen(
        [str(c_producer), str(ring), "700", "3", "42"], stdout=subprocess.PIPE, text=True
    )
    procs.append(c_proc)  # type: ignore[arg-type]
    with d.client() as c:
        for _ in range(20):
            obs = {"event_type": "http.tick", "sector": "generic", "value": 1}
            assert c.post("/api/v1/observations", json=obs).status_code == 201
    for p in procs:
        assert p.wait(timeout=60) == 0
    _wait(lambda: _all_durable(ring), "the ring to drain")
    assert _metric(d, 'knhk_observation_append_ticks_count{op="append"}') >= 1
    assert d.stop() == 0
    stored = _stored(d)
    _exactly_once(stored, counts)
    by_type = Counter(o.event_type for o in stored)
    assert by_type == {"line.tick": 8000, "press.temperature": 700, "http.tick": 20}
    assert {o.sector for o in stored if o.event_type == "press.temperature"} == {"manufacturing"}
    assert [o.seq for o in stored] == list(range(len(stored)))
    d.start()
    assert d.ctl("receipts", "verify-chain").returncode == 0
    with d.client() as c:
        receipts = c.get("/api/v1/receipts", params={"limit": 1000}).json()["receipts"]
    batch = [r for r in receipts if r["body"]["kind"] == "observation_batch_committed"]
    assert sum(int(r["body"]["inputs"]["count"]) for r in batch) == len(stored)


def test_kill9_and_restart_lose_nothing_and_repeat_nothing(
    make_daemon: MakeDaemon, procs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    ring = tmp_path / "obs.ring"
    d = make_daemon(_ring_config(ring, lanes=2, capacity=512, drain_batch=128))
    counts = {7: 5000, 8: 5000}
    procs += [spawn_producer(ring, tag, count=n, batch=8, pace_ms=1.0) for tag, n in counts.items()]
    for delay in (0.4, 0.7):
        time.sleep(delay)
        d.kill9()  # mid-drain: a batch may be read, committing, or committed only
        time.sleep(0.2)  # producers keep appending; lanes may fill (back-pressure)
        d.start()
    for p in procs:
        assert p.wait(timeout=60) == 0
    _wait(lambda: _all_durable(ring), "the ring to drain")
    assert d.stop() == 0
    _exactly_once(_stored(d), counts)


def test_a_commit_whose_durable_cursor_was_never_advanced_is_not_ingested_again(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """The crash window between the LMDB commit and advancing the ring's durable
    cursor, made deterministic: the cursor is rewound while the daemon is down."""
    ring = tmp_path / "obs.ring"
    d = make_daemon(_ring_config(ring, lanes=1, capacity=1024))
    with Producer(ring) as p:
        p.append_batch([(SECTOR_CODES["generic"], 1, [1, i]) for i in range(500)])
        _wait(lambda: p.durable() == 500, "500 durable")
        d.kill9()
        write_bytes(ring, lane_field(0, LANE_DURABLE), struct.pack("=Q", 0))
        write_bytes(ring, lane_field(0, LANE_CONSUMED), struct.pack("=Q", 0))
        assert p.durable() == 0
        d.start()
        _wait(lambda: p.durable() == 500, "the durable cursor restored from the store")
        p.append_batch([(SECTOR_CODES["generic"], 1, [2, i]) for i in range(10)])
        _wait(lambda: p.durable() == 510, "510 durable")
    assert d.stop() == 0
    values = [tuple(o.value) for o in _stored(d)]
    assert len(values) == 510 and len(set(values)) == 510


def test_a_full_ring_is_refused_counted_and_recovers(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    ring = tmp_path / "obs.ring"
    d = make_daemon(_ring_config(ring, lanes=1, capacity=64))
    assert d.proc is not None
    os.kill(d.proc.pid, signal.SIGSTOP)  # the daemon stalls: nothing drains
    try:
        with Producer(ring) as p:
            assert p.append_batch([(5, 1, i) for i in range(100)]).appended == 64
            with pytest.raises(RingFull):
                p.append(5, 1, 100)
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    _wait(lambda: _all_durable(ring), "the ring to drain")
    _wait(lambda: _metric(d, "knhk_ring_full_rejections_total") == 37, "the rejection count")
    with Producer(ring) as p:
        assert p.append(5, 1, 64) == 64
        _wait(lambda: p.durable() == 65, "the next record durable")
    _wait(lambda: _metric(d, "knhk_ring_backlog") == 0, "the backlog gauge at 0")
    assert d.stop() == 0
    assert [o.value for o in _stored(d)] == list(range(65))


def test_the_snapshot_descriptor_follows_promotion_and_rollback(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """Also: ring records get HTTP ingest's validation, the SHACL gate included."""
    ring = tmp_path / "obs.ring"
    d = make_daemon(
        _ring_config(ring) + 'event_codes = { "1" = "line.tick", "2" = "transaction.execute" }\n'
        # The 2 refused of 152 exceed Q2's default 1 % schema-violation rate,
        # which would (rightly) reject the promotion this test needs.
        + "[validate.invariants]\nmax_schema_violation_rate = 0.05\n",
        auth=True,  # promotion and rollback take an administrator's token
    )
    with d.client() as c, Reader(ring) as r, Producer(ring) as p:
        genesis = c.get("/api/v1/snapshots/current").json()
        desc = r.snapshot()
        assert desc is not None
        assert (desc.snapshot_id, desc.version) == (genesis["snapshot_id"], 0)
        # A burst through the ring; one record the decoder refuses (sector 0);
        # two its shapes refuse (a transaction.execute value must be an object).
        burst = [(SECTOR_CODES["manufacturing"], 1, 7.5)] * 150
        p.append_batch([*burst, (0, 1, 1), (SECTOR_CODES["finance"], 2, 50000)])
        p.append(SECTOR_CODES["finance"], 2, 1)
        _wait(lambda: p.durable() == 153, "the burst durable")
        report = c.post("/api/v1/mape-k/execute").json()
        assert report["snapshots_promoted"] == 1, report
        v1 = c.get("/api/v1/snapshots/current").json()
        desc = r.snapshot()
        assert desc is not None and (desc.snapshot_id, desc.version) == (v1["snapshot_id"], 1)
        assert desc.promoted_at_ns > genesis["promoted_at_ns"]
        assert c.post("/api/v1/snapshots/rollback").status_code == 200
        desc = r.snapshot()
        assert desc is not None and (desc.snapshot_id, desc.version) == (genesis["snapshot_id"], 0)
    assert _metric(d, 'knhk_ingest_rejected_total{reason="ring_invalid"}') == 1
    assert _metric(d, 'knhk_ingest_rejected_total{reason="ring_shacl"}') == 2
    assert _metric(d, 'knhk_ingest_shacl_failures_total{sector="finance"}') == 2
    assert d.stop() == 0
    assert len(_stored(d)) == 150
    # The descriptor of a stopped daemon still names its current snapshot.
    with Reader(ring) as r:
        desc = r.snapshot()
        assert desc is not None and desc.version == 0


def test_a_ring_of_another_version_stops_the_daemon_at_start(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    ring = tmp_path / "obs.ring"
    Consumer.create_or_open(ring, lanes=8, capacity=8192).close()
    write_bytes(ring, VERSION_OFFSET, struct.pack("=I", 9))
    d = make_daemon(_ring_config(ring), start=False)
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(timeout=30) == 2
    log = d.log()
    assert "ring:" in log and "header version 9" in log and "reads version 1" in log


def test_ring_records_reach_the_analyzer_as_counts_with_their_evidence(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """Ring batches go to the analyzer as per-key counts: a burst of them is
    detected like the same burst over HTTP, its evidence ids are the stored
    ids of its first records, and a restart counts nothing twice."""
    ring = tmp_path / "obs.ring"
    d = make_daemon(
        _ring_config(ring, lanes=2, capacity=1024) + 'event_codes = { "7" = "press.error" }\n',
        auth=True,  # cycles take an operator's (here an administrator's) token
    )
    manufacturing = SECTOR_CODES["manufacturing"]
    with Producer(ring) as p:
        for start in range(0, 150, 50):  # three appends: likely more than one commit
            assert (
                p.append_batch([(manufacturing, 7, i) for i in range(start, start + 50)]).appended
                == 50
            )
            time.sleep(0.01)
        assert p.append_batch([(manufacturing, 8, 1.5)] * 5).appended == 5
    _wait(lambda: _all_durable(ring), "the ring to drain")

    def patterns() -> dict[str, Any]:
        with d.client() as c:
            assert c.post("/api/v1/mape-k/execute").status_code == 200
            return {
                p["name"]: p
                for p in c.get("/api/v1/patterns").json()
                if p["sector"] == "manufacturing"
            }

    found = patterns()
    hf, spike = found["high_frequency_press.error"], found["error_spike"]
    assert hf["evidence_count"] == 150 and spike["evidence_count"] == 150
    assert "high_frequency_ring.8" not in found  # 5 records, under the threshold
    assert d.stop() == 0
    stored = [o for o in _stored(d) if o.event_type == "press.error"]
    assert [o.value for o in stored] == list(range(150))
    assert hf["evidence_ids"] == [o.id for o in stored[: len(hf["evidence_ids"])]]
    assert spike["evidence_ids"] == hf["evidence_ids"] and len(hf["evidence_ids"]) == 16
    d.start()  # the analyzer rebuilds its windows from the store: nothing doubles
    again = patterns()
    assert again["high_frequency_press.error"]["evidence_count"] == 150


def test_a_ring_removed_under_the_daemon_is_reported(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    ring = tmp_path / "obs.ring"
    d = make_daemon(_ring_config(ring, lanes=2, capacity=64))

    def status_ring() -> dict[str, Any]:
        res = d.ctl("status", "--format", "json")
        assert res.returncode == 0, res.stderr
        summary: dict[str, Any] = json.loads(res.stdout)["ring"]
        return summary

    with Producer(ring) as p:
        records = [(SECTOR_CODES["generic"], 1, i) for i in range(70)]
        assert p.append_batch(records).appended == 64
    _wait(lambda: _all_durable(ring), "the ring to drain")
    summary = status_ring()
    assert (summary["path"], summary["lanes"], summary["capacity"]) == (str(ring), 2, 64)
    assert (summary["backlog"], summary["full_count"], summary["stale"]) == (0, 6, False)
    ring.unlink()  # an operator, or a tmpfs cleaner
    _wait(lambda: "was removed or replaced" in d.log(), "the daemon to report the ring")
    assert status_ring()["stale"] is True
    assert "STALE: the path names another file" in d.ctl("status").stdout
    assert d.stop() == 0


def test_knhkctl_ring_append_is_a_smoke_test_of_the_ring_path(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    ring = tmp_path / "obs.ring"
    d = make_daemon(_ring_config(ring) + 'event_codes = { "7" = "press.temperature" }\n')
    res = d.ctl("ring", "--path", str(ring), "append", "--sector", "manufacturing",
                "--event", "7", "--value", "21.5", "--wait", "30")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "durable: lane" in res.stdout
    assert d.stop() == 0
    (obs,) = _stored(d)
    assert (obs.event_type, obs.sector, obs.value) == ("press.temperature", "manufacturing", 21.5)
