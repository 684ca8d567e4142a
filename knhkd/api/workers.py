"""Multi-core HTTP: front-end worker processes (api/worker.py) accept on the
daemon's one listening socket; the daemon keeps the store, the one writer
and every use case.

With ``http.workers`` > 1 (``auto``: one per core; never with TLS) the daemon
binds ``http.bind``, hands the listening socket to the workers (an inherited
file descriptor: the kernel spreads connections over the processes that
accept on it) and accepts on it no more itself. It serves, on a private
directory (``mkdtemp``, 0700):

- ``lane.sock``: the worker lane (api/lane.py, model.py ``Lane*``). A worker
  sends batches of decoded, bounded observations (one entry per HTTP
  request), the audit records of its authentication decisions and counts of
  its answers; each request of a batch goes through ``Daemon.ingest`` (the
  write gate, the sector shapes gate, the group commit) exactly as a request
  served by the daemon would, and the reply carries its ids only once its
  observations and their receipts are fsynced, else the problem the daemon
  would have answered. A batch is processed once: nothing is ever resent,
  so a worker that dies or loses the lane never duplicates an observation;
  a request whose reply did not reach its worker was never answered 201.
- ``http.sock``: the daemon's own app (every route), to which a worker
  forwards each request it does not serve itself.
- ``connections``: each worker's count of open connections, by which the
  workers take turns to accept (api/balance.py).

Supervision: a worker that exits is started again after a backoff (doubling
from ``RESTART_INITIAL_S`` to ``supervisor.backoff_max_s``, back to the start
once a worker has lived ``RESTART_RESET_S``), counted in
``knhk_actor_restarts_total{actor="http_worker"}``. On shutdown each worker
gets SIGTERM and drains its connections (api/server.py) while the lane and
the ingest intake still run; one still alive after ``graceful_timeout_s``
+ ``LINGER_S`` is killed. A worker dies with the daemon: the daemon holds
the other end of its stdin pipe, which the kernel closes however the daemon
dies (api/worker.py).

Must never: resend a batch, answer a lane request before its commit, or let
a worker outlive the daemon.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import trio
from hypercorn.config import Config as HypercornConfig

from knhkd.api import balance, server
from knhkd.api.lane import FrameReader, frame
from knhkd.api.problems import problem_for
from knhkd.config import parse_bind
from knhkd.errors import KnhkdError
from knhkd.loop.daemon import Daemon
from knhkd.model import FigureSamples, LaneBatch, LaneIngest, LaneReply, LaneResult
from knhkd.monitor.decode import Decoded

log = logging.getLogger("knhkd.workers")

RESTART_INITIAL_S = 0.1
RESTART_RESET_S = 10.0
# How long start-up waits for every worker to say hello before it goes on.
START_TIMEOUT_S = 60.0

_batches = msgspec.msgpack.Decoder(LaneBatch)


def _listening_socket(bind: str, backlog: int) -> socket.socket:
    host, port = parse_bind(bind)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


async def _ingest_one(daemon: Daemon, req: LaneIngest, results: list[LaneResult], i: int) -> None:
    try:
        results[i] = LaneResult(ids=await daemon.ingest(Decoded(req.items, req.single)))
    except Exception as exc:  # answered as the daemon's own route would
        if not isinstance(exc, KnhkdError) or type(exc).problem == KnhkdError.problem:
            log.exception("internal error in a worker's POST /api/v1/observations")
        problem, headers = problem_for(exc)
        results[i] = LaneResult(problem=problem, headers=headers)


async def serve_lane(
    daemon: Daemon, on_hello: Callable[[], None], stream: trio.SocketStream
) -> None:
    """One worker's lane: batches in, each processed once, its reply sent when
    all of it is committed (batches in flight together answer in any order)."""
    reader = FrameReader(stream)
    sending = trio.Lock()

    async def answer(batch: LaneBatch) -> None:
        results = [LaneResult() for _ in batch.requests]
        # Concurrently, so that they share the ingest actor's group commit
        # (with each other and with the other workers' requests).
        async with trio.open_nursery() as nursery:
            for i, req in enumerate(batch.requests):
                nursery.start_soon(_ingest_one, daemon, req, results, i)
        async with sending:
            await stream.send_all(frame(LaneReply(batch.id, results)))

    try:
        async with trio.open_nursery() as batches:
            while True:
                batch = await reader.read(_batches)
                if batch.id == 0:
                    on_hello()
                for record in batch.audits:
                    await daemon.audit(record)
                daemon.count_answers(*batch.answered)
                for reason, n in batch.refused.items():
                    daemon.count_refused(reason, n)
                if batch.request_seconds:
                    daemon.merge_figures(FigureSamples(request_seconds=batch.request_seconds))
                batches.start_soon(answer, batch)
    except* (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the worker is gone: nothing it had in flight was answered 201


class _Pool:
    """The worker processes, their restarts and their stop."""

    def __init__(self, daemon: Daemon, count: int, fd: int, runtime: Path) -> None:
        self.daemon = daemon
        self.count = count
        self.fd = fd
        self.runtime = runtime
        self.live: dict[int, trio.Process] = {}
        self.stopping = False
        self.hellos = 0
        self.all_ready = trio.Event()
        self.all_gone = trio.Event()
        self.config = msgspec.json.encode(daemon.cfg) + b"\n"
        self.shares = balance.create(runtime, count)

    def hello(self) -> None:
        self.hellos += 1
        if self.hellos >= self.count:
            self.all_ready.set()

    def _command(self, index: int) -> list[str]:
        return [
            sys.executable, "-m", "knhkd.api.worker",
            "--fd", str(self.fd),
            "--runtime", str(self.runtime),
            "--index", str(index),
        ]  # fmt: skip

    async def keep(self, index: int) -> None:
        delay = RESTART_INITIAL_S
        cap = self.daemon.cfg.supervisor.backoff_max_s
        while not self.stopping:
            started = trio.current_time()
            proc = await trio.lowlevel.open_process(
                self._command(index), stdin=subprocess.PIPE, pass_fds=(self.fd,)
            )
            self.live[index] = proc
            try:
                assert proc.stdin is not None
                with contextlib.suppress(trio.BrokenResourceError):
                    # The configuration in force, then the pipe stays open:
                    # its end tells the worker the daemon is gone.
                    await proc.stdin.send_all(self.config)
                status = await proc.wait()
            finally:
                with trio.CancelScope(shield=True):
                    await _reap(proc)  # and close its stdin: no fd kept per restart
                balance.mark_gone(self.shares, index)
                del self.live[index]
                if not self.live and self.stopping:
                    self.all_gone.set()
            if self.stopping:
                return
            log.warning("HTTP worker %d exited with status %s: restarting", index, status)
            self.daemon.metrics.actor_restarts.labels("http_worker").inc()
            if trio.current_time() - started > RESTART_RESET_S:
                delay = RESTART_INITIAL_S
            await trio.sleep(delay)
            delay = min(delay * 2, cap)

    async def stop(self, timeout: float) -> None:
        self.stopping = True
        if not self.live:
            return
        for proc in list(self.live.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(timeout):
            await self.all_gone.wait()
        for proc in list(self.live.values()):
            log.warning("HTTP worker pid %d did not drain in time: killed", proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await self.all_gone.wait()


async def _reap(proc: trio.Process) -> None:
    with trio.move_on_after(1.0):
        await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
    if proc.stdin is not None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await proc.stdin.aclose()


async def serve(
    daemon: Daemon,
    app: Any,
    hc: HypercornConfig,
    count: int,
    *,
    linger_s: float,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``http.bind`` through ``count`` worker processes until the daemon
    asks to shut down; returns once they are gone and forwarded requests done."""
    cfg = daemon.cfg.http
    runtime = Path(tempfile.mkdtemp(prefix="knhkd-front-"))
    # A socket systemd passed (api/activation.py, taken by hypercorn_config
    # as an fd:// bind) is what the workers share; else http.bind, bound here.
    passed = [int(b.removeprefix("fd://")) for b in hc.bind if b.startswith("fd://")]
    if passed:
        sock = socket.socket(fileno=passed[0])
        sock.set_inheritable(True)
        if len(passed) > 1:
            log.warning("workers serve the first of the %d HTTP sockets passed", len(passed))
    else:
        sock = _listening_socket(cfg.bind, hc.backlog)
    inner = HypercornConfig()
    for key in ("graceful_timeout", "keep_alive_timeout", "h11_max_incomplete_size", "errorlog"):
        setattr(inner, key, getattr(hc, key))
    inner.accesslog = None
    inner.bind = [f"unix:{runtime / 'http.sock'}"]
    lane = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await lane.bind(str(runtime / "lane.sock"))
        lane.listen(256)
        pool = _Pool(daemon, count, sock.fileno(), runtime)
        stop_inner = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    server.serve,
                    app,
                    inner,
                    max_connections=cfg.max_connections,
                    max_body_bytes=cfg.max_body_bytes,
                    max_inflight_body_bytes=lambda: daemon.cfg.http.max_inflight_body_bytes,
                    linger_s=linger_s,
                    on_refused=daemon.count_response,
                    shutdown_trigger=stop_inner.wait,
                )
            )
            async with trio.open_nursery() as front:
                front.start_soon(
                    trio.serve_listeners,
                    partial(serve_lane, daemon, pool.hello),
                    [trio.SocketListener(lane)],
                )
                for index in range(count):
                    front.start_soon(pool.keep, index)
                with trio.move_on_after(START_TIMEOUT_S):
                    await pool.all_ready.wait()
                host, _ = parse_bind(cfg.bind)
                shown = f"[{host}]" if ":" in host else host
                daemon.http_bound = [f"http://{shown}:{sock.getsockname()[1]}"]
                log.info("HTTP served by %d worker processes", count)
                task_status.started()
                await daemon.shutdown_requested.wait()
                # The workers drain while the lane and the ingest intake run.
                await pool.stop(cfg.graceful_timeout_s + linger_s)
                front.cancel_scope.cancel()
            stop_inner.set()  # the daemon's own server drains, then returns
    finally:
        sock.close()
        lane.close()
        shutil.rmtree(runtime, ignore_errors=True)
