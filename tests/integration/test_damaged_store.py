"""Issue 10 item 6 through the real daemon and ``knhkctl``: damage to the
store is found (fsck, the start-up check against the anchor) and never
extended."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.integration import lmdb_pages as pages
from tests.integration.conftest import RunningDaemon, run_ctl

pytestmark = pytest.mark.integration

OBS = {"event_type": "door.open", "value": {"door": 3}, "sector": "generic", "metadata": {}}
# A checkpoint (and so an anchor) every few receipts.
FAST_CHECKPOINTS = "[receipts]\ncheckpoint_every = 2\ncheckpoint_interval_s = 0.2\n"


def _filled(make_daemon, batches: int = 6) -> RunningDaemon:  # type: ignore[no-untyped-def]
    d: RunningDaemon = make_daemon(FAST_CHECKPOINTS, auth=True)
    with d.client() as c:
        for i in range(batches):
            body = [{**OBS, "value": {"door": i, "pad": "x" * 200}}] * 40
            assert c.post("/api/v1/observations", json=body).status_code == 201
        assert c.post("/api/v1/mape-k/execute").status_code == 200
    assert d.stop() == 0
    return d


def test_fsck_reports_structural_damage_as_findings_never_a_traceback(
    make_daemon, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    d = _filled(make_daemon)
    clean = run_ctl(d.data_dir, "fsck", "--format", "json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    report = json.loads(clean.stdout)
    # All 13 databases are read, the anchor compared.
    for name in ("patterns", "proposals", "proposal_deltas", "validations", "cycles", "meta"):
        assert f"{name} records" in report["checked"]
    assert report["checked"]["keys records"] == 1 and report["checked"]["anchor"] == 1

    live = pages.live_pages(d.data_dir / "lmdb" / "data.mdb")
    # One page of each kind that matters: the main database's root, a branch,
    # a named database's root leaf (whose flag flip makes LMDB abort), an
    # overflow page's header.
    main = next(p for p in live if p.db == "main")
    branch = next(p for p in live if p.flags & pages.P_BRANCH)
    leaf_root = next(p for p in live if p.db == "checkpoints" and p.depth == 0)
    leaf = next(p for p in live if p.db == "observations" and p.depth > 0)
    targets = [
        (main, 10, 0),  # page flags
        (main, 16, 2),  # first node offset
        (branch, 12, 3),  # lower bound: node count
        (leaf_root, 10, 0),
        (leaf, 12, 3),
    ]
    for page, offset, bit in targets:
        damaged = tmp_path / "damaged"
        shutil.rmtree(damaged, ignore_errors=True)
        shutil.copytree(d.data_dir, damaged)
        pages.flip_bit(damaged / "lmdb" / "data.mdb", page.pgno * pages.PAGE + offset, bit)
        out = run_ctl(damaged, "fsck")
        where = f"{page} +{offset} bit {bit}"
        assert out.returncode == 1, f"{where}: {out.returncode}\n{out.stdout}\n{out.stderr}"
        assert "Traceback" not in out.stdout + out.stderr, where
        assert "ERROR " in out.stdout and "first inconsistency" in out.stdout, where


def _wait_anchor(d: RunningDaemon, size_at_least: int) -> str:
    """The anchor once it holds a checkpoint of at least that many receipts."""
    path = d.data_dir / "checkpoint.anchor"
    for _ in range(200):
        if path.exists():
            text = path.read_text()
            if int(text.split("\n")[1]) >= size_at_least:
                return text
        time.sleep(0.05)
    raise AssertionError(f"no anchor of {size_at_least} receipts:\n{d.log()}")


def _receipt_count(d: RunningDaemon) -> int:
    with d.client() as c:
        items = c.get("/api/v1/receipts", params={"limit": 1000}).json()
    items = items["receipts"] if isinstance(items, dict) else items
    return len(items)


def _assert_read_only(d: RunningDaemon, finding: str) -> None:
    with d.client() as c:
        health = c.get("/health")
        assert health.status_code == 503, health.text
        assert finding in health.json()["dependencies"]["writes"], health.text
        ready = c.get("/ready")
        assert ready.status_code == 503, ready.text
        body = ready.json()
        assert body["reads"] is True and body["writes"] is False
        assert finding in body["refused"]["integrity"], ready.text
        post = c.post("/api/v1/observations", json=OBS)
        assert post.status_code == 503, post.text
        assert post.json()["type"] == "urn:knhkd:problem:read-only"
        assert finding in post.json()["detail"]
        assert c.post("/api/v1/mape-k/execute").status_code == 503


def test_a_rolled_back_store_starts_read_only_and_is_never_extended(make_daemon) -> None:  # type: ignore[no-untyped-def]
    d: RunningDaemon = make_daemon(FAST_CHECKPOINTS, auth=True)
    with d.client() as c:
        early = c.post("/api/v1/observations", json=OBS).json()["id"]
    assert d.stop() == 0
    lmdb_dir = d.data_dir / "lmdb"
    shutil.copy(lmdb_dir / "data.mdb", d.data_dir.parent / "older.mdb")
    d.start()
    with d.client() as c:
        late = c.post("/api/v1/observations", json=[OBS] * 5).json()["ids"][0]
    assert d.stop() == 0
    anchored = (d.data_dir / "checkpoint.anchor").read_text()
    shutil.copy(d.data_dir.parent / "older.mdb", lmdb_dir / "data.mdb")  # the disk "restored"
    before = (lmdb_dir / "data.mdb").read_bytes()

    d.start(wait=False)
    d.wait_ready(reads_only=True)
    _assert_read_only(d, "the store is behind the anchor")
    with d.client() as c:
        assert c.get(f"/api/v1/observations/{early}").status_code == 200
        assert c.get(f"/api/v1/observations/{late}").status_code == 404
        assert c.get("/api/v1/checkpoint").status_code == 200  # what is stored is served
        # The refused requests' audit records cannot be stored either: counted
        # and logged, never lost silently (loop/auditor.py).
        dropped = 0.0
        for _ in range(100):
            metrics = c.get("/metrics").text
            found = re.search(
                r'^knhk_audit_dropped_total\{reason="read_only"\} (\S+)$', metrics, re.M
            )
            dropped = float(found.group(1)) if found else 0.0
            if dropped >= 2:
                break
            time.sleep(0.05)
        assert dropped >= 2, metrics
        # What KNHKIntegrityCheckFailed and KNHKStorageDegraded alert on.
        assert re.search(r"^knhk_integrity_findings [1-9]", metrics, re.M), metrics
        assert 'knhk_storage_writes_refused{cause="integrity"} 1.0' in metrics
        assert 'knhk_storage_writes_refused{cause="storage"} 0.0' in metrics
    assert "audit record(s) NOT stored" in d.log()
    count = _receipt_count(d)
    assert d.stop() == 0
    # Nothing was written: not the store, not the anchor.
    assert (lmdb_dir / "data.mdb").read_bytes() == before
    assert (d.data_dir / "checkpoint.anchor").read_text() == anchored
    d.start(wait=False)
    d.wait_ready(reads_only=True)
    assert _receipt_count(d) == count
    d.stop()


def test_an_older_meta_page_made_live_is_found(make_daemon) -> None:  # type: ignore[no-untyped-def]
    # The reproducer: the high txn-id bit of the older meta page makes
    # LMDB open the state before the last commit, silently.
    d = _filled(make_daemon, batches=2)
    path = d.data_dir / "lmdb" / "data.mdb"
    _, older = pages.metas(path)
    pages.flip_bit(path, older.txnid_offset + 7, 7)
    d.start(wait=False)
    d.wait_ready(reads_only=True)
    _assert_read_only(d, "anchor")
    d.stop()


def test_an_emptied_store_is_never_given_a_new_genesis(make_daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from knhkd.store.env import open_store

    d = _filled(make_daemon, batches=1)
    # A fresh, empty environment where the store was (every database there,
    # none of the records).
    fresh = tmp_path / "fresh"
    open_store(fresh).close()
    shutil.copy(fresh / "lmdb" / "data.mdb", d.data_dir / "lmdb" / "data.mdb")
    d.start(wait=False)
    d.wait_ready(reads_only=True)
    _assert_read_only(d, "the store is behind the anchor")
    with d.client() as c:
        assert _receipt_count(d) == 0  # no receipt 0 signed again
        assert c.get("/api/v1/snapshots").json()["snapshots"] == []
    assert d.stop() == 0
    # Still empty after the daemon ran on it: nothing was begun there.
    store = open_store(d.data_dir, readonly=True, exclusive=False)
    with store.reader() as txn:
        assert store.tables.receipts.count(txn) == 0
        assert store.tables.snapshot_current.get(txn) is None
    store.close()


def test_a_store_that_lost_its_databases_is_refused_with_one_line(make_daemon) -> None:  # type: ignore[no-untyped-def]
    import lmdb

    d = _filled(make_daemon, batches=1)
    # The live meta page's main-database root pointing at an empty tree: LMDB
    # opens an environment without a single named database.
    shutil.rmtree(d.data_dir / "lmdb")
    (d.data_dir / "lmdb").mkdir()
    lmdb.open(str(d.data_dir / "lmdb")).close()
    before = (d.data_dir / "lmdb" / "data.mdb").read_bytes()
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(timeout=30) == 2, d.log()
    lines = [line for line in d.log().splitlines() if line.startswith("knhkd:")]
    assert len(lines) == 1 and "lacks database" in lines[0], d.log()
    assert "Traceback" not in d.log()
    assert (d.data_dir / "lmdb" / "data.mdb").read_bytes() == before


@pytest.mark.parametrize("victim", ["public.json", "signing.key"])
def test_a_damaged_keyring_is_one_line_and_exit_2(make_daemon, victim: str) -> None:  # type: ignore[no-untyped-def]
    d = _filled(make_daemon, batches=1)
    (d.data_dir / "keys" / victim).write_bytes(b'{"format": "knhkd-keyring-v1", "keys": [{')
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(timeout=30) == 2, d.log()
    assert "Traceback" not in d.log()
    lines = [line for line in d.log().splitlines() if line.startswith("knhkd:")]
    assert len(lines) == 1 and "keys" in lines[0] and victim in lines[0], d.log()
    if victim == "public.json":
        for args in (("receipts", "verify-chain"), ("keys", "export-public")):
            out = run_ctl(d.data_dir, *args)
            assert out.returncode == 2, out
            assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_a_clean_restart_stays_writable_and_moves_the_anchor(make_daemon) -> None:  # type: ignore[no-untyped-def]
    d: RunningDaemon = make_daemon(FAST_CHECKPOINTS, auth=True)
    # First start: an anchor right after genesis.
    first = _wait_anchor(d, 1)
    with d.client() as c:
        for _ in range(3):
            assert c.post("/api/v1/observations", json=OBS).status_code == 201
    assert d.stop() == 0
    stopped = (d.data_dir / "checkpoint.anchor").read_text()
    assert int(stopped.split("\n")[1]) > int(first.split("\n")[1])
    d.start()
    with d.client() as c:
        assert c.get("/health").status_code == 200, c.get("/health").text
        assert c.post("/api/v1/observations", json=OBS).status_code == 201
    assert d.stop() == 0
    assert run_ctl(d.data_dir, "fsck").returncode == 0
