"""Issue 12, items 6 and 7 through the real daemon: a schema-v1 data
directory made by the release before salted digests is refused, migrated by
``knhkd migrate`` (backup first) and verifies; erasure of a data subject
leaves fsck, verify-chain, offline verification and proofs passing, and the
erased value nowhere in the LMDB file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import RunningDaemon, run_ctl, stored_counts

pytestmark = pytest.mark.integration

V1_DATA = Path(__file__).resolve().parents[1] / "data" / "v1-datadir.tar.gz"


def _knhkd(d: RunningDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "knhkd.cli.knhkd", *args, "--config", str(d.config),
         "--data-dir", str(d.data_dir)],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _verify_offline(d: RunningDaemon, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Export every receipt with its checkpoint, then ``knhkctl verify`` with
    the public keys only (no daemon, no data directory)."""
    keys, export = tmp_path / "keys.json", tmp_path / "export.json"
    keys.write_text(d.ctl("keys", "export-public").stdout)
    assert d.ctl("receipts", "export", "--out", str(export)).returncode == 0
    return subprocess.run(
        [sys.executable, "-m", "knhkd.cli.knhkctl", "verify", "--keys", str(keys), str(export)],
        check=False, capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip


def _kinds(d: RunningDaemon) -> list[str]:
    r = d.ctl("receipts", "list", "--format", "json", "--limit", "100000")
    assert r.returncode == 0, r.stderr
    return [rec["body"]["kind"] for rec in json.loads(r.stdout)]


def test_a_v1_data_directory_is_refused_then_migrates_and_verifies(
    make_daemon: Any, tmp_path: Path
) -> None:
    d: RunningDaemon = make_daemon(auth=True, start=False)
    with tarfile.open(V1_DATA) as tar:
        tar.extractall(tmp_path / "v1", filter="data")
    shutil.move(tmp_path / "v1" / "data", d.data_dir)
    before = (d.data_dir / "lmdb" / "data.mdb").read_bytes()

    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(60) == 2
    assert "knhkd migrate" in d.log() and "schema version 1" in d.log()

    dry = _knhkd(d, "migrate", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would migrate schema v1 -> v2" in dry.stdout
    assert (d.data_dir / "lmdb" / "data.mdb").read_bytes() == before  # wrote nothing

    mig = _knhkd(d, "migrate")
    assert mig.returncode == 0, mig.stdout + mig.stderr
    assert "migrated schema v1 -> v2" in mig.stdout and "fsck ok" in mig.stdout
    again = _knhkd(d, "migrate")
    assert again.returncode == 0 and "already at schema v2" in again.stdout
    _pre_migration_backup_restores_and_verifies(d, tmp_path)

    d.start()
    with d.client() as c:
        obs = {"event_type": "heart_rate", "sector": "healthcare", "value": 70,
               "metadata": {"patient_id": "pt-new-1"}}  # fmt: skip
        assert c.post("/api/v1/observations", json=[obs, obs]).status_code == 201
    # The 40 observations of the v1 release are still there, and the new ones.
    assert stored_counts(d)[0] == 42
    kinds = _kinds(d)
    assert kinds.count("schema_migrated") == 1
    assert kinds.count("observation_batch_committed") >= 5
    chain = d.ctl("receipts", "verify-chain", "--format", "json")
    assert chain.returncode == 0, chain.stdout + chain.stderr
    off = _verify_offline(d, tmp_path)
    assert off.returncode == 0 and ": verified:" in off.stdout, off.stdout + off.stderr
    fsck = run_ctl(d.data_dir, "fsck", "--format", "json")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert json.loads(fsck.stdout)["ok"] is True

    # Observations of the v1 release are committed to by their content: their
    # erasure is refused as a whole, with the reason.
    refused = d.ctl("erase", "--subject", "pt-legacy-7")
    assert refused.returncode != 0
    assert "schema v1" in refused.stderr + refused.stdout
    assert stored_counts(d)[0] == 42


def _pre_migration_backup_restores_and_verifies(d: RunningDaemon, tmp_path: Path) -> None:
    """The pre-migration backup is an ordinary base backup of the v1 store:
    ``backup verify`` passes (fsck and the chain at v1, its checkpoint
    consistent with the migrated log), ``restore`` rebuilds the v1 store and
    says that ``knhkd migrate`` is next, which then migrates it too."""
    [root] = tmp_path.glob(f"{d.data_dir.name}.pre-migration-v1-*")
    [manifest] = root.glob("*/manifest.json")
    m = json.loads(manifest.read_text())
    assert (m["kind"], m["schema_version"], m["observations_next"]) == ("base", 1, 40)
    verified = run_ctl(d.data_dir, "backup", "verify", str(root), "--against", str(d.data_dir))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "verified" in verified.stdout and "knhkd migrate" in verified.stdout

    new = tmp_path / "restored-v1"
    key = d.data_dir / "keys" / "signing.key"
    restored = run_ctl(
        d.data_dir, "restore", "--from", str(root), "--data-dir", str(new),
        "--signing-key", str(key),
    )  # fmt: skip
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "40 observations" in restored.stdout and "schema v1" in restored.stdout
    assert "knhkd migrate" in restored.stdout
    mig = subprocess.run(
        [sys.executable, "-m", "knhkd.cli.knhkd", "migrate", "--config", str(d.config),
         "--data-dir", str(new)],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert mig.returncode == 0, mig.stdout + mig.stderr
    assert "migrated schema v1 -> v2" in mig.stdout and "fsck ok" in mig.stdout

    # A backup of a newer schema than this release's is refused, nothing written.
    newer = tmp_path / "newer"
    shutil.copytree(root, newer)
    (newer / manifest.parent.name / "manifest.json").write_text(
        json.dumps({**m, "schema_version": 99})
    )
    refused = run_ctl(d.data_dir, "restore", "--from", str(newer), "--data-dir", str(new / "x"))
    assert refused.returncode != 0 and "newer than this knhkd's" in refused.stderr
    assert not (new / "x").exists()


SUBJECT = "pt-ERASE-me-4711"
USER = "user-erase-me-0815"


def _in_file(path: Path, *needles: str) -> list[str]:
    data = path.read_bytes()
    return [n for n in needles if n.encode() in data]


def test_erasure_shreds_a_subject_and_everything_still_verifies(
    make_daemon: Any, tmp_path: Path
) -> None:
    d: RunningDaemon = make_daemon(auth=True)
    mdb = d.data_dir / "lmdb" / "data.mdb"

    def obs(patient: str, i: int) -> dict[str, Any]:
        return {"event_type": "heart_rate", "sector": "healthcare", "value": 60 + i,
                "metadata": {"patient_id": patient, "note": f"n{i}"}}  # fmt: skip

    with d.client() as c:
        for _ in range(3):
            batch = [obs(SUBJECT if i % 3 == 0 else f"pt-keep-{i}", i) for i in range(12)]
            assert c.post("/api/v1/observations", json=batch).status_code == 201
        user = {"event_type": "login", "sector": "generic", "value": "ok",
                "metadata": {"user_id": USER}}  # fmt: skip
        [user_id] = c.post("/api/v1/observations", json=[user]).json()["ids"]
    # The search below can see the subject where it is.
    assert _in_file(mdb, SUBJECT, USER) == [SUBJECT, USER]

    r = d.ctl("erase", "--subject", SUBJECT)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["erased"] == 12 and len(out["observation_ids"]) == 12
    assert SUBJECT not in r.stdout

    # Over HTTP: administrators only.
    with d.client("operator") as c:
        assert c.post("/api/v1/erasures", json={"subject": USER}).status_code == 403
    with d.client() as c:
        h = c.post("/api/v1/erasures", json={"subject": USER})
        assert h.status_code == 200, h.text
        assert h.json()["observation_ids"] == [user_id]
        gone = c.get(f"/api/v1/observations/{user_id}").json()
        assert gone["metadata"] == {"knhk.erased": h.json()["receipt_id"]}
        assert gone["value"] is None
        kept = c.post("/api/v1/observations", json=[obs("pt-after", 1)])
        assert kept.status_code == 201

    # The erasure's receipt: what and by whom, never the subject.
    listed = json.loads(d.ctl("receipts", "list", "--limit", "100000", "--format", "json").stdout)
    erasures = [rec["body"] for rec in listed if rec["body"]["kind"] == "observations_erased"]
    assert [e["inputs"]["count"] for e in erasures] == ["12", "1"]
    assert erasures[0]["inputs"]["fields"] == "patient_id"
    assert sorted(erasures[0]["subject_ids"]) == sorted(out["observation_ids"])
    assert SUBJECT not in json.dumps(listed) and USER not in json.dumps(listed)

    # Proofs, the chain, offline verification and fsck all still pass.
    chain = d.ctl("receipts", "verify-chain")
    assert chain.returncode == 0, chain.stdout + chain.stderr
    first_batch = next(
        rec["body"]["seq"] for rec in listed if rec["body"]["kind"] == "observation_batch_committed"
    )
    proof = tmp_path / "proof.json"
    assert (
        d.ctl("receipts", "prove", "--index", str(first_batch), "--out", str(proof)).returncode == 0
    )
    off = _verify_offline(d, tmp_path)
    assert off.returncode == 0, off.stdout + off.stderr
    keys = tmp_path / "keys.json"
    pv = subprocess.run(
        [sys.executable, "-m", "knhkd.cli.knhkctl", "verify", "--keys", str(keys), str(proof)],
        check=False, capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip
    assert pv.returncode == 0 and ": verified:" in pv.stdout, pv.stdout + pv.stderr
    fsck = run_ctl(d.data_dir, "fsck", "--format", "json")
    assert fsck.returncode == 0 and json.loads(fsck.stdout)["ok"] is True, fsck.stdout

    # Nowhere in the data file: not in the live records, nor in a freed page.
    assert _in_file(mdb, SUBJECT, USER) == []
    assert d.stop() == 0
    assert _in_file(mdb, SUBJECT, USER) == []


def test_a_subject_that_is_not_utf8_gets_one_line_and_exit_2(make_daemon: Any) -> None:
    """An argument whose bytes are not UTF-8 (the daemon's protocol is UTF-8
    JSON) is refused by knhkctl in one line, exit 2, not a traceback; the
    daemon is never asked."""
    d: RunningDaemon = make_daemon()
    r = d.ctl("erase", "--subject", os.fsdecode(b"user-\xff\xfe"))
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "not valid UTF-8" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
