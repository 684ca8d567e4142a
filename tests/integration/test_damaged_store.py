"""Issue 10 item 6 through the real daemon and ``knhkctl``: damage to the
store is found (fsck, the start-up check against the anchor) and never
extended."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.integration import lmdb_pages as pages
from tests.integration.conftest import RunningDaemon, run_ctl

pytestmark = pytest.mark.integration

OBS = {"event_type": "door.open", "value": {"door": 3}, "sector": "generic", "metadata": {}}
# A checkpoint (and so an anchor) every few receipts.
FAST_CHECKPOINTS = "[receipts]\ncheckpoint_every = 2\ncheckpoint_interval_s = 0.2\n"


def _filled(make_daemon, batches: int = 6) -> RunningDaemon:  # type: ignore[no-untyped-def]
    d: RunningDaemon = make_daemon(FAST_CHECKPOINTS)
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
