"""Build ``v1-datadir.tar.gz``: a data directory written by the release whose
store is schema v1 (before salted observation digests), for the migration test.

How it was made (once, committed as the tarball; re-running needs a checkout
of a schema-v1 commit, e.g. efcace0, whose test helpers it uses):

    git worktree add /tmp/knhkd-v1 efcace0 && cd /tmp/knhkd-v1 && make .venv/.installed
    .venv/bin/python /path/to/tests/data/make_v1_datadir.py /path/to/tests/data/v1-datadir.tar.gz

The real daemon runs (authentication off, loopback only), takes 40 observations
over HTTP in 4 requests, of which 10 carry ``metadata.patient_id = "pt-legacy-7"``
(the others ``pt-other-N``), runs one MAPE-K cycle, and stops cleanly. The
tarball holds ``data/`` (the data directory with its signing key, a test key
made for this fixture only), without the ring and lock files.
"""

from __future__ import annotations

import sys
import tarfile
import tempfile
from pathlib import Path

# The checkout being run: its test helpers start its daemon.
sys.path.insert(0, str(Path.cwd()))

from tests.integration.conftest import RunningDaemon, free_port, write_config


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "data"
        d = RunningDaemon(data, free_port(), write_config(root / "knhkd.toml"))
        d.start()
        try:
            with d.client(None) as c:
                for batch in range(4):
                    items = [
                        {
                            "event_type": "heart_rate",
                            "sector": "healthcare",
                            "value": 60 + i,
                            "metadata": {
                                "patient_id": "pt-legacy-7" if i % 4 == 0 else f"pt-other-{i}"
                            },
                        }
                        for i in range(batch * 10, batch * 10 + 10)
                    ]
                    r = c.post("/api/v1/observations", json=items)
                    assert r.status_code == 201, r.text
            assert d.ctl("cycle", "run").returncode == 0
        finally:
            assert d.stop() == 0
        with tarfile.open(out, "w:gz") as tar:
            # The ring and the lock files are runtime state the daemon recreates.
            runtime = ("observations.ring", "lock.mdb", "knhkd.lock")
            tar.add(
                data, arcname="data", filter=lambda ti: None if ti.name.endswith(runtime) else ti
            )


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
