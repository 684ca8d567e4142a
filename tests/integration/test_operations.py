"""Operator-facing behaviour: configuration checks, reload, supervision."""

from __future__ import annotations

import resource
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import RunningDaemon, wait_for_log
from tests.integration.conftest import run_knhkd as _knhkd

pytestmark = pytest.mark.integration


def test_check_config_names_the_offending_key(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[loop]\ninterval_s = 2.5\n")
    assert _knhkd("check-config", str(good)).returncode == 0
    for text, key in (
        ("[loop]\nintervl_s = 1\n", "loop.intervl_s"),
        ("[http]\nmax_body_bytes = -1\n", "http.max_body_bytes"),
        ('[storage]\nmap_size_mb = "x"\n', "storage.map_size_mb"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        res = _knhkd("check-config", str(bad))
        assert res.returncode == 2
        assert key in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert _knhkd("check-config", str(tmp_path / "missing.toml")).returncode == 2


def test_check_config_refuses_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('[telemetry]\n# caf\u00e9\nlog_level = "info"\n'.encode("latin-1"))
    res = _knhkd("check-config", str(latin1))
    assert res.returncode == 2, res.stderr
    assert "not UTF-8" in res.stderr and "0xe9" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_start_up_failure_is_one_line_and_non_zero(make_daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    leaky = tmp_path / "leaky.key"
    leaky.write_text("{}")
    leaky.chmod(0o644)
    d: RunningDaemon = make_daemon(f'[keys]\nsigning_key = "{leaky}"\n', start=False)
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(timeout=60) == 2
    # An unsafe key file named by the configuration is refused before the
    # data directory is touched (loop/preflight.py), naming the setting.
    lines = d.log().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("knhkd: "), lines
    assert "invalid configuration: keys.signing_key:" in lines[0] and "too open" in lines[0]
    assert not d.data_dir.exists()


def test_second_daemon_on_the_same_data_dir_is_refused(daemon: RunningDaemon) -> None:
    other = RunningDaemon(data_dir=daemon.data_dir, port=daemon.port + 1, config=daemon.config)
    other.start(wait=False)
    assert other.proc is not None
    assert other.proc.wait(timeout=60) == 2
    assert "in use by another knhkd" in other.log()


def test_sighup_keeps_old_config_when_new_is_invalid(daemon: RunningDaemon) -> None:
    original = daemon.config.read_text()
    daemon.config.write_text(original + "\n[telemetry]\nbogus = 1\n")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for_log(daemon, "reload refused")
    assert "telemetry.bogus" in daemon.log()
    assert httpx.get(daemon.base + "/ready").status_code == 200

    # Not UTF-8: refused like any other invalid file, never a crash.
    daemon.config.write_bytes(original.encode() + b"\n# \xff\xfe\n")
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for_log(daemon, "not UTF-8")
    assert daemon.proc.poll() is None
    assert httpx.get(daemon.base + "/ready").status_code == 200

    daemon.config.write_text(original.replace("interval_s = 3600", "interval_s = 1800"))
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for_log(daemon, "configuration reloaded")
    assert daemon.proc.poll() is None


def test_actor_past_its_restart_budget_stops_the_daemon_non_zero(make_daemon) -> None:  # type: ignore[no-untyped-def]
    # A genuine store fault no input explains, and not a full disk: the data
    # file may not grow past its size (RLIMIT_FSIZE, set on the running
    # daemon), so every commit that needs new pages fails with plenty of free
    # space. Ingest crashes, is restarted with backoff, and past its budget the
    # daemon exits 1.
    d: RunningDaemon = make_daemon(
        "[supervisor]\nmax_restarts = 2\nbackoff_initial_s = 0.05\nbackoff_max_s = 0.1\n"
        "[http]\nmax_body_bytes = 8388608\n"
    )
    assert d.proc is not None
    size = (d.data_dir / "lmdb" / "data.mdb").stat().st_size
    resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE, (size, size))
    big = [{"event_type": "bulk.load", "value": "x" * 2000, "sector": "generic"}] * 1000
    statuses = []
    degraded_seen = False
    with httpx.Client(base_url=d.base, timeout=30.0) as c:
        for _ in range(10):
            if d.proc.poll() is not None:
                break
            try:
                statuses.append(c.post("/api/v1/observations", json=big).status_code)
                h = c.get("/health")
                degraded_seen |= h.status_code == 503 and h.json()["status"] == "degraded"
            except httpx.HTTPError:
                break
            time.sleep(0.02)
    assert d.proc.wait(timeout=60) == 1, d.log()
    assert 201 not in statuses
    assert all(s == 503 for s in statuses), statuses
    assert "restart budget" in d.log() or "failed too often" in d.log()
    assert degraded_seen


def test_systemd_notify_protocol(make_daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Under Type=notify the daemon says READY=1 once serving, WATCHDOG=1 while
    healthy, and STOPPING=1 on SIGTERM — over a real notify socket."""
    import socket as pysocket

    path = tmp_path / "notify.sock"
    sock = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    d: RunningDaemon = make_daemon(start=False)
    d.env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"}
    d.start(wait=False)
    got: list[str] = []

    def receive() -> None:
        # One datagram may carry several assignments (READY=1 and STATUS=…).
        got.extend(sock.recv(4096).decode().splitlines())

    try:
        while "READY=1" not in got:
            receive()
        assert httpx.get(d.base + "/ready").status_code == 200
        while "WATCHDOG=1" not in got:
            receive()
        assert d.stop() == 0
        sock.settimeout(1)
        try:
            while True:
                receive()
        except TimeoutError:
            pass
    finally:
        sock.close()
    assert "STOPPING=1" in got
    assert got.index("READY=1") < got.index("STOPPING=1")
