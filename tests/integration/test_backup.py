"""Backups through the real daemon: online base and incremental while 8
writers ingest, verify, restore, point-in-time restore, damage and forks."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from tests.integration.conftest import RunningDaemon, free_port, run_ctl

pytestmark = pytest.mark.integration

OBS = {"event_type": "line.tick", "value": {"n": 0}, "sector": "manufacturing", "metadata": {}}
ORIGIN = '\n[receipts]\norigin = "test.local/backup"\n'


def _writers(d: RunningDaemon, acked: list[tuple[float, str]], stop: threading.Event) -> list[Any]:
    def work(w: int) -> None:
        with httpx.Client(base_url=d.base, timeout=10.0, headers=d.headers("producer")) as c:
            for n in range(200):
                if stop.is_set():
                    return
                r = c.post("/api/v1/observations", json={**OBS, "value": {"n": n, "w": w}})
                if r.status_code == 201:
                    acked.append((time.monotonic(), r.json()["id"]))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    return threads


def _receipts(d: RunningDaemon) -> list[dict[str, Any]]:
    res = d.ctl("receipts", "list", "--limit", "100000", "--format", "json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def _restore_and_fsck(d: RunningDaemon, source: Path, new: Path, *args: str) -> str:
    """``knhkctl restore`` from ``source`` into ``new`` (with the daemon's
    signing key), which must succeed and pass fsck; its output."""
    key = str(d.data_dir / "keys" / "signing.key")
    res = run_ctl(d.data_dir, "restore", "--from", str(source), "--data-dir", str(new),
                  "--signing-key", key, *args)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    fsck = run_ctl(new, "fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    return res.stdout


def _restored(d: RunningDaemon, data_dir: Path) -> RunningDaemon:
    return RunningDaemon(data_dir=data_dir, port=free_port(), config=d.config, issuer=d.issuer)


def test_backup_under_ingest_restore_pitr_and_damage(make_daemon: Any, tmp_path: Path) -> None:
    d = make_daemon(ORIGIN, auth=True)
    out = tmp_path / "backups"
    acked: list[tuple[float, str]] = []
    stop = threading.Event()
    threads = _writers(d, acked, stop)
    while len(acked) < 200:
        time.sleep(0.02)
    asked = time.monotonic()
    base = d.ctl("backup", "--out", str(out), "--kind", "base")
    assert base.returncode == 0, base.stderr
    before = [i for t, i in acked if t < asked]
    while len(acked) < 600:
        time.sleep(0.02)
    incr = d.ctl("backup", "--out", str(out))
    assert incr.returncode == 0, incr.stderr
    assert "incremental backup" in incr.stdout
    stop.set()
    for t in threads:
        t.join()
    kinds = [r["body"]["kind"] for r in _receipts(d)]
    assert kinds.count("backup_taken") == 2

    ok = d.ctl("backup", "verify", str(out))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "verified" in ok.stdout

    # A daemon holds this directory; another is not empty.
    busy = run_ctl(d.data_dir, "restore", "--from", str(out), "--data-dir", str(d.data_dir))
    assert busy.returncode == 2 and "in use" in busy.stderr
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    refused = run_ctl(d.data_dir, "restore", "--from", str(out), "--data-dir", str(full))
    assert refused.returncode == 2 and "not empty" in refused.stderr
    uncovered = run_ctl(
        d.data_dir,
        "restore",
        "--from",
        str(out),
        "--receipt",
        "999999",
        "--data-dir",
        str(tmp_path / "nope"),
    )
    assert uncovered.returncode == 2 and "not covered" in uncovered.stderr

    # Full restore from base + incremental: the daemon starts, every
    # observation acknowledged before the base was asked for is there.
    new = tmp_path / "restored"
    key = d.data_dir / "keys" / "signing.key"
    res = run_ctl(
        d.data_dir, "restore", "--from", str(out), "--data-dir", str(new), "--signing-key", str(key)
    )
    assert res.returncode == 0, res.stderr
    r = _restored(d, new)
    r.start()
    try:
        with r.client() as c:
            for obs_id in before:
                assert c.get(f"/api/v1/observations/{obs_id}").status_code == 200, obs_id
        chain = r.ctl("receipts", "verify-chain", "--format", "json")
        assert chain.returncode == 0, chain.stdout
        manifests = sorted(out.iterdir())
        last = json.loads((manifests[-1] / "manifest.json").read_text())
        first_new = _receipts(r)[last["tree_size"]]["body"]
        assert first_new["kind"] == "restored"
        assert first_new["inputs"]["backup_id"] == last["id"]
    finally:
        assert r.stop() == 0
    # The new kinds (backup_taken, restored) through fsck and offline verify.
    fsck = run_ctl(new, "fsck")
    assert fsck.returncode == 0, fsck.stdout
    export = tmp_path / "export.json"
    assert d.ctl("receipts", "export", "--out", str(export)).returncode == 0
    offline = run_ctl(
        d.data_dir, "verify", "--keys", str(d.data_dir / "keys" / "public.json"), str(export)
    )
    assert offline.returncode == 0, offline.stdout + offline.stderr

    # PITR to a batch receipt in the middle of the incremental's range.
    base_m = json.loads((manifests[0] / "manifest.json").read_text())
    listed = _receipts(d)
    mid = next(
        x["body"]
        for x in listed[(base_m["tree_size"] + last["tree_size"]) // 2 :]
        if x["body"]["kind"] == "observation_batch_committed"
    )
    pitr = tmp_path / "pitr"
    res = run_ctl(
        d.data_dir,
        "restore",
        "--from",
        str(out),
        "--receipt",
        str(mid["seq"]),
        "--data-dir",
        str(pitr),
        "--signing-key",
        str(key),
    )
    assert res.returncode == 0, res.stderr
    assert run_ctl(pitr, "fsck").returncode == 0
    chain = run_ctl(pitr, "receipts", "verify-chain", "--format", "json")
    assert chain.returncode == 0, chain.stdout
    assert json.loads(chain.stdout)["total_count"] == mid["seq"] + 1
    # A point followed by a change of the mutable state is refused, and
    # leaves no store behind.
    changes = [
        x["body"]["seq"]
        for x in listed[: base_m["tree_size"]]
        if x["body"]["kind"] not in ("observation_batch_committed", "audit")
    ]
    refused_dir = tmp_path / "refused"
    no = run_ctl(
        d.data_dir,
        "restore",
        "--from",
        str(out),
        "--receipt",
        str(changes[-1] - 1),
        "--data-dir",
        str(refused_dir),
    )
    assert no.returncode == 2 and "not a restorable point" in no.stderr, no.stderr
    assert not (refused_dir / "lmdb").exists()
    p = _restored(d, pitr)
    p.start()
    try:
        st = json.loads(p.ctl("status", "--format", "json").stdout)
        assert st["observations"] == int(mid["inputs"]["last_seq"]) + 1
    finally:
        assert p.stop() == 0

    # One flipped byte in the incremental's segment: verify names it.
    seg = manifests[-1] / "segment.frames"
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    seg.write_bytes(bytes(data))
    bad = d.ctl("backup", "verify", str(out))
    assert bad.returncode == 1 and "SHA-256" in bad.stdout, bad.stdout + bad.stderr


def test_backup_of_another_history_is_rejected(make_daemon: Any, tmp_path: Path) -> None:
    # Same origin, different histories: only the consistency proof tells them apart.
    a = make_daemon(ORIGIN)
    b = make_daemon(ORIGIN)
    with httpx.Client(base_url=b.base) as c:
        for n in range(3):
            assert (
                c.post("/api/v1/observations", json={**OBS, "value": {"n": n}}).status_code == 201
            )
    out = tmp_path / "b-backups"
    assert b.ctl("backup", "--out", str(out)).returncode == 0
    mine = b.ctl("backup", "verify", str(out))
    assert mine.returncode == 0, mine.stdout + mine.stderr
    with httpx.Client(base_url=a.base) as c:
        for n in range(5):
            assert (
                c.post("/api/v1/observations", json={**OBS, "value": {"n": n}}).status_code == 201
            )
    a.ctl("checkpoint", "--issue")
    other = a.ctl("backup", "verify", str(out))
    assert other.returncode == 1, other.stdout + other.stderr
    assert "different history" in other.stdout


def test_scheduled_backups_keep_their_chains(make_daemon: Any, tmp_path: Path) -> None:
    out = tmp_path / "scheduled"
    d = make_daemon(f'\n[backup]\ndir = "{out}"\ninterval_s = 0.3\nbase_every = 2\nkeep = 3\n')
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if [r["body"]["kind"] for r in _receipts(d)].count("backup_taken") >= 5:
            break
        time.sleep(0.2)
    assert d.stop() == 0
    manifests = [json.loads((p / "manifest.json").read_text()) for p in sorted(out.iterdir())]
    ids = {m["id"] for m in manifests}
    # Retention: the newest three and the base an incremental among them needs.
    assert 3 <= len(manifests) <= 4, ids
    assert {m["kind"] for m in manifests} == {"base", "incremental"}
    assert all(m["parent_id"] in ids for m in manifests if m["kind"] == "incremental")
    ok = run_ctl(d.data_dir, "backup", "verify", str(out), "--against", str(d.data_dir))
    assert ok.returncode == 0, ok.stdout + ok.stderr


ERASED = "user-in-a-backup-4711"
LOGIN = {"event_type": "login", "sector": "generic", "value": "ok", "metadata": {"user_id": ERASED}}


def _base_then_erasure(
    d: RunningDaemon, out: Path, logins: int, others: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``logins`` observations of the subject ERASED and ``others``, a base
    backup under ``out``, then the subject's erasure: (the base's manifest,
    what the erasure answered)."""
    with d.client() as c:
        assert (
            c.post("/api/v1/observations", json=[LOGIN] * logins + [OBS] * others).status_code
            == 201
        )
    taken = d.ctl("backup", "--out", str(out), "--kind", "base")
    assert taken.returncode == 0, taken.stderr
    (base,) = [json.loads((p / "manifest.json").read_text()) for p in out.iterdir()]
    erase = d.ctl("erase", "--subject", ERASED)
    assert erase.returncode == 0, erase.stderr
    erasure: dict[str, Any] = json.loads(erase.stdout)
    assert erasure["erased"] == logins
    assert erasure["backup_id"] is None  # no [backup] dir
    return base, erasure


def test_an_erasure_after_the_base_stays_erased_in_a_restore(
    make_daemon: Any, tmp_path: Path
) -> None:
    """An erasure rewrites observations the base backup already holds: the
    next incremental carries their erased forms, so base + segments restore
    them erased (content and salt gone), and the restored store verifies."""
    d: RunningDaemon = make_daemon(ORIGIN, auth=True)
    out = tmp_path / "backups"
    _base_then_erasure(d, out, logins=3, others=5)
    with d.client() as c:
        assert c.post("/api/v1/observations", json=[OBS] * 2).status_code == 201
    incr = d.ctl("backup", "--out", str(out))
    assert incr.returncode == 0 and "incremental backup" in incr.stdout, incr.stderr

    new = tmp_path / "restored"
    res = run_ctl(d.data_dir, "restore", "--from", str(out), "--data-dir", str(new),
                  "--signing-key", str(d.data_dir / "keys" / "signing.key"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert ERASED.encode() not in (new / "lmdb" / "data.mdb").read_bytes()
    fsck = run_ctl(new, "fsck")
    assert fsck.returncode == 0, fsck.stdout


def test_a_restore_to_before_an_erasure_erases_again(make_daemon: Any, tmp_path: Path) -> None:
    """A point-in-time restore to before an erasure that a later backup
    records (an incremental, or another base) would bring the erased
    observations back. The restore erases them again: their content and
    salts are gone from the restored file, each erased record names the
    restored daemon's first receipt, and that ``restored`` receipt names the
    erasure it re-applied and the observations. The restored store passes
    fsck, its chain verifies, and it counts the observations of the point."""
    d: RunningDaemon = make_daemon(ORIGIN, auth=True)
    out = tmp_path / "backups"
    first, erasure = _base_then_erasure(d, out, logins=3, others=5)
    with d.client() as c:
        assert c.post("/api/v1/observations", json=[OBS] * 2).status_code == 201
    assert d.ctl("backup", "--out", str(out), "--kind", "incremental").returncode == 0
    # The same base, then a later base (not an incremental) after the erasure.
    bases = tmp_path / "bases"
    shutil.copytree(out / first["id"], bases / first["id"])
    assert d.ctl("backup", "--out", str(bases), "--kind", "base").returncode == 0

    key = str(d.data_dir / "keys" / "signing.key")
    point = first["tree_size"] - 1
    for source in (out, bases):
        new = tmp_path / f"restored-{source.name}"
        said = _restore_and_fsck(d, source, new, "--receipt", str(point))
        assert f"erased again 3 observations ({erasure['receipt_id']})" in said, said
        assert ERASED.encode() not in (new / "lmdb" / "data.mdb").read_bytes()
        r = _restored(d, new)
        r.start()
        try:
            st = json.loads(r.ctl("status", "--format", "json").stdout)
            assert st["observations"] == 8, source
            restored = _receipts(r)[point + 1]
            assert restored["body"]["kind"] == "restored"
            inputs = restored["body"]["inputs"]
            assert inputs["erasures_reapplied"] == erasure["receipt_id"]
            assert inputs["erased_again"] == "3"
            assert sorted(inputs["erased_again_ids"].split(",")) == sorted(
                erasure["observation_ids"]
            )
            with r.client() as c:
                for obs_id in erasure["observation_ids"]:
                    got = c.get(f"/api/v1/observations/{obs_id}")
                    assert got.status_code == 200, got.text
                    obs = got.json()
                    assert obs["value"] is None
                    assert obs["metadata"] == {"knhk.erased": restored["id"]}
            verify = r.ctl("receipts", "verify-chain")
            assert verify.returncode == 0, verify.stdout + verify.stderr
        finally:
            assert r.stop() == 0

    # A later backup that cannot be read is not skipped: its erasures would be.
    (incr,) = [p for p in out.iterdir() if p.name.endswith("-incremental")]
    (segment,) = [p for p in incr.iterdir() if p.name.startswith("segment.")]
    with segment.open("r+b") as fh:
        fh.seek(segment.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    new = tmp_path / "restored-damaged"
    res = run_ctl(d.data_dir, "restore", "--from", str(out), "--data-dir", str(new),
                  "--receipt", str(point), "--signing-key", key)  # fmt: skip
    assert res.returncode == 2 and incr.name in res.stderr, res.stdout + res.stderr
    assert "erasures" in res.stderr and not (new / "lmdb").exists()


def test_an_erasure_is_recorded_at_once_in_the_scheduled_backups(
    make_daemon: Any, tmp_path: Path
) -> None:
    """With ``[backup] dir`` set, an erasure takes a backup there as soon as
    it is done (the next scheduled one may be an hour away), so a restore
    from that directory to a point before it erases again. It is an
    incremental whatever the schedule (here: a base every time), since the
    erasure's caller waits for it."""
    scheduled = tmp_path / "scheduled"
    backup = f'\n[backup]\ndir = "{scheduled}"\nbase_every = 1\n'
    d: RunningDaemon = make_daemon(backup + ORIGIN, auth=True)
    with d.client() as c:
        assert c.post("/api/v1/observations", json=[LOGIN, OBS]).status_code == 201
    assert d.ctl("backup", "--out", str(scheduled), "--kind", "base").returncode == 0
    (base,) = [json.loads((p / "manifest.json").read_text()) for p in scheduled.iterdir()]
    with d.client() as c:
        got = c.post("/api/v1/erasures", json={"subject": ERASED})
    assert got.status_code == 200, got.text
    erasure = got.json()
    assert erasure["erased"] == 1 and erasure["backup_id"].endswith("-incremental")
    assert (scheduled / erasure["backup_id"] / "manifest.json").is_file()
    said = _restore_and_fsck(
        d, scheduled, tmp_path / "restored", "--receipt", str(base["tree_size"] - 1)
    )
    assert f"erased again 1 observations ({erasure['receipt_id']})" in said, said
    assert erasure["backup_error"] is None

    # A backup that cannot be taken leaves the erasure standing, and says why.
    shutil.rmtree(scheduled)
    scheduled.write_text("not a directory")
    with d.client() as c:
        assert c.post("/api/v1/observations", json=[LOGIN]).status_code == 201
        got = c.post("/api/v1/erasures", json={"subject": ERASED})
    assert got.status_code == 200, got.text
    failed = got.json()
    assert failed["erased"] == 1 and failed["backup_id"] is None
    assert str(scheduled) in failed["backup_error"], failed
    assert "the backup that would record it failed" in d.log()


def test_a_sealed_observation_is_erased_again_only_with_the_storage_key(
    make_daemon: Any, tmp_path: Path
) -> None:
    """Observations sealed at rest can be erased again only with the storage
    key: without it the restore is refused in one line and leaves nothing a
    daemon could start on; with it the restored records are erased forms."""
    key = tmp_path / "storage.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    d: RunningDaemon = make_daemon(f'\n[storage]\nencryption_key = "{key}"\n' + ORIGIN)
    out = tmp_path / "backups"
    first, erasure = _base_then_erasure(d, out, logins=2, others=1)
    assert d.ctl("backup", "--out", str(out), "--kind", "incremental").returncode == 0

    new = tmp_path / "restored"
    args = ["restore", "--from", str(out), "--data-dir", str(new),
            "--receipt", str(first["tree_size"] - 1),
            "--signing-key", str(d.data_dir / "keys" / "signing.key")]  # fmt: skip
    refused = run_ctl(d.data_dir, *args)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "--storage-key" in refused.stderr and erasure["receipt_id"] in refused.stderr
    assert not (new / "lmdb").exists()
    res = run_ctl(d.data_dir, *args, "--storage-key", str(key))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"erased again 2 observations ({erasure['receipt_id']})" in res.stdout
    fsck = run_ctl(new, "fsck", "--storage-key", str(key))
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    r = _restored(d, new)
    r.start()
    try:
        with r.client() as c:
            for obs_id in erasure["observation_ids"]:
                obs = c.get(f"/api/v1/observations/{obs_id}").json()
                assert obs["value"] is None and list(obs["metadata"]) == ["knhk.erased"]
    finally:
        assert r.stop() == 0


def test_an_incremental_is_framed_in_chunks_and_an_earlier_releases_still_restores(
    make_daemon: Any, tmp_path: Path
) -> None:
    """An incremental's segment is written and read a chunk at a time
    (``segment.frames``), so a long one never sits whole in memory; one an
    earlier release wrote (``segment.msgpack``, one message) still restores
    to the same store."""
    from knhkd.receipts import backup as rb

    d: RunningDaemon = make_daemon(ORIGIN)
    out = tmp_path / "backups"
    batch = [{**OBS, "value": {"n": n}} for n in range(500)]

    def ingest(requests: int) -> None:
        with httpx.Client(base_url=d.base, timeout=30.0) as c:
            for _ in range(requests):
                assert c.post("/api/v1/observations", json=batch).status_code == 201

    ingest(2)
    assert d.ctl("backup", "--out", str(out), "--kind", "base").returncode == 0
    ingest(20)  # 10,000 observations: three chunks of observations at most 4,096 each
    incr = d.ctl("backup", "--out", str(out), "--kind", "incremental")
    assert incr.returncode == 0, incr.stderr
    (inc_dir,) = [p for p in out.iterdir() if p.name.endswith("-incremental")]
    assert (inc_dir / rb.SEGMENT_FRAMES).exists() and not (inc_dir / rb.SEGMENT_FILE).exists()
    chunks = list(rb.read_segment(inc_dir, [rb.SEGMENT_FRAMES]))
    rows = [len(c.rows) for c in chunks if c.table == "observations"]
    assert sum(rows) == 10_000 and len(rows) == 3 and max(rows) <= rb.CHUNK_ROWS
    assert {c.table for c in chunks} == set(rb.MUTABLE) | set(rb.APPEND)

    # The same incremental as an earlier release wrote it: one Segment message.
    old = tmp_path / "old-backups"
    shutil.copytree(out, old)
    merged: dict[str, list[tuple[bytes, bytes]]] = {}
    for c in chunks:
        merged.setdefault(c.table, []).extend(c.rows)
    old_inc = old / inc_dir.name
    (old_inc / rb.SEGMENT_FRAMES).unlink()
    (old_inc / rb.SEGMENT_FILE).write_bytes(msgspec.msgpack.encode(rb.Segment(merged)))
    manifest = json.loads((old_inc / rb.MANIFEST).read_text())
    for f in manifest["files"]:
        if f["name"] == rb.SEGMENT_FRAMES:
            seg = old_inc / rb.SEGMENT_FILE
            f.update(name=rb.SEGMENT_FILE, size=seg.stat().st_size, sha256=rb.sha256_file(seg))
    (old_inc / rb.MANIFEST).write_text(json.dumps(manifest, indent=2))

    want = json.loads(d.ctl("status", "--format", "json").stdout)["observations"]
    assert want == 11_000
    for source in (out, old):
        new = tmp_path / f"restored-{source.name}"
        _restore_and_fsck(d, source, new)
        r = _restored(d, new)
        r.start()
        try:
            st = json.loads(r.ctl("status", "--format", "json").stdout)
            assert st["observations"] == want, source
        finally:
            assert r.stop() == 0
