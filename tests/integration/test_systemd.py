"""The daemon under systemd's protocols, with the test playing systemd.

- sd_notify: a real ``$NOTIFY_SOCKET`` (an AF_UNIX datagram socket bound
  here): ``READY=1`` with ``STATUS=ready…``, ``STATUS=degraded`` naming the
  cause (storage full), ``RELOADING=1`` with ``MONOTONIC_USEC`` (the
  ``CLOCK_MONOTONIC`` of the signal) then ``READY=1``, and ``STOPPING=1`` with
  ``STATUS=draining``.
- Socket activation: this process binds the HTTP and admin sockets, as
  ``knhkd.socket`` and ``knhkd-admin.socket`` would, and starts the daemon
  twice with ``LISTEN_FDS``/``LISTEN_PID``/``LISTEN_FDNAMES`` (``LISTEN_PID``
  set by an exec wrapper, as systemd-socket-activate does) while client
  threads keep posting: no connection error, every 201 stored, and the
  requests sent while no daemon ran are answered by the next one.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import RunningDaemon, read_until_eof, stored_counts

pytestmark = pytest.mark.integration

BATCH = [{"event_type": "bulk.load", "value": "x" * 1000, "sector": "generic"}] * 200

# Puts the descriptors given as argv[1] at 3, 4, … and execs the rest of argv
# with LISTEN_PID set to its own pid (which exec keeps): what systemd does
# between fork and exec.
EXEC_WRAPPER = (
    "import os, sys\n"
    "fds = [int(f) for f in sys.argv[1].split(',')]\n"
    "for i, fd in enumerate(fds):\n"
    "    os.dup2(fd, 3 + i)\n"
    "    os.close(fd)\n"
    "os.environ['LISTEN_PID'] = str(os.getpid())\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class Notifications:
    """The datagrams a daemon sends to ``$NOTIFY_SOCKET``, as assignments."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[dict[str, str]] = []

    def until(self, key: str, prefix: str = "", timeout: float = 60.0) -> dict[str, str]:
        """The next datagram that sets ``key`` to a value starting with ``prefix``."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                raw = self.sock.recv(4096).decode()
            except TimeoutError:
                raise AssertionError(f"no {key}={prefix}… in {self.seen}") from None
            msg = dict(line.partition("=")[::2] for line in raw.splitlines())
            self.seen.append(msg)
            if msg.get(key, "\0").startswith(prefix):
                return msg

    def close(self) -> None:
        self.sock.close()


def test_status_reloading_and_draining(make_daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    notes = Notifications(tmp_path / "notify.sock")
    d: RunningDaemon = make_daemon(
        "[storage]\nmap_size_mb = 2\nmax_map_size_mb = 4\n[http]\nmax_body_bytes = 8388608\n",
        start=False,
    )
    d.env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    try:
        d.start(wait=False)
        ready = notes.until("READY", "1")
        assert ready["STATUS"] == f"ready: http http://127.0.0.1:{d.port}", ready
        with d.client() as c:
            for _ in range(400):
                if c.post("/api/v1/observations", json=BATCH).status_code == 507:
                    break
            else:
                raise AssertionError("the store never filled")
            degraded = notes.until("STATUS", "degraded:")["STATUS"]
            assert "storage full: nothing was stored" in degraded, degraded
            assert "storage.max_map_size_mb = 4" in degraded, degraded

            d.config.write_text(
                d.config.read_text().replace("max_map_size_mb = 4", "max_map_size_mb = 64")
            )
            assert d.proc is not None
            before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            d.proc.send_signal(signal.SIGHUP)
            reloading = notes.until("RELOADING", "1")
            after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            # sd_notify(3): the reload's start on CLOCK_MONOTONIC, in µs.
            assert before <= int(reloading["MONOTONIC_USEC"]) <= after, reloading
            assert "READY" not in reloading
            assert notes.until("READY", "1")["STATUS"]
            assert notes.until("STATUS", "ready:")["STATUS"].endswith(str(d.port))
        assert d.stop() == 0
        stopping = notes.until("STOPPING", "1")
        assert stopping["STATUS"].startswith("draining:"), stopping
    finally:
        notes.close()


def _listening(http_port: int, admin_path: Path) -> tuple[socket.socket, socket.socket]:
    http = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    http.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    http.bind(("127.0.0.1", http_port))
    http.listen(1024)
    admin = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    admin.bind(str(admin_path))
    admin_path.chmod(0o600)
    admin.listen(64)
    return http, admin


def _activated(d: RunningDaemon, socks: list[socket.socket], names: str) -> list[int]:
    """Start ``d`` with ``socks`` passed as systemd passes them; the copies
    of the descriptors made for it (above 3 and 4, so that the wrapper's
    dup2 overwrites none of them), to close afterwards."""
    fds = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, 10) for s in socks]
    d.launcher = [sys.executable, "-c", EXEC_WRAPPER, ",".join(map(str, fds))]
    d.pass_fds = tuple(fds)
    d.env = {"LISTEN_FDS": str(len(socks)), "LISTEN_FDNAMES": names}
    return fds


def _post_raw(port: int, body: bytes) -> socket.socket:
    """A request sent on a new connection, its answer not read yet."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=60)
    conn.sendall(
        b"POST /api/v1/observations HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (port, len(body), body)
    )
    return conn


# With workers (api/pool.py) the passed socket is theirs, taken before the
# daemon's own start-up: connections made meanwhile wait and are answered.
@pytest.mark.parametrize("workers", ["1", "2"])
def test_restart_under_load_refuses_no_connection(  # type: ignore[no-untyped-def]
    make_daemon, tmp_path: Path, workers: str
) -> None:
    d: RunningDaemon = make_daemon(start=False)
    d.data_dir.mkdir(mode=0o700)
    http, admin = _listening(d.port, d.data_dir / "admin.sock")
    copies = _activated(d, [http, admin], "http:admin")
    d.env["KNHKD_HTTP_WORKERS"] = workers
    stop = threading.Event()
    lock = threading.Lock()
    ids: list[str] = []
    statuses: list[int] = []
    errors: list[str] = []

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            body = {"event_type": "restart.load", "value": f"{n}-{i}", "sector": "generic"}
            try:
                # A new connection each time: every one of them must be taken.
                r = httpx.post(d.base + "/api/v1/observations", json=body, timeout=60.0)
            except httpx.HTTPError as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                statuses.append(r.status_code)
                if r.status_code == 201:
                    ids.append(r.json()["id"])

    def wait_for_201s(n: int) -> None:
        deadline = time.monotonic() + 60
        while len(ids) < n:
            assert time.monotonic() < deadline, f"{statuses[-20:]} {errors[:5]}"
            time.sleep(0.02)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    try:
        d.start()
        assert "serving the 1 HTTP socket(s) systemd passed" in d.log()
        for t in threads:
            t.start()
        wait_for_201s(20)
        assert d.stop() == 0
        # No daemon runs now: both sockets still take a connection and a
        # request, which the next instance answers.
        http_probe = _post_raw(
            d.port, b'{"event_type": "while.down", "value": 1, "sector": "generic"}'
        )
        admin_probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        admin_probe.settimeout(60)
        admin_probe.connect(str(d.data_dir / "admin.sock"))
        admin_probe.sendall(b'{"cmd": "status", "args": {}}\n')
        d.start()
        wait_for_201s(len(ids) + 20)
    finally:
        stop.set()
        for t in threads:
            if t.is_alive():
                t.join(timeout=90)
    answer = read_until_eof(http_probe, timeout=60).decode()
    assert answer.startswith("HTTP/1.1 201 "), answer
    ids.append(json.loads(answer.split("\r\n\r\n", 1)[1])["id"])
    status = json.loads(admin_probe.makefile("rb").readline())
    assert status["ok"] is True and status["result"]["pid"] == d.proc.pid, status  # type: ignore[union-attr]
    admin_probe.close()
    assert errors == []
    assert set(statuses) <= {201, 503}, sorted(set(statuses))
    with d.client() as c:
        for obs_id in ids:
            assert c.get(f"/api/v1/observations/{obs_id}").status_code == 200, obs_id
    assert stored_counts(d)[0] == len(ids)
    assert d.stop() == 0
    # The sockets are the parent's: still there after the daemon is gone.
    assert (d.data_dir / "admin.sock").exists()
    for fd in copies:
        os.close(fd)
    http.close()
    admin.close()


def test_an_unknown_socket_name_is_refused_exit_2(make_daemon) -> None:  # type: ignore[no-untyped-def]
    d: RunningDaemon = make_daemon(start=False)
    sock = socket.create_server(("127.0.0.1", d.port))
    copies = _activated(d, [sock], "metrics")
    try:
        d.start(wait=False)
        assert d.proc is not None
        assert d.proc.wait(timeout=60) == 2
        lines = d.log().strip().splitlines()
        assert lines == [
            "knhkd: cannot start: socket activation: inherited fd 3 is named 'metrics'; "
            "knhkd serves only FileDescriptorName=http or admin"
        ], lines
    finally:
        sock.close()
        for fd in copies:
            os.close(fd)


ACTIVATE = shutil.which("systemd-socket-activate")


@pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate is not installed (systemd)")
def test_systemd_socket_activate_hands_over_the_http_socket(make_daemon) -> None:  # type: ignore[no-untyped-def]
    d: RunningDaemon = make_daemon(start=False)
    assert ACTIVATE is not None
    d.launcher = [ACTIVATE, f"--listen=127.0.0.1:{d.port}", "--fdname=http"]
    d.start()
    assert "serving the 1 HTTP socket(s) systemd passed" in d.log()
    r = httpx.post(
        d.base + "/api/v1/observations",
        json={"event_type": "activated", "value": 1, "sector": "generic"},
    )
    assert r.status_code == 201, r.text
    assert d.stop() == 0
