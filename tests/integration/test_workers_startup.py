"""HTTP workers start beside the daemon's own start-up (api/pool.py): the
listening socket takes connections from the first moments; a request that
arrives while the daemon starts waits in the backlog, then gets a right
answer: never a 5xx, but 503 ``not-ready`` from /ready itself."""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.integration.conftest import RunningDaemon, free_port

pytestmark = pytest.mark.integration

OBS = {"event_type": "line.tick", "value": {"n": 0}, "sector": "manufacturing", "metadata": {}}
# (method, path): through the lane, and forwarded to the daemon's own app.
REQUESTS = (
    ("POST", "/api/v1/observations"),
    ("GET", "/api/v1/snapshots/current"),
    ("GET", "/ready"),
)
READY = " ready: http "  # the daemon's log line once it is ready


class Answer(NamedTuple):
    method: str
    path: str
    during_start_up: bool  # connected before the daemon logged it was ready
    status: int
    body: str


def _early_client(d: RunningDaemon, kind: int, headers: dict[str, str], out: list[Answer]) -> None:
    """From the daemon's launch until it answers other than 503: a request
    each time the port takes a connection (refused ones are retried)."""
    method, path = REQUESTS[kind]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
        try:
            conn.connect()
        except ConnectionRefusedError:
            time.sleep(0.002)
            continue
        try:
            early = READY not in d.log()
            body = json.dumps(OBS) if method == "POST" else None
            conn.request(method, path, body, {**headers, "Content-Type": "application/json"})
            r = conn.getresponse()
            out.append(Answer(method, path, early, r.status, r.read().decode()))
        finally:
            conn.close()
        if out[-1].status != 503:
            return


def test_requests_during_start_up_wait_and_get_right_answers(make_daemon: Any) -> None:
    d: RunningDaemon = make_daemon(start=False, auth=True)
    d.env["KNHKD_HTTP_WORKERS"] = "2"
    headers = d.headers("administrator")
    out: list[Answer] = []
    threads = [
        threading.Thread(target=_early_client, args=(d, i % len(REQUESTS), headers, out))
        for i in range(2 * len(REQUESTS))
    ]
    d.start(wait=False)
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    d.wait_ready()
    wrong = [
        a for a in out
        if a.status not in (200, 201)
        and not (a.path == "/ready" and a.status == 503 and "not-ready" in a.body)
    ]  # fmt: skip
    assert wrong == [], f"wrong answers during start-up: {wrong}\n{d.log()[-3000:]}"
    assert any(a.during_start_up and a.status in (200, 201) for a in out), (
        "no request was sent while the daemon started"
    )
    ingested = [a for a in out if a.method == "POST"]
    assert len(ingested) == 2 and all(a.status == 201 for a in ingested)
    with d.client() as c:  # each 201 is stored: its id reads back
        for a in ingested:
            assert c.get(f"/api/v1/observations/{json.loads(a.body)['id']}").status_code == 200


def _workers_with(tmpdir: str) -> list[int]:
    """Worker processes (forked and named, or ``python -m knhkd.api.worker``)
    of a daemon started with ``TMPDIR=tmpdir``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text()
                cmd = (entry / "cmdline").read_bytes()
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            worker = comm.startswith("knhkd-worker-") or b"knhkd.api.worker" in cmd
            if worker and f"TMPDIR={tmpdir}".encode() in env:
                found.append(int(entry.name))
    return found


def test_a_failed_start_up_takes_its_workers_and_leaves_nothing(
    make_daemon: Any, tmp_path: Path
) -> None:
    first = make_daemon()  # holds the data directory's lock
    second = RunningDaemon(first.data_dir, free_port(), first.config)
    private = tmp_path / "tmp"
    private.mkdir()
    second.env.update(KNHKD_HTTP_WORKERS="2", TMPDIR=str(private))
    second.start(wait=False)
    assert second.proc is not None
    assert second.proc.wait(timeout=60) == 2, second.log()
    assert "cannot start: storage" in second.log(), second.log()
    assert "[worker 0]" in second.log(), "the workers should have started: " + second.log()
    deadline = time.monotonic() + 10
    while _workers_with(str(private)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _workers_with(str(private)) == [], "workers outlived a failed start-up"
    assert list(private.iterdir()) == [], "the private directory was left behind"
    assert first.client().get("/ready").status_code == 200
