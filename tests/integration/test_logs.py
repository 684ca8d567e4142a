"""The daemon's log as journald and log shippers see it: ``<N>`` priority
prefixes under ``$JOURNAL_STREAM``, JSON lines, the access log and its
switch, and the debug lines ``log_level = "debug"`` adds."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from typing import Any

import pytest

from tests.integration.conftest import STARTED, RunningDaemon, wait_for_log

pytestmark = pytest.mark.integration

OBS = {"event_type": "t.logs", "value": 1, "sector": "generic", "metadata": {}}

# sd-daemon(3) priorities by level name.
PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


def start_under_journal(d: RunningDaemon) -> None:
    """Start ``d`` as systemd does with StandardError=journal: stderr is a
    stream whose device:inode is in $JOURNAL_STREAM (a file here)."""
    d.log_path = d.data_dir.parent / "journal.log"
    d.logs.append(d.log_path)
    if d not in STARTED:
        STARTED.append(d)
    with d.log_path.open("wb") as log:
        st = os.fstat(log.fileno())
        d.proc = subprocess.Popen(
            d.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
            cwd=str(d.data_dir.parent),
        )
    d.wait_ready()


def test_under_journald_every_line_carries_its_priority(make_daemon: Any) -> None:
    d: RunningDaemon = make_daemon('[telemetry]\nlog_level = "debug"\n', start=False, auth=True)
    start_under_journal(d)
    with d.client("administrator") as c:
        assert c.post("/api/v1/observations", json=OBS).status_code == 201
        assert c.get("/api/v1/snapshots/current").status_code == 200
    # A reload of a broken file is refused at error priority.
    good = d.config.read_text()
    d.config.write_text(good + "\n[storage]\nnot_a_setting = 1\n")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    wait_for_log(d, "reload refused")
    d.config.write_text(good)
    assert d.stop() == 0
    lines = [line for line in d.log().splitlines() if line]
    seen: set[int] = set()
    for line in lines:
        m = re.match(r"<(\d)>(\S+) ", line)
        assert m, f"no priority prefix: {line!r}"
        prio, level = int(m[1]), m[2]
        seen.add(prio)
        if level in PRIORITY:
            assert prio == PRIORITY[level], line
    assert {3, 6, 7} <= seen, seen
    text = d.log()
    assert re.search(r"<3>ERROR knhkd: reload refused.*storage\.not_a_setting", text), text
    # log_level = "debug" adds what start-up opened and what ingest committed.
    assert "<7>DEBUG knhkd: configuration " in text and "(from --config)" in text
    assert "<7>DEBUG knhkd: data directory " in text
    assert "<7>DEBUG knhkd.loop.ingest: ingest group committed: 1 requests, generic 1" in text
    # The access log: method, route template, status, duration, principal.
    who = re.escape(d.principal("user-administrator"))
    assert re.search(
        r"<6>INFO knhkd.http.access: POST /api/v1/observations 201 [\d.]+ms "
        rf"principal={who} trace=-",
        text,
    ), text
    assert re.search(r"<6>INFO knhkd.http.access: GET /ready 200 [\d.]+ms principal=- ", text)


def test_json_lines_and_the_access_log_switch(make_daemon: Any) -> None:
    d: RunningDaemon = make_daemon('[telemetry]\nlog_format = "json"\n')
    with d.client(None) as c:
        assert c.post("/api/v1/observations", json=OBS).status_code == 201
    wait_for_log(d, '"route": "/api/v1/observations"')
    # Switched off by a reload: later requests leave no line.
    d.config.write_text(
        d.config.read_text().replace(
            'log_format = "json"', 'log_format = "json"\naccess_log = false'
        )
    )
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    wait_for_log(d, "configuration reloaded")
    with d.client(None) as c:
        assert c.get("/api/v1/snapshots/current").status_code == 200
    assert d.stop() == 0
    records = [json.loads(line) for line in d.log().splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    assert not any(line.startswith("<") for line in d.log().splitlines())
    access = [r for r in records if r["logger"] == "knhkd.http.access"]
    post = next(r for r in access if r["route"] == "/api/v1/observations")
    assert post["method"] == "POST" and post["status"] == 201
    assert post["principal"] == "anonymous" and post["duration_s"] >= 0
    assert post["trace_id"] is None
    assert not [r for r in access if r["route"] == "/api/v1/snapshots/current"], access
    # Authentication off is a warning, and says so in its level.
    assert any(r["level"] == "warning" and r["logger"] == "knhkd.auth" for r in records)


def test_the_access_log_keeps_to_its_budget_and_counts_what_it_left_out(
    make_daemon: Any,
) -> None:
    """``access_log_max_per_s``: past it, requests are counted instead of
    logged, and the next line logged is preceded by how many were not."""
    d: RunningDaemon = make_daemon(
        '[telemetry]\nlog_format = "json"\naccess_log_max_per_s = 5.0\n'
    )
    with d.client(None) as c:
        time.sleep(1.2)  # a full second's budget again
        assert c.get("/health").status_code == 200  # says what start-up left out, if anything
        for _ in range(40):
            assert c.get("/api/v1/snapshots/current").status_code == 200
        time.sleep(0.5)
        assert c.post("/api/v1/observations", json=OBS).status_code == 201
    assert d.stop() == 0
    access = [
        r
        for r in (json.loads(line) for line in d.log().splitlines() if line.strip())
        if r["logger"] == "knhkd.http.access"
    ]
    logged = [r for r in access if r.get("route") == "/api/v1/snapshots/current"]
    post = next(i for i, r in enumerate(access) if r.get("route") == "/api/v1/observations")
    summary = access[post - 1]
    assert "requests not logged in the last" in summary["msg"], summary
    assert 4 <= len(logged) < 40  # the second's budget less /health's line
    assert len(logged) + summary["not_logged"] == 40, (len(logged), summary)
