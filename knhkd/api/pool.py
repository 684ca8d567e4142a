"""The HTTP worker processes (api/worker.py) of ``http.workers`` > 1: the
listening socket they share, the lane's socket, their private directory,
their start, supervision and stop. api/workers.py serves the daemon's side.

``started`` runs before the daemon's own start-up (cli/knhkd.py), so that a
worker's import (~0.4 s) overlaps the daemon's rather than following it: it
binds ``http.bind`` (or takes the socket systemd passed, api/activation.py),
binds the lane's socket in a private directory (``mkdtemp``, 0700), and
starts the workers. A worker connects to the lane at once and says hello,
and accepts on the listening socket only once the daemon answers
(api/workers.py ``serve``); until then connections wait in the socket's
backlog. Light to import (no Quart, no Hypercorn, no loop): the command line
imports it first.

Supervision: a worker that exits is started again after a backoff (doubling
from ``RESTART_INITIAL_S`` to ``supervisor.backoff_max_s``, back to the start
once a worker has lived ``RESTART_RESET_S``), counted in
``knhk_actor_restarts_total{actor="http_worker"}`` (restarts before the
daemon exists are counted once it does). ``stop`` sends each SIGTERM, waits
for them to drain, then kills what is left. A worker dies with the daemon:
the daemon holds the other end of its stdin pipe, which the kernel closes
however the daemon dies (api/worker.py); leaving ``started`` (start-up
failed) closes it too.

Must never: let a worker outlive the daemon, or leave the private directory
or a socket behind when ``started`` is left.
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
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import trio

from knhkd.api import activation
from knhkd.config import Config, parse_bind

if TYPE_CHECKING:  # the command line imports this module before the loop
    from knhkd.loop.daemon import Daemon

log = logging.getLogger("knhkd.workers")

RESTART_INITIAL_S = 0.1
RESTART_RESET_S = 10.0
# Hypercorn's default listen backlog (hypercorn.config.Config.backlog).
BACKLOG = 100


def _listening_socket(bind: str, backlog: int) -> socket.socket:
    host, port = parse_bind(bind)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


class Pool:
    """The worker processes, their restarts and their stop; the sockets they
    share (the listening socket, the lane's) and their private directory."""

    def __init__(
        self, cfg: Config, sock: socket.socket, lane: trio.socket.SocketType, runtime: Path
    ) -> None:
        self.count = cfg.http.worker_count()
        self.backoff_max_s = cfg.supervisor.backoff_max_s
        self.sock = sock
        self.fd = sock.fileno()
        self.lane = lane
        self.runtime = runtime
        self.daemon: Daemon | None = None
        self.unreported_restarts = 0
        self.live: dict[int, trio.Process] = {}
        self.stopping = False
        self.hellos = 0
        self.all_ready = trio.Event()
        self.all_gone = trio.Event()
        # The configuration in force at start (http.workers is restart-only).
        self.config = msgspec.json.encode(cfg) + b"\n"

    def attach(self, daemon: Daemon) -> None:
        """The daemon now exists: restarts are counted in its metrics."""
        self.daemon = daemon
        if self.unreported_restarts:
            daemon.metrics.actor_restarts.labels("http_worker").inc(self.unreported_restarts)
            self.unreported_restarts = 0

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

    async def spawn(self, index: int) -> trio.Process:
        proc = await trio.lowlevel.open_process(
            self._command(index), stdin=subprocess.PIPE, pass_fds=(self.fd,)
        )
        self.live[index] = proc
        assert proc.stdin is not None
        with contextlib.suppress(trio.BrokenResourceError):
            # The configuration in force, then the pipe stays open: its end
            # tells the worker the daemon is gone.
            await proc.stdin.send_all(self.config)
        if self.stopping:  # stop() ran while it was being started
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        return proc

    async def keep(self, index: int, proc: trio.Process) -> None:
        """Supervise worker ``index`` (``proc``, from ``spawn``) until stopped."""
        delay = RESTART_INITIAL_S
        while True:
            started = trio.current_time()
            try:
                status = await proc.wait()
            finally:
                with trio.CancelScope(shield=True):
                    await _reap(proc)  # and close its stdin: no fd kept per restart
                del self.live[index]
                if not self.live and self.stopping:
                    self.all_gone.set()
            if self.stopping:
                return
            log.warning("HTTP worker %d exited with status %s: restarting", index, status)
            if self.daemon is not None:
                self.daemon.metrics.actor_restarts.labels("http_worker").inc()
            else:
                self.unreported_restarts += 1
            if trio.current_time() - started > RESTART_RESET_S:
                delay = RESTART_INITIAL_S
            await trio.sleep(delay)
            delay = min(delay * 2, self.backoff_max_s)
            if self.stopping:
                return
            proc = await self.spawn(index)

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
    if proc.returncode is None and proc.stdin is not None:
        # Not exited (the pool is cancelled: start-up failed): the end of its
        # stdin makes it exit at once, as when the daemon dies.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await proc.stdin.aclose()
    with trio.move_on_after(1.0):
        await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
    if proc.stdin is not None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await proc.stdin.aclose()


@contextlib.asynccontextmanager
async def started(cfg: Config) -> AsyncIterator[Pool | None]:
    """The worker processes ``cfg`` asks for (None: ``http.workers`` = 1),
    started before the daemon's own start-up so that their import overlaps
    it; each accepts only once the daemon answers its hello on the lane
    (``serve``), and connections meanwhile wait in the listening socket's
    backlog. Leaving the block stops any still running (their stdin ends)
    and removes the sockets and the private directory."""
    if cfg.http.worker_count() <= 1:
        yield None
        return
    runtime = Path(tempfile.mkdtemp(prefix="knhkd-front-"))
    # A socket systemd passed (api/activation.py) is what the workers share;
    # else http.bind, bound here.
    passed = activation.take("http")
    lane = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock: socket.socket | None = None
    try:
        if passed:
            sock = passed[0]
            log.info("serving the %d HTTP socket(s) systemd passed", len(passed))
            if len(passed) > 1:
                log.warning("workers serve the first of the %d HTTP sockets passed", len(passed))
            sock.set_inheritable(True)
        else:
            sock = _listening_socket(cfg.http.bind, BACKLOG)
        await lane.bind(str(runtime / "lane.sock"))
        lane.listen(256)
        pool = Pool(cfg, sock, lane, runtime)
        async with trio.open_nursery() as nursery:
            # Started before the block runs: the daemon's start-up that
            # follows holds the event loop (store open, integrity check).
            for index in range(pool.count):
                nursery.start_soon(pool.keep, index, await pool.spawn(index))
            yield pool
            pool.stopping = True
            nursery.cancel_scope.cancel()
    finally:
        for s in passed:
            s.close()
        if sock is not None:
            sock.close()
        lane.close()
        shutil.rmtree(runtime, ignore_errors=True)
