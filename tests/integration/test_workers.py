"""Multi-core HTTP (``http.workers = 2``): the real daemon with two worker
processes on its listening socket, real LMDB, real tokens.

- ``kill -9`` of the daemon under load from many connections: every
  acknowledged observation is stored once, and the workers die with it;
- ``kill -9`` of one worker under load: it is restarted, and no acknowledged
  observation is lost or stored twice;
- a read, a governance write, an auth failure and a bad body through the
  workers answer as the daemon alone does, and /metrics and the audit trail
  count what the workers did.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import lmdb
import msgspec
import pytest

from tests.integration.conftest import RunningDaemon, wait_for_log

pytestmark = pytest.mark.integration

OBS = {"event_type": "line.tick", "value": {"n": 0}, "sector": "manufacturing", "metadata": {}}


def _with_workers(make_daemon: Any, n: int = 2, **kw: Any) -> RunningDaemon:
    d: RunningDaemon = make_daemon(start=False, **kw)
    d.env["KNHKD_HTTP_WORKERS"] = str(n)
    d.start()
    wait_for_log(d, f"HTTP served by {n} worker processes")
    return d


def _workers_of(d: RunningDaemon) -> list[int]:
    assert d.proc is not None
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        # Started as ``python -m knhkd.api.worker``, or forked and named (api/pool.py).
        named = stat.split(" (", 1)[1].startswith("knhkd-worker-")
        if ppid == d.proc.pid and (b"knhkd.api.worker" in cmd or named):
            found.append(int(entry.name))
    return sorted(found)


def _hammer(d: RunningDaemon, acked: list[tuple[str, str]], stop: threading.Event, w: int) -> None:
    """Post single observations and batches, each with a value of its own,
    until stopped; record (id, tag) of everything acknowledged with 201."""
    n = 0
    headers = d.headers("producer")
    while not stop.is_set() and n < 5000:
        # A new connection now and then: the kernel spreads them over workers.
        with httpx.Client(base_url=d.base, timeout=10.0, headers=headers) as c:
            for _ in range(20):
                if stop.is_set():
                    return
                n += 1
                tags = [f"{w}.{n}.{i}" for i in range(3 if n % 4 == 0 else 1)]
                body: Any = [{**OBS, "value": {"tag": t}} for t in tags]
                if len(tags) == 1:
                    body = body[0]
                try:
                    r = c.post("/api/v1/observations", json=body)
                except httpx.HTTPError:
                    break  # the server side died mid-request: never acknowledged
                if r.status_code == 201:
                    data = r.json()
                    ids = [data["id"]] if len(tags) == 1 else data["ids"]
                    acked.extend(zip(ids, tags, strict=True))


def _load(
    d: RunningDaemon, threads: int = 8
) -> tuple[list[tuple[str, str]], threading.Event, list[threading.Thread]]:
    acked: list[tuple[str, str]] = []
    stop = threading.Event()
    ts = [threading.Thread(target=_hammer, args=(d, acked, stop, i)) for i in range(threads)]
    for t in ts:
        t.start()
    return acked, stop, ts


def _stored_tags(d: RunningDaemon) -> Counter[str]:
    """Every stored observation's tag, read from the LMDB file (daemon stopped)."""
    env = lmdb.open(str(d.data_dir / "lmdb"), max_dbs=16, readonly=True, lock=False)
    tags: Counter[str] = Counter()
    try:
        db = env.open_db(b"observations", create=False)
        with env.begin(db=db) as txn:
            for _, raw in txn.cursor():
                tag = msgspec.msgpack.decode(raw)["value"].get("tag")
                if tag is not None:
                    tags[tag] += 1
    finally:
        env.close()
    return tags


def _check(d: RunningDaemon, acked: list[tuple[str, str]]) -> None:
    assert len(acked) > 30, "the load should have had time to get acknowledgements"
    tags = _stored_tags(d)
    lost = [t for _, t in acked if tags[t] == 0]
    twice = [t for t, n in tags.items() if n > 1]
    assert not lost, f"acknowledged observations lost: {lost[:5]}"
    assert not twice, f"observations stored twice: {twice[:5]}"
    assert len({i for i, _ in acked}) == len(acked), "ids must be unique"


def _gone(pids: list[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{p}").exists() and "Z" not in _state(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_kill9_of_the_daemon_loses_nothing_acknowledged_and_takes_the_workers(
    make_daemon: Any,
) -> None:
    d = _with_workers(make_daemon, auth=True)
    workers = _workers_of(d)
    assert len(workers) == 2
    acked, stop, threads = _load(d)
    time.sleep(2.0)
    d.kill9()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert _gone(workers), "the workers outlived the daemon"
    # A worker that lost its daemon says so in a line, not a traceback.
    assert "Traceback" not in d.log(), d.log()
    snapshot = list(acked)
    _check(d, snapshot)
    d.start()
    res = d.ctl("receipts", "verify-chain", "--format", "json")
    assert res.returncode == 0, res.stdout
    d.stop()


def test_a_killed_worker_is_restarted_and_nothing_acknowledged_is_lost_or_doubled(
    make_daemon: Any,
) -> None:
    d = _with_workers(make_daemon, auth=True)
    victim = _workers_of(d)[0]
    acked, stop, threads = _load(d)
    time.sleep(1.0)
    os.kill(victim, signal.SIGKILL)
    wait_for_log(d, "HTTP worker")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = _workers_of(d)
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the killed worker was not restarted:\n{d.log()}")
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    with d.client("operator") as c:
        metrics = c.get("/metrics").text
        figures = c.get("/health").json()["figures"]
    assert 'knhk_actor_restarts_total{actor="http_worker"} 1.0' in metrics
    # The workers' request timings reach the figures the loop judges by.
    assert figures["request_p99_ms"].get("/api/v1/observations", 0) > 0, figures
    assert d.stop() == 0
    _check(d, list(acked))


def _answers(d: RunningDaemon) -> list[tuple[int, Any]]:
    out: list[tuple[int, Any]] = []
    with d.client() as admin, httpx.Client(base_url=d.base, timeout=30.0) as nobody:
        r = admin.post("/api/v1/observations", json=OBS)
        out.append((r.status_code, sorted(r.json())))
        obs_id = r.json()["id"]
        r = admin.get(f"/api/v1/observations/{obs_id}")
        out.append((r.status_code, r.json()["value"]))
        r = admin.get("/api/v1/snapshots/current")
        # One Date and one Server header (RFC 9110 §6.6.1), the worker's own.
        once = [len(r.headers.get_list(h)) for h in ("date", "server")]
        out.append((r.status_code, (sorted(r.json()), once)))
        # A governance write (ΔΣ proposal), refused for its missing fields.
        r = admin.post("/api/v1/proposals", json={"sector": "finance"})
        out.append((r.status_code, r.json()["type"]))
        # Authentication failures, on a forwarded route and on the worker's own.
        for method, path in (
            ("GET", "/api/v1/snapshots/current"),
            ("POST", "/api/v1/observations"),
        ):
            r = nobody.request(method, path, json=OBS)
            out.append((r.status_code, (r.json()["type"], r.headers.get("www-authenticate"))))
        r = admin.post("/api/v1/observations", json={"event_type": "x"})
        out.append((r.status_code, r.json()))
        r = admin.post(
            "/api/v1/observations", content=b"{}", headers={"Content-Type": "text/plain"}
        )
        out.append((r.status_code, r.json()["type"]))
        r = admin.get("/api/v1/nowhere")
        out.append((r.status_code, r.json()["type"]))
        r = admin.post("/api/v1/observations", json=OBS, headers={"Host": "evil.example"})
        out.append((r.status_code, r.json()["type"]))
    return out


def _counted(d: RunningDaemon) -> dict[str, float]:
    with d.client() as c:
        text = c.get("/metrics").text
    found = {}
    for line in text.splitlines():
        if line.startswith(("knhk_requests_total", "knhk_observations_ingested_total")):
            key, value = line.rsplit(" ", 1)
            found[key] = float(value)
    return found


def _eventually(what: Any, want: Any, timeout: float = 10.0) -> Any:
    """``what()`` once it equals ``want`` (a worker's counts and audit records
    reach the daemon with its next lane message, just after its answer)."""
    deadline = time.monotonic() + timeout
    while (got := what()) != want and time.monotonic() < deadline:
        time.sleep(0.1)
    return got


def _audits(d: RunningDaemon) -> list[tuple[str, str, str]]:
    listed = d.ctl("audit", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    return sorted(
        (e["route"], e["decision"], e["reason"])
        for e in json.loads(listed.stdout)
        if not e["route"].startswith("admin ")
    )


def _settled(counts: dict[str, float]) -> dict[str, float]:
    # Each look at /metrics is itself a success counted after it answered.
    return {k: v for k, v in counts.items() if 'status="success"' not in k}


def test_every_route_answers_through_workers_as_without_them(make_daemon: Any) -> None:
    alone: RunningDaemon = make_daemon(auth=True)
    through = _with_workers(make_daemon, auth=True)
    before = [_settled(_counted(d)) for d in (alone, through)]
    assert _answers(through) == _answers(alone)
    # The workers' answers and ingests are counted in the daemon's /metrics,
    # and their decisions are in its audit trail.
    want = {k: v - before[0][k] for k, v in _settled(_counted(alone)).items()}
    assert any(want.values())

    def grown() -> dict[str, float]:
        return {k: v - before[1][k] for k, v in _settled(_counted(through)).items()}

    assert _eventually(grown, want) == want
    # Audit records are queued for the auditor's group commit, not awaited:
    # the daemon alone's trail is read once it has stopped changing.
    want_audits = _audits(alone)
    while (again := _eventually(lambda: _audits(alone), None, timeout=1.0)) != want_audits:
        want_audits = again
    assert want_audits
    assert _eventually(lambda: _audits(through), want_audits) == want_audits
    assert through.stop() == 0


def _established_per_worker(d: RunningDaemon, port: int) -> dict[int, int]:
    """Established TCP connections to ``port`` each worker holds (by socket inode)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    inodes.add(fields[9])
    held: dict[int, int] = {}
    for pid in _workers_of(d):
        links = []
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                links.append(os.readlink(fd))
        held[pid] = sum(1 for t in links if t.startswith("socket:[") and t[8:-1] in inodes)
    return held


def test_connections_are_spread_evenly_over_the_workers(make_daemon: Any) -> None:
    # Unbalanced, the kernel handed one worker 15 or all 16 of a client's
    # connections now and then (api/balance.py).
    d = _with_workers(make_daemon)
    port = int(d.base.rsplit(":", 1)[1])
    socks = []
    try:
        # All at once, as a load generator opens its pool.
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10.0) for _ in range(16)]
        for s in socks:
            s.sendall(b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        for s in socks:
            assert s.recv(4096).startswith(b"HTTP/1.1 200"), "no answer"
        held = _established_per_worker(d, port)
        assert sum(held.values()) == 16, held
        assert max(held.values()) - min(held.values()) <= 2, held
    finally:
        for s in socks:
            s.close()
    assert d.stop() == 0


LIMITED = "https://idp.test/realms/knhkd#limited"
BURST = 6


def test_a_principals_rate_limit_holds_across_the_workers(make_daemon: Any) -> None:
    # One bucket table for the daemon and its workers (auth/ratelimit.py):
    # with a table per process, each worker would give the principal a burst.
    d = _with_workers(
        make_daemon,
        extra_config=f"""
[auth.rate_limit]
rate_per_s = 0.0

[[auth.rate_limit.overrides]]
subject = "{LIMITED}"
rate_per_s = 0.001
burst = {BURST}
""",
        auth=True,
    )
    assert d.issuer is not None
    port = int(d.base.rsplit(":", 1)[1])
    token = d.issuer.token("producer", sub="limited")
    request = (
        b"POST /api/v1/observations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {token}\r\n".encode()
        + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(json.dumps(OBS))
        + json.dumps(OBS).encode()
    )
    socks = []
    try:
        # Connections held open together, so both workers take some.
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10.0) for _ in range(16)]
        statuses = []
        for s in socks:
            s.sendall(request)
            statuses.append(int(s.recv(65536).split(b" ", 2)[1]))
        held = _established_per_worker(d, port)
        assert len(held) == 2 and min(held.values()) > 0, held
        assert Counter(statuses) == {201: BURST, 429: 16 - BURST}, statuses
    finally:
        for s in socks:
            s.close()
    # The daemon's own app (a route a worker forwards) takes from the same bucket.
    with d.as_principal("limited", "producer") as c:
        r = c.get("/api/v1/snapshots/current")
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"]
    # Nobody else is limited.
    with d.client("producer") as c:
        assert c.post("/api/v1/observations", json=OBS).status_code == 201
    assert d.stop() == 0


def test_a_start_removes_the_private_directories_of_daemons_that_are_gone(
    make_daemon: Any, tmp_path: Path
) -> None:
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    gone = tmp / "knhkd-front-999999999-x1"  # past any pid_max: no such process
    alive = tmp / f"knhkd-front-{os.getpid()}-x2"
    foreign = tmp / "knhkd-front-x3"
    for leftover in (gone, alive, foreign):
        leftover.mkdir()
        (leftover / "lane.sock").write_bytes(b"")
    d: RunningDaemon = make_daemon(start=False)
    d.env["TMPDIR"] = str(tmp)
    d.env["KNHKD_HTTP_WORKERS"] = "2"
    d.start()
    wait_for_log(d, "HTTP served by 2 worker processes")
    assert not gone.exists()
    assert alive.exists() and foreign.exists()
    assert d.proc is not None
    own = [p for p in tmp.iterdir() if p.name.startswith(f"knhkd-front-{d.proc.pid}-")]
    assert len(own) == 1, sorted(tmp.iterdir())
    assert d.stop() == 0
    assert not own[0].exists()
