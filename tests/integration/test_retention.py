"""Issue 12, item 5 through the real daemon: observations with old event
times are archived (gzip NDJSON with their batch receipts, inclusion proofs
and a checkpoint) and deleted in bounded transactions; the archive verifies
offline with the public keys alone and a tampered one does not; fsck,
verify-chain, offline verification, a backup taken across retention and its
restore all still pass; over repeated ingest + retention rounds the data
file stops growing (LMDB reuses the freed pages)."""

from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    RunningDaemon,
    free_port,
    run_ctl,
    stored_counts,
    write_config,
)

pytestmark = pytest.mark.integration

CONFIG = """
[retention]
observations_days = 30
interval_s = 100000
delete_batch = 50
"""
ROUNDS = 5
PER_ROUND = 160  # in requests of 40: ~4 KB a value, ~650 KB a round
OLD = "2020-01-02T03:04:05Z"


def _post_old(d: RunningDaemon, round_no: int) -> None:
    with d.client() as c:
        for part in range(PER_ROUND // 40):
            batch = [
                {"event_type": "reading", "sector": "generic", "event_time": OLD,
                 "value": f"r{round_no}-{part}-{i}-" + "x" * 4000}
                for i in range(40)
            ]  # fmt: skip
            r = c.post("/api/v1/observations", json=batch)
            assert r.status_code == 201, r.text


def _verify(keys: Path, *files: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "knhkd.cli.knhkctl", "verify", "--keys", str(keys),
         *map(str, files)],
        check=False, capture_output=True, text=True, timeout=120, cwd="/",
    )  # fmt: skip


def _retention(d: RunningDaemon) -> dict[str, Any]:
    r = d.ctl("retention", "run", "--format", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def test_retention_archives_deletes_and_everything_still_verifies(
    make_daemon: Any, tmp_path: Path
) -> None:
    d: RunningDaemon = make_daemon(CONFIG, auth=True)
    mdb = d.data_dir / "lmdb" / "data.mdb"
    backups = tmp_path / "backups"
    keys = tmp_path / "keys.json"
    keys.write_text(d.ctl("keys", "export-public").stdout)

    sizes = []
    for n in range(ROUNDS):
        _post_old(d, n)
        if n == 0:
            base = d.ctl("backup", "--out", str(backups), "--kind", "base")
            assert base.returncode == 0, base.stdout + base.stderr
        run = _retention(d)
        assert run["archived"] == PER_ROUND, run
        assert run["first_seq"] == n * PER_ROUND and run["below_seq"] == (n + 1) * PER_ROUND
        sizes.append(mdb.stat().st_size)
    # Without the deletions every round adds ~650 KB; with them the later
    # rounds reuse the pages the earlier ones freed.
    assert sizes[-1] - sizes[1] < 300_000, sizes

    with d.client() as c:
        recent = c.post(
            "/api/v1/observations",
            json=[{"event_type": "reading", "sector": "generic", "value": 1}],
        ).json()["ids"]
    assert _retention(d)["archived"] == 0
    assert stored_counts(d)[0] == 1
    with d.client() as c:
        assert c.get(f"/api/v1/observations/{recent[0]}").status_code == 200

    listed = json.loads(d.ctl("receipts", "list", "--limit", "100000", "--format", "json").stdout)
    archived = [r["body"] for r in listed if r["body"]["kind"] == "observations_archived"]
    assert [a["inputs"]["count"] for a in archived] == [str(PER_ROUND)] * ROUNDS
    assert len([r for r in listed if r["body"]["kind"] == "observation_batch_committed"]) == (
        ROUNDS * PER_ROUND // 40 + 1
    )  # receipts are never deleted

    # Each archive verifies offline against the signed receipts and checkpoint.
    archives = sorted((d.data_dir / "archive").glob("observations-*.ndjson.gz"))
    assert [a.name for a in archives] == [a["inputs"]["archive"] for a in archived]
    ok = _verify(keys, *archives)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count(": verified:") == ROUNDS, ok.stdout

    # One archived value changed: that archive no longer verifies.
    lines = gzip.decompress(archives[0].read_bytes()).splitlines()
    obs_line = next(i for i, ln in enumerate(lines) if b'"type":"observation"' in ln)
    rec = json.loads(lines[obs_line])
    assert "eHh4" in rec["record"]  # base64 of "xxx", in the value
    rec["record"] = rec["record"].replace("eHh4", "eHh5", 1)
    lines[obs_line] = json.dumps(rec, separators=(",", ":")).encode()
    bad = tmp_path / "tampered.ndjson.gz"
    bad.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    nv = _verify(keys, bad)
    assert nv.returncode == 1, nv.stdout + nv.stderr

    chain = d.ctl("receipts", "verify-chain")
    assert chain.returncode == 0, chain.stdout + chain.stderr
    export = tmp_path / "export.json"
    assert d.ctl("receipts", "export", "--out", str(export)).returncode == 0
    assert _verify(keys, export).returncode == 0
    fsck = run_ctl(d.data_dir, "fsck", "--format", "json")
    assert fsck.returncode == 0 and json.loads(fsck.stdout)["ok"] is True, fsck.stdout

    # An incremental after retention on a base from before it: verifies, and
    # the restore holds what the live store holds.
    incr = d.ctl("backup", "--out", str(backups))
    assert incr.returncode == 0 and "incremental" in incr.stdout, incr.stdout + incr.stderr
    bv = d.ctl("backup", "verify", str(backups))
    assert bv.returncode == 0, bv.stdout + bv.stderr
    assert d.stop() == 0
    new = tmp_path / "restored"
    res = run_ctl(d.data_dir, "restore", "--from", str(backups), "--data-dir", str(new))
    assert res.returncode == 0, res.stdout + res.stderr
    rf = run_ctl(new, "fsck", "--format", "json")
    assert rf.returncode == 0 and json.loads(rf.stdout)["ok"] is True, rf.stdout
    assert json.loads(rf.stdout)["checked"]["observations"] == 1, rf.stdout


MARKER = "marker-Zq81-sealed-reading"


def test_encryption_at_rest_seals_records_archives_and_backups(
    make_daemon: Any, tmp_path: Path
) -> None:
    key = tmp_path / "storage.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    sealed = f'\n[storage]\nencryption_key = "{key}"\n'
    d: RunningDaemon = make_daemon(sealed + CONFIG, auth=True)
    mdb = d.data_dir / "lmdb" / "data.mdb"
    keys = tmp_path / "keys.json"
    keys.write_text(d.ctl("keys", "export-public").stdout)
    with d.client() as c:
        old = {"event_type": "reading", "sector": "generic", "event_time": OLD,
               "value": MARKER + "-old", "metadata": {"note": MARKER + "-meta"}}  # fmt: skip
        assert c.post("/api/v1/observations", json=[old, old]).status_code == 201
        new = {"event_type": "reading", "sector": "generic", "value": MARKER}
        [obs_id] = c.post("/api/v1/observations", json=[new]).json()["ids"]
        assert c.get(f"/api/v1/observations/{obs_id}").json()["value"] == MARKER
    assert _retention(d)["archived"] == 2
    [arch] = (d.data_dir / "archive").glob("*.ndjson.gz")
    records = [
        base64.b64decode(line["record"])
        for line in map(json.loads, gzip.decompress(arch.read_bytes()).splitlines())
        if line["type"] == "observation"
    ]
    assert len(records) == 2 and not any(MARKER.encode() in r for r in records)  # still sealed
    assert _verify(keys, arch).returncode == 2  # sealed: needs the key
    ok = _verify(keys, arch, "--storage-key", key)
    assert ok.returncode == 0 and ": verified:" in ok.stdout, ok.stdout + ok.stderr
    fsck = run_ctl(d.data_dir, "fsck", "--storage-key", str(key), "--format", "json")
    assert fsck.returncode == 0 and json.loads(fsck.stdout)["ok"] is True, fsck.stdout
    assert run_ctl(d.data_dir, "fsck").returncode == 1  # without the key: unchecked
    backups = tmp_path / "backups"
    assert d.ctl("backup", "--out", str(backups), "--kind", "base").returncode == 0
    assert d.stop() == 0
    assert MARKER.encode() not in mdb.read_bytes()

    # Restart with the key: served as before.
    d.start()
    with d.client() as c:
        assert c.get(f"/api/v1/observations/{obs_id}").json()["value"] == MARKER
    assert d.stop() == 0

    # Wrong key, no key: refused, exit 2, naming the setting.
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    wrong.chmod(0o600)
    for n, extra in enumerate((f'\n[storage]\nencryption_key = "{wrong}"\n', "")):
        other = RunningDaemon(
            data_dir=d.data_dir,
            port=free_port(),
            config=write_config(tmp_path / f"other{n}.toml", extra),
            issuer=d.issuer,
        )
        other.start(wait=False)
        assert other.proc is not None and other.proc.wait(60) == 2
        assert "storage.encryption_key" in other.log(), other.log()

    # A restore of the (sealed) backup starts with the key and reads the value.
    new_dir = tmp_path / "restored"
    res = run_ctl(
        d.data_dir, "restore", "--from", str(backups), "--data-dir", str(new_dir),
        "--signing-key", str(d.data_dir / "keys" / "signing.key"),
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert MARKER.encode() not in (new_dir / "lmdb" / "data.mdb").read_bytes()
    r = RunningDaemon(data_dir=new_dir, port=free_port(), config=d.config, issuer=d.issuer)
    r.start()
    try:
        with r.client() as c:
            assert c.get(f"/api/v1/observations/{obs_id}").json()["value"] == MARKER
    finally:
        assert r.stop() == 0


def test_retention_soft_deletes_old_non_current_snapshots(make_daemon: Any) -> None:
    d: RunningDaemon = make_daemon(
        "[retention]\nsnapshots_days = 1e-9\ninterval_s = 100000\n", auth=True
    )
    truck = {"event_type": "truck.depart", "sector": "logistics", "value": {"dock": 4},
             "metadata": {"shipment_id": "SHP-1001"}}  # fmt: skip
    with d.client() as c:
        genesis = c.get("/api/v1/snapshots/current").json()["snapshot_id"]
        body = "\n".join(json.dumps(truck) for _ in range(150))
        r = c.post(
            "/api/v1/observations", content=body, headers={"content-type": "application/x-ndjson"}
        )
        assert r.status_code == 201, r.text
        assert c.post("/api/v1/mape-k/execute").json()["snapshots_promoted"] == 1
        current = c.get("/api/v1/snapshots/current").json()["snapshot_id"]

    def listed() -> list[str]:
        r = d.ctl("snapshots", "list", "--format", "json")
        assert r.returncode == 0, r.stderr
        return [s["snapshot_id"] for s in json.loads(r.stdout)["snapshots"]]

    assert sorted(listed()) == sorted([genesis, current])
    run = _retention(d)
    assert run["snapshots_retired"] == [genesis] and run["archived"] == 0
    assert listed() == [current]
    assert _retention(d)["snapshots_retired"] == []  # once
    fsck = run_ctl(d.data_dir, "fsck", "--format", "json")
    assert fsck.returncode == 0 and json.loads(fsck.stdout)["ok"] is True, fsck.stdout
