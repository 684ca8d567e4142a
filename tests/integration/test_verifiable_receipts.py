"""Issue 4 through the real daemon: checkpoints, proofs, the offline verifier,
key rotation across a restart, fsck."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

from knhkd.receipts import merkle, tlog_checkpoint
from tests.integration.conftest import RunningDaemon, run_ctl

pytestmark = pytest.mark.integration

OBS = {"event_type": "door.open", "value": {"door": 3}, "sector": "generic", "metadata": {}}


def _verify(keys: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    # No data dir, no daemon: only the public keys and the files.
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "knhkd.cli.knhkctl",
            "verify",
            "--keys",
            str(keys),
            *map(str, files),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )


def test_prove_export_and_verify_offline(daemon: RunningDaemon, tmp_path: Path) -> None:
    with daemon.client() as c:
        for _ in range(7):
            assert c.post("/api/v1/observations", json=OBS).status_code == 201
    keys = tmp_path / "keys.json"
    keys.write_text(daemon.ctl("keys", "export-public").stdout)
    proof, export = tmp_path / "proof.json", tmp_path / "export.json"
    assert daemon.ctl("receipts", "prove", "--index", "3", "--out", str(proof)).returncode == 0
    assert daemon.ctl("receipts", "export", "--out", str(export)).returncode == 0

    ok = _verify(keys, proof, export)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count(": verified:") == 2

    # The HTTP API serves the same checkpoint and proofs.
    with daemon.client() as c:
        note = c.get("/api/v1/checkpoint")
        assert note.status_code == 200 and note.headers["content-type"].startswith("text/plain")
        ring = json.loads(keys.read_text())
        pubs = {k["key_id"]: base64.b64decode(k["public_key"]) for k in ring["keys"]}
        cp = tlog_checkpoint.verify(note.text, pubs)
        data = json.loads(proof.read_text())
        r = c.get("/api/v1/proofs/inclusion", params={"index": 3, "tree_size": cp.size}).json()
        path = [base64.b64decode(h) for h in r["hashes"]]
        leaf = merkle.leaf_hash(base64.b64decode(data["record"]))
        assert merkle.verify_inclusion(leaf, 3, cp.size, path, cp.root)
        assert (
            c.get("/api/v1/proofs/inclusion", params={"index": 99, "tree_size": 5}).status_code
            == 400
        )

    # One changed byte in the proof's receipt: not verified, exit 1, one line.
    doc = json.loads(proof.read_text())
    rec = bytearray(base64.b64decode(doc["record"]))
    rec[-3] ^= 1
    doc["record"] = base64.b64encode(bytes(rec)).decode()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    res = _verify(keys, bad)
    assert res.returncode == 1 and "NOT VERIFIED" in res.stdout

    junk = tmp_path / "junk.json"
    junk.write_text("{}")
    assert _verify(keys, junk).returncode == 2


def test_rotation_survives_restart_and_old_receipts_verify(
    daemon: RunningDaemon, tmp_path: Path
) -> None:
    with daemon.client() as c:
        c.post("/api/v1/observations", json=[OBS] * 3)
    before = tmp_path / "before.json"
    before.write_text(daemon.ctl("keys", "export-public").stdout)
    rot = daemon.ctl("keys", "rotate")
    assert rot.returncode == 0, rot.stderr
    new_id = json.loads(rot.stdout)["key_id"]
    with daemon.client() as c:
        c.post("/api/v1/observations", json=[OBS] * 3)
    assert daemon.stop() == 0
    daemon.start()
    status = json.loads(daemon.ctl("status", "--format", "json").stdout)
    assert status["key_id"] == new_id
    with daemon.client() as c:
        assert c.post("/api/v1/observations", json=OBS).status_code == 201

    after = tmp_path / "after.json"
    after.write_text(daemon.ctl("keys", "export-public").stdout)
    ring = json.loads(after.read_text())
    assert len(ring["keys"]) == 2 and ring["keys"][0]["not_after_ns"] is not None
    export = tmp_path / "all.json"
    assert daemon.ctl("receipts", "export", "--out", str(export)).returncode == 0
    assert _verify(after, export).returncode == 0
    assert _verify(before, export).returncode == 1
    assert daemon.ctl("receipts", "verify-chain").returncode == 0


def test_fsck_clean_then_names_a_damaged_tree_node(daemon: RunningDaemon) -> None:
    with daemon.client() as c:
        for _ in range(5):
            c.post("/api/v1/observations", json=OBS)
        c.post("/api/v1/mape-k/execute")
    assert daemon.stop() == 0
    clean = run_ctl(daemon.data_dir, "fsck", "--format", "json")
    assert clean.returncode == 0, clean.stdout
    report = json.loads(clean.stdout)
    assert report["ok"] and report["checked"]["receipts"] >= 7
    # A clean stop signs a checkpoint of everything.
    assert report["checked"]["checkpoints"] >= 1

    env = lmdb.open(str(daemon.data_dir / "lmdb"), max_dbs=32)
    db = env.open_db(b"merkle")
    key = bytes([1]) + (1).to_bytes(8, "big")
    with env.begin(write=True) as txn:
        raw = bytearray(txn.get(key, db=db))
        raw[0] ^= 0x80
        txn.put(key, bytes(raw), db=db)
    env.close()
    bad = run_ctl(daemon.data_dir, "fsck")
    assert bad.returncode == 1
    assert "merkle/node (1, 1)" in bad.stdout
