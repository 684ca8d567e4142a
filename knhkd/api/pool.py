"""The HTTP worker processes (api/worker.py) of ``http.workers`` > 1: the
listening socket they share, the lane's socket, their private directory,
their start, supervision and stop. api/workers.py serves the daemon's side.

The workers start before the daemon's own start-up, and beside it:
``prefork`` (cli/knhkd.py, before ``trio.run``, once the HTTP edge is
imported and while no thread runs) binds ``http.bind`` (or takes the socket
systemd passed, api/activation.py), binds the lane's socket in a private
directory (``mkdtemp``, 0700, named with the daemon's pid: a start removes
those of daemons that are gone) and the workers' ``connections`` slots there
(api/balance.py), and forks the workers, which share the
daemon's imports rather than repeating them (~0.4 s of CPU each, on the
daemon's cores); ``started`` adopts them, or, without ``prefork``, does the
same with ``python -m knhkd.api.worker`` processes. A worker connects to the
lane at once and says hello, and accepts on the listening socket only once
the daemon answers (api/workers.py ``serve``); until then connections wait
in the socket's backlog. Light to import (no Quart, no Hypercorn, no loop).

Supervision: a worker that exits is started again after a backoff (doubling
from ``RESTART_INITIAL_S`` to ``supervisor.backoff_max_s``, back to the start
once a worker has lived ``RESTART_RESET_S``), counted in
``knhk_actor_restarts_total{actor="http_worker"}`` (restarts before the
daemon exists are counted once it does). ``stop`` sends each SIGTERM, waits
for them to drain, then kills what is left. A worker dies with the daemon:
the daemon holds the other end of its stdin pipe, which the kernel closes
however the daemon dies (api/worker.py); leaving ``started`` (start-up
failed) closes it too.

Must never: let a worker outlive the daemon (a forked worker holds no
other worker's stdin pipe), let a forked child return into the daemon's
code, or leave the private directory or a socket behind when ``started`` is
left.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import msgspec
import trio

from knhkd.api import activation, balance
from knhkd.auth.ratelimit import FILE as BUCKETS_FILE
from knhkd.auth.ratelimit import SharedBuckets
from knhkd.config import Config, parse_bind

if TYPE_CHECKING:  # the command line imports this module before the loop
    from knhkd.loop.daemon import Daemon

log = logging.getLogger("knhkd.workers")

RESTART_INITIAL_S = 0.1
RESTART_RESET_S = 10.0
# Hypercorn's default listen backlog (hypercorn.config.Config.backlog).
BACKLOG = 100
LANE_BACKLOG = 256


def _listening_socket(bind: str, backlog: int) -> socket.socket:
    host, port = parse_bind(bind)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


class Forked:
    """A worker ``prefork`` forked, as the pool sees a process: its pid, exit
    status, the write end of its stdin pipe; waited for through a pidfd."""

    def __init__(self, pid: int, stdin_fd: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdin: trio.lowlevel.FdStream | None = trio.lowlevel.FdStream(stdin_fd)
        self._pidfd = os.pidfd_open(pid)

    async def wait(self) -> int:
        while self.returncode is None:
            await trio.lowlevel.wait_readable(self._pidfd)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                os.close(self._pidfd)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:  # else the pid may be another's
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


Process = trio.Process | Forked


@dataclass
class Prefork:
    """What ``prefork`` made, handed to ``started``."""

    sock: socket.socket
    passed: list[socket.socket]
    lane: socket.socket
    runtime: Path
    # (pid, write end of its stdin pipe) per worker, in index order.
    children: list[tuple[int, int]]

    def close(self) -> None:
        for s in self.passed:
            s.close()
        self.sock.close()
        self.lane.close()
        shutil.rmtree(self.runtime, ignore_errors=True)


Child = Callable[[Config, int, Path, int, int], NoReturn]


def prefork(cfg: Config, child: Child) -> Prefork | None:
    """Before the daemon's start-up, with the HTTP edge imported and no thread
    running: bind the sockets and fork the workers, each running ``child``
    (api/worker.py ``run_forked``: the edge's imports are shared, not
    repeated; restarts start a fresh ``python -m knhkd.api.worker``). None
    when there are no workers, no pidfd to wait for a forked one with, or a
    thread already runs (``started`` then starts them)."""
    count = cfg.http.worker_count()
    if count <= 1 or not hasattr(os, "pidfd_open") or threading.active_count() > 1:
        return None  # (a thread's locks would be held forever in a child)
    made = _bind(cfg)
    lane = made.lane
    sock = made.sock
    # Objects made so far are never collected in a child: its collections
    # then do not write to (and copy) the pages it shares with the daemon.
    gc.freeze()
    try:
        for index in range(count):
            read, write = os.pipe()  # close-on-exec: a restarted worker holds none
            pid = os.fork()
            if pid == 0:  # the worker: never returns
                with contextlib.suppress(BaseException):
                    os.close(write)
                    for _, other in made.children:
                        os.close(other)  # else it outlives the daemon with its sibling
                    lane.close()
                child(cfg, sock.fileno(), made.runtime, index, read)
            os.close(read)
            made.children.append((pid, write))
    except BaseException:
        for _, write in made.children:
            os.close(write)  # the end of its stdin: the worker exits
        made.close()
        raise
    finally:
        gc.unfreeze()
    return made


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
        self.shares = runtime / balance.FILE  # made by _bind
        self.daemon: Daemon | None = None
        self.unreported_restarts = 0
        self.live: dict[int, Process] = {}
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

    async def spawn(self, index: int) -> Process:
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

    async def keep(self, index: int, proc: Process) -> None:
        """Supervise worker ``index`` (``proc``, from ``spawn``) until stopped."""
        delay = RESTART_INITIAL_S
        while True:
            started = trio.current_time()
            try:
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


async def _reap(proc: Process) -> None:
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


def _http_socket(cfg: Config, passed: list[socket.socket]) -> socket.socket:
    """A socket systemd passed (api/activation.py) is what the workers share;
    else ``http.bind``, bound here."""
    if passed:
        log.info("serving the %d HTTP socket(s) systemd passed", len(passed))
        if len(passed) > 1:
            log.warning("workers serve the first of the %d HTTP sockets passed", len(passed))
        sock = passed[0]
    else:
        sock = _listening_socket(cfg.http.bind, BACKLOG)
    sock.set_inheritable(True)
    return sock


RUNTIME_PREFIX = "knhkd-front-"


def _sweep(parent: Path) -> None:
    """Remove the private directories of daemons that are gone (``kill -9``
    leaves its own behind): ours, named with a pid no process has."""
    for entry in parent.glob(f"{RUNTIME_PREFIX}*-*"):
        pid = entry.name.removeprefix(RUNTIME_PREFIX).partition("-")[0]
        try:
            if not pid.isdigit() or entry.lstat().st_uid != os.getuid() or not entry.is_dir():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue  # alive (not ours to signal), or vanished meanwhile


def _bind(cfg: Config) -> Prefork:
    """The sockets and the private directory, no worker yet."""
    _sweep(Path(tempfile.gettempdir()))
    runtime = Path(tempfile.mkdtemp(prefix=f"{RUNTIME_PREFIX}{os.getpid()}-"))
    passed = activation.take("http")
    lane = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock = _http_socket(cfg, passed)
        lane.bind(str(runtime / "lane.sock"))
        lane.listen(LANE_BACKLOG)
        balance.create(runtime, cfg.http.worker_count())  # before any worker opens it
        # One rate limit for the daemon and its workers (auth/ratelimit.py).
        SharedBuckets.create(runtime / BUCKETS_FILE, cfg.auth.rate_limit.max_principals)
    except BaseException:
        for s in (*passed, lane):
            s.close()
        shutil.rmtree(runtime, ignore_errors=True)
        raise
    return Prefork(sock, passed, lane, runtime, [])


@contextlib.asynccontextmanager
async def started(cfg: Config, made: Prefork | None = None) -> AsyncIterator[Pool | None]:
    """The worker processes ``cfg`` asks for (None: ``http.workers`` = 1):
    those ``prefork`` made, else started here, before the daemon's own
    start-up so that they start beside it; each accepts only once the daemon
    answers its hello on the lane (api/workers.py ``serve``), and connections
    meanwhile wait in the listening socket's backlog. Leaving the block stops
    any still running (their stdin ends) and removes the sockets and the
    private directory."""
    if cfg.http.worker_count() <= 1:
        yield None
        return
    made = _bind(cfg) if made is None else made
    adopted: list[Forked] = []
    try:
        for pid, write in made.children:
            adopted.append(Forked(pid, write))
        pool = Pool(cfg, made.sock, trio.socket.from_stdlib_socket(made.lane), made.runtime)
        async with trio.open_nursery() as nursery:
            # Started before the block runs: the daemon's start-up that
            # follows holds the event loop (store open, integrity check).
            for index in range(pool.count):
                if index < len(adopted):
                    proc: Process = adopted[index]
                    pool.live[index] = proc
                else:
                    proc = await pool.spawn(index)
                nursery.start_soon(pool.keep, index, proc)
            yield pool
            pool.stopping = True
            nursery.cancel_scope.cancel()
    finally:
        for _, write in made.children[len(adopted) :]:
            os.close(write)  # not adopted: the end of its stdin, it exits
        made.close()
