"""Damaged stored records cost the record, never an actor: through the real
daemon, with records damaged in its LMDB as a failing disk would damage them.

- An observation that no longer decodes is skipped when the analyzer rebuilds
  its windows at start (counted, logged), instead of crash-looping it until
  the daemon exits.
- A SIGHUP whose governance loading meets an unexpected error (a stored
  relaxation that no longer decodes) keeps the running configuration.
"""

from __future__ import annotations

import signal

import lmdb
import pytest

from tests.integration.conftest import RunningDaemon, wait_for_log

pytestmark = pytest.mark.integration

# 0xc1 is the one byte MessagePack never uses: no decoder reads past it.
GARBAGE = b"\xc1damaged"


def _damage(d: RunningDaemon, db_name: bytes, key: bytes | None) -> None:
    """Overwrite one record's value (the last one when ``key`` is None), from
    another process, as LMDB allows; map size 0 keeps the daemon's."""
    env = lmdb.open(str(d.data_dir / "lmdb"), max_dbs=32, map_size=0)
    try:
        db = env.open_db(db_name, create=False)
        with env.begin(write=True, db=db) as txn:
            if key is None:
                cur = txn.cursor()
                assert cur.last()
                key = cur.key()
            txn.put(key, GARBAGE)
    finally:
        env.close()


def _metric(d: RunningDaemon, name: str) -> float:
    with d.client() as c:
        scraped = c.get("/metrics")
    assert scraped.status_code == 200, scraped.text
    for line in scraped.text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_an_undecodable_observation_is_skipped_not_a_crash_loop(make_daemon) -> None:  # type: ignore[no-untyped-def]
    d: RunningDaemon = make_daemon(
        "[supervisor]\nmax_restarts = 2\nbackoff_initial_s = 0.05\nbackoff_max_s = 0.1\n",
        auth=True,
    )
    with d.client() as c:
        ids = [
            c.post(
                "/api/v1/observations",
                json={"event_type": "a.b", "sector": "generic", "value": i, "metadata": {}},
            ).json()["id"]
            for i in range(3)
        ]
    assert d.stop() == 0
    _damage(d, b"observations", None)  # the newest: the first the analyzer reads

    d.start()
    wait_for_log(d, "cannot be decoded and are skipped")
    with d.client() as c:
        # A cycle runs through the analyzer that rebuilt from the damaged store.
        assert c.post("/api/v1/mape-k/execute").status_code == 200
        health = c.get("/health")
        assert health.status_code == 200, health.text
        assert all(a["restarts"] == 0 for a in health.json()["actors"].values())
        # The undamaged records still read back.
        assert c.get(f"/api/v1/observations/{ids[0]}").status_code == 200
    assert _metric(d, 'knhk_store_records_unreadable_total{table="observations"}') == 1.0
    assert d.proc is not None and d.proc.poll() is None
    assert d.stop() == 0


def test_sighup_meeting_a_damaged_relaxation_keeps_the_running_configuration(
    daemon: RunningDaemon,
) -> None:
    with daemon.client() as c:
        r = c.post(
            "/api/v1/guards/finance-core/relaxations",
            json={"reason": "migration"},
        )
        assert r.status_code == 201, r.text
    _damage(daemon, b"relaxations", None)
    original = daemon.config.read_text()
    daemon.config.write_text(original.replace("interval_s = 3600", "interval_s = 1800"))
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for_log(daemon, "reload refused, keeping the running configuration: governance")
    assert "configuration reloaded" not in daemon.log()
    assert daemon.proc.poll() is None
    with daemon.client() as c:
        assert c.get("/ready").status_code == 200
        assert c.get("/api/v1/guards").status_code == 200
    assert daemon.stop() == 0
