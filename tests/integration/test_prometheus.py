"""The real daemon's /metrics, after traffic, through ``promtool check
metrics``: no finding (base units, ``_total`` counters, no abbreviated unit),
the process and platform collectors and ``knhk_build_info`` present, and
every metric the shipped alert rules name exposed by the running daemon.

promtool comes from Debian's ``prometheus`` package (.ci/run installs it);
where it is absent the test is SKIPPED with that reason after its other checks.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from typing import Any

import pytest

from knhkd import __version__
from tests.integration.conftest import RunningDaemon
from tests.integration.test_loop_end_to_end import TRUCK
from tests.unit.test_prometheus_conf import _alerts, metric_names

pytestmark = pytest.mark.integration

PROMTOOL = shutil.which("promtool")


def _families(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def _value(text: str, series: str) -> float:
    m = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    assert m, f"{series} not exposed"
    return float(m.group(1))


def _promtool_finds_nothing(scraped: str) -> None:
    if PROMTOOL is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; .ci/run installs it)")
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=scraped, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def _collectors_and_build_info(scraped: str) -> None:
    families = _families(scraped)
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_start_time_seconds", "python_info"):  # fmt: skip
        assert name in families, f"{name} not exposed"
    m = re.search(r'^knhk_build_info\{(.*)\} 1\.0$', scraped, re.M)
    assert m, "knhk_build_info not exposed"
    labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
    assert labels["version"] == __version__ and set(labels) == {"version", "python", "commit"}


def _durations_are_seconds(scraped: str) -> None:
    assert not [n for n in _families(scraped) if n.endswith("_ms")]
    # One cycle ran: its duration was observed once, in seconds (the bucket
    # bounds are seconds, so a value in milliseconds would sit past 5 s).
    assert _value(scraped, "knhk_mape_k_cycle_duration_seconds_count") == 1.0
    assert _value(scraped, 'knhk_mape_k_cycle_duration_seconds_bucket{le="5.0"}') == 1.0
    assert _value(scraped, "knhk_observation_ingest_latency_seconds_count") >= 1.0


def _alerts_name_exposed_metrics(scraped: str) -> None:
    exposed = set(re.findall(r"^([a-zA-Z_:][\w:]*)[{ ]", scraped, re.M))
    named = {
        n: alert for alert, expr in _alerts().items() for n in metric_names(expr) if n != "up"
    }
    assert sorted(set(named) - exposed) == []
    # The new gauges are fed: nothing refused, nothing found, one cause each.
    assert _value(scraped, 'knhk_storage_writes_refused{cause="storage"}') == 0.0
    assert _value(scraped, 'knhk_storage_writes_refused{cause="integrity"}') == 0.0
    assert _value(scraped, "knhk_integrity_findings") == 0.0


def _checkpoint_lag(d: RunningDaemon) -> float:
    with d.client() as c:
        return _value(c.get("/metrics").text, "knhk_checkpoint_lag_seconds")


def test_metrics_after_traffic(make_daemon: Any) -> None:
    """After ingest, a promoting cycle, a chain verification and a 4xx; the
    promtool check last, so a missing promtool skips only that. No timed
    checkpoint is due in the test, and no timed cycle appends a receipt (the
    conftest's loop.interval_s is an hour), so the receipts wait for the
    checkpoint the test asks for."""
    d: RunningDaemon = make_daemon(
        "[receipts]\ncheckpoint_every = 100000\ncheckpoint_interval_s = 3600.0\n", auth=True
    )
    with d.client() as c:
        assert c.post("/api/v1/observations", json=[TRUCK] * 120).status_code == 201
        assert c.post("/api/v1/mape-k/execute").json()["snapshots_promoted"] == 1
        assert c.get("/api/v1/observations/no-such-id").status_code == 404
    # The checkpointer polls every 0.25 s: within 30 s it has seen the receipts.
    deadline = time.monotonic() + 30.0
    while _checkpoint_lag(d) == 0.0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _checkpoint_lag(d) > 0.0
    assert d.ctl("checkpoint", "--issue").returncode == 0
    assert _checkpoint_lag(d) == 0.0
    assert d.ctl("receipts", "verify-chain").returncode == 0
    with d.client() as c:
        scraped = c.get("/metrics").text
    _collectors_and_build_info(scraped)
    _durations_are_seconds(scraped)
    _alerts_name_exposed_metrics(scraped)
    _promtool_finds_nothing(scraped)
