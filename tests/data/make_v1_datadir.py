"""Build ``v1-datadir.tar.gz``: a data directory written by the release whose
store is schema v1 (before salted observation digests), for the migration test.

How it was made (once, committed as the tarball; re-running needs a checkout
of a schema-v1 commit, e.g. efcace0):

    git worktree add /tmp/knhkd-v1 efcace0 && cd /tmp/knhkd-v1 && make .venv/.installed
    .venv/bin/python /path/to/tests/data/make_v1_datadir.py /path/to/tests/data/v1-datadir.tar.gz

The real daemon runs (authentication off, loopback only), takes 40 observations
over HTTP in 4 requests, of which 10 carry ``metadata.patient_id = "pt-legacy-7"`` (the others
``pt-other-N``),
runs one cycle, and stops cleanly. The tarball holds ``data/`` (the data
directory with its signing key, a test key made for this fixture only).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(out: Path) -> None:
    repo = Path.cwd()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "data"
        conf = root / "knhkd.toml"
        conf.write_text(
            f'[knowledge]\nontology_dir = "{repo / "conf/ontology"}"\n'
            f'shapes_dir = "{repo / "conf/shapes"}"\n'
            f'[governance]\ndoctrines_dir = "{repo / "conf/doctrines"}"\n'
            f'guards_dir = "{repo / "conf/guards"}"\n'
            "[loop]\ninterval_s = 3600\n"
        )
        port = _port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "knhkd.cli.knhkd",
                "run",
                "--config",
                str(conf),
                "--data-dir",
                str(data),
                "--http-bind",
                f"127.0.0.1:{port}",
            ],
            env={**os.environ},
            cwd=tmp,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(base + "/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
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
                r = httpx.post(base + "/api/v1/observations", json=items, timeout=30)
                assert r.status_code == 201, r.text
            httpx.post(base + "/api/v1/cycles", timeout=60)
        finally:
            proc.terminate()
            proc.wait(60)
        with tarfile.open(out, "w:gz") as tar:
            # The ring and LMDB's lock file are runtime state the daemon recreates.
            tar.add(
                data,
                arcname="data",
                filter=lambda ti: (
                    None
                    if ti.name.endswith(("observations.ring", "lock.mdb", "knhkd.lock"))
                    else ti
                ),
            )


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
