"""Storage full is a state, not a crash: through the real daemon, with the LMDB
map at a tiny ceiling, and on a real full disk (a small tmpfs this test mounts;
skipped, saying why, where it may not).

While full: writes are 507 ``storage-full`` naming the cause, ``/health`` is
degraded naming it, ``/ready`` says reads yes, writes no; reads, the receipt
chain, proofs and the admin socket keep working; no actor restarts and the
daemon does not exit. Writes resume by themselves when the cause goes (a
ceiling raised by SIGHUP, space freed), and every earlier 201 still reads back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import RunningDaemon

pytestmark = pytest.mark.integration

BATCH = [{"event_type": "bulk.load", "value": "x" * 1000, "sector": "generic"}] * 200


def _fill(d: RunningDaemon, c: httpx.Client, limit: int = 400) -> tuple[list[str], httpx.Response]:
    """Ingest batches until one is refused; the ids acked, and the refusal.
    A checkpoint is signed after the first, to be served while full."""
    ids: list[str] = []
    for i in range(limit):
        if i == 1:
            issued = d.ctl("checkpoint", "--issue")
            assert issued.returncode == 0, issued.stderr
        r = c.post("/api/v1/observations", json=BATCH)
        if r.status_code != 201:
            return ids, r
        ids.extend(r.json()["ids"])
    raise AssertionError(f"the store never filled after {len(ids)} observations")


def _assert_full_state(d: RunningDaemon, c: httpx.Client, ids: list[str], cause: str) -> None:
    r = c.post("/api/v1/observations", json=BATCH[:1])
    assert r.status_code == 507, r.text
    problem = r.json()
    assert problem["type"] == "urn:knhkd:problem:storage-full"
    assert cause in problem["detail"]
    health = c.get("/health")
    assert health.status_code == 503
    assert health.json()["status"] == "degraded"
    assert cause in health.json()["dependencies"]["writes"]
    ready = c.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["reads"] is True and ready.json()["writes"] is False
    assert cause in ready.json()["refused"]["storage"]
    # Reads, proofs and the admin socket keep working.
    for obs_id in (ids[0], ids[-1]):
        assert c.get(f"/api/v1/observations/{obs_id}").status_code == 200
    assert c.get("/api/v1/receipts?limit=5").status_code == 200
    assert c.get("/api/v1/checkpoint").status_code == 200
    status = d.ctl("status", "--format", "json")
    assert status.returncode == 0, status.stderr
    assert all(a["restarts"] == 0 for a in json.loads(status.stdout)["actors"].values())
    verify = d.ctl("receipts", "verify-chain", "--format", "json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert d.proc is not None and d.proc.poll() is None


def _wait_for_201(c: httpx.Client, timeout: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        r = c.post("/api/v1/observations", json=BATCH[:1])
        if r.status_code == 201 or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def _all_read_back(c: httpx.Client, ids: list[str]) -> None:
    # Every tenth and the last: bounded, and spread over every commit.
    for obs_id in [*ids[::10], ids[-1]]:
        assert c.get(f"/api/v1/observations/{obs_id}").status_code == 200, obs_id


def test_map_at_its_ceiling_refuses_writes_until_sighup_raises_it(make_daemon) -> None:  # type: ignore[no-untyped-def]
    d: RunningDaemon = make_daemon(
        "[storage]\nmap_size_mb = 2\nmax_map_size_mb = 4\n[http]\nmax_body_bytes = 8388608\n"
    )
    with d.client() as c:
        ids, refused = _fill(d, c)
        assert refused.status_code == 507, refused.text
        assert "storage.max_map_size_mb = 4" in refused.json()["detail"]
        _assert_full_state(d, c, ids, "map at its ceiling storage.max_map_size_mb = 4")
        # What KNHKStorageDegraded alerts on, set by the scrape itself.
        assert 'knhk_storage_writes_refused{cause="storage"} 1.0' in c.get("/metrics").text

        d.config.write_text(
            d.config.read_text().replace("max_map_size_mb = 4", "max_map_size_mb = 64")
        )
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        r = _wait_for_201(c)
        assert r.status_code == 201, r.text
        assert c.get("/health").status_code == 200
        assert c.get("/ready").json() == {"ready": True}
        assert 'knhk_storage_writes_refused{cause="storage"} 0.0' in c.get("/metrics").text
        _all_read_back(c, ids)
    assert d.stop() == 0


# --- a real full disk -------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    # Mounted as the data directory itself: the daemon's log (written beside
    # the data directory) stays on the real disk.
    where = tmp_path / "disk" / "data"
    where.mkdir(parents=True)
    got = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if got.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {got.stderr.strip() or got.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _ballast(path: Path, leave_bytes: int) -> None:
    """Fill ``path``'s file system with one file, leaving about ``leave_bytes``."""
    st = os.statvfs(path.parent)
    size = max(st.f_bavail * st.f_frsize - leave_bytes, 0)
    with path.open("wb") as fh:
        chunk = b"\0" * (1 << 20)
        while size > 0:
            try:
                fh.write(chunk[: min(size, len(chunk))])
            except OSError:
                break
            size -= len(chunk)


def _daemon_on(tmpfs: Path, make_daemon) -> RunningDaemon:  # type: ignore[no-untyped-def]
    d: RunningDaemon = make_daemon(
        # The ring lives in the data directory; the disk is the store's here.
        "[ring]\nenabled = false\n[http]\nmax_body_bytes = 8388608\n",
        start=False,
    )
    d.data_dir = tmpfs
    return d


def test_a_full_disk_refuses_writes_until_space_returns(tmpfs: Path, make_daemon) -> None:  # type: ignore[no-untyped-def]
    d = _daemon_on(tmpfs, make_daemon)
    d.start()
    ballast = tmpfs / "ballast"
    _ballast(ballast, leave_bytes=3 << 20)
    with d.client() as c:
        ids, refused = _fill(d, c)
        assert refused.status_code == 507, refused.text
        assert "no space left on device" in refused.json()["detail"]
        _assert_full_state(d, c, ids, "no space left on device")

        ballast.unlink()
        r = _wait_for_201(c)
        assert r.status_code == 201, r.text
        assert c.get("/health").status_code == 200
        _all_read_back(c, ids)
    assert d.stop() == 0


def test_starting_on_a_full_disk_is_one_line_and_exit_2(tmpfs: Path, make_daemon) -> None:  # type: ignore[no-untyped-def]
    d = _daemon_on(tmpfs, make_daemon)
    d.start()
    with d.client() as c:
        first = c.post("/api/v1/observations", json=BATCH[:1])
        assert first.status_code == 201
    assert d.stop() == 0
    _ballast(tmpfs / "ballast", leave_bytes=0)

    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(timeout=60) == 2, d.log()
    last = d.log().strip().splitlines()[-1]
    assert last.startswith("knhkd: cannot start: storage: no space left on device"), d.log()
    assert "Traceback" not in d.log()
    leftovers = [p for p in d.data_dir.rglob("*") if ".tmp" in p.name]
    assert leftovers == []

    (tmpfs / "ballast").unlink()
    d.start()
    with d.client() as c:
        assert c.get(f"/api/v1/observations/{first.json()['ids'][0]}").status_code == 200
    assert d.stop() == 0
