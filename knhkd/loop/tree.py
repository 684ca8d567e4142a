"""The nursery tree: run the daemon from start-up to exit status.

Nesting of nurseries is the shutdown order: front (HTTP, admin, signals,
watchdog, ring drain) inside ingest and the auditor inside the loop actors inside the
receipt writer. An actor past its restart budget raises ``ActorFailed`` out
of all of them: exit status 1. SIGTERM/SIGINT drain (``/ready`` 503, Hypercorn
finishes in-flight requests, the ingest intake commits what it holds, a last
checkpoint) within ``shutdown.timeout_s``; SIGHUP reloads the configuration.

Must never: exit 0 after losing an acknowledged write, or let a front task
outlive the ingest intake it feeds.

Under systemd (``$NOTIFY_SOCKET``): ``READY=1`` once serving, ``RELOADING=1``
(with ``MONOTONIC_USEC``) then ``READY=1`` around a SIGHUP, ``STOPPING=1`` on
SIGTERM, each with a ``STATUS=`` line, and a new ``STATUS=`` whenever the
daemon's state changes: ``ready``, ``degraded`` with every reason (storage
full, read-only after a failed integrity check, an actor restarting), or
``draining``; ``WATCHDOG=1`` only while healthy.
"""

from __future__ import annotations

import gc
import logging
import random
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence

import msgspec
import trio

from knhkd import __version__
from knhkd.hotpath.ring import floor_ticks
from knhkd.loop.actors import build_actors
from knhkd.loop.daemon import Daemon
from knhkd.loop.figures import FLOOR_BLOCKS, Figures
from knhkd.loop.sdnotify import notify, notifying, reloading, watchdog_interval_s
from knhkd.loop.startup import Opened, open_data_dir, prepare
from knhkd.loop.state import LoopState, Settings
from knhkd.loop.supervisor import Supervisor
from knhkd.model import Health
from knhkd.telemetry import build
from knhkd.telemetry.metrics import Metrics
from knhkd.telemetry.tracing import setup_tracing, shutdown_tracing

log = logging.getLogger("knhkd")

SWITCH_INTERVAL_S = 0.0005
# How often the state is looked at for a new STATUS= line (and a keep-alive).
STATUS_INTERVAL_S = 1.0

# Why writes are refused, by write-gate key (loop/writer.py, loop/integrity.py).
_REFUSAL = {"storage": "storage full", "integrity": "read-only"}
DRAINING = "draining: finishing in-flight requests, then a last checkpoint"


def status_line(daemon: Daemon, health: Health) -> str:
    """What ``systemctl status`` shows: ready, degraded with why, or draining."""
    if daemon.draining:
        return DRAINING
    if health.status == "healthy":
        return f"ready: http {','.join(daemon.http_bound) or daemon.cfg.http.bind}"
    reasons = []
    if health.dependencies["storage"] != "healthy":
        reasons.append("the receipt writer is not running")
    for key, detail in daemon.writes_refused().items():
        reasons.append(f"{_REFUSAL.get(key, key)}: {detail}")
    for name, actor in health.actors.items():
        if actor.state in ("restarting", "failed"):
            reasons.append(f"actor {name} {actor.state} ({actor.restarts} restarts)")
    return "degraded: " + ("; ".join(reasons) or "see /health")


async def _watch_signals(daemon: Daemon) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                reloading("reloading the configuration")
                await daemon.reload()
                notify(f"READY=1\nSTATUS={status_line(daemon, daemon.health())}")
                continue
            log.info("received %s: shutting down", signal.Signals(signum).name)
            daemon.draining = True
            daemon.ready = False
            notify(f"STOPPING=1\nSTATUS={DRAINING}")
            daemon.shutdown_requested.set()
            return


async def _report(daemon: Daemon, watchdog: float | None, status: str) -> None:
    """Keep-alives while healthy, and a STATUS= line whenever it changes;
    ``status`` is the one sent with READY=1."""
    interval = min(STATUS_INTERVAL_S, watchdog or STATUS_INTERVAL_S)
    while True:
        await trio.sleep(interval)
        health = daemon.health()
        now = status_line(daemon, health)
        if now != status and not daemon.draining:
            # Draining was said with STOPPING=1, by the signal handler.
            status = now
            notify(f"STATUS={now}")
        if watchdog and health.status == "healthy":
            notify("WATCHDOG=1")


Server = Callable[..., Awaitable[None]]


def _restore_baseline(opened: Opened, figures: Figures, tolerance: float) -> None:
    """Q5's baseline as stored with the current snapshot (loop/figures.py).
    A figure, not state anything depends on: one a failing disk damaged is
    named in the log and not used, and the start goes on."""
    slot = opened.store.tables.tick_baseline
    with opened.store.reader() as txn:
        raw = slot.get_raw(txn)
        raw = None if raw is None else bytes(raw)
    try:
        stored = None if raw is None else slot.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning(
            "Q5 tick baseline: the stored one is unreadable (%s): not used; the first "
            "hot-path p99 measured will be the baseline (knhkctl fsck names the record)",
            exc,
        )
        return
    log.info("Q5 tick baseline: %s", figures.restore(stored, tolerance))


async def run_daemon(settings: Settings, servers: Sequence[Server]) -> int:
    """Start up, run until shutdown, stop; ``servers`` (admin socket, HTTP)
    are started in order with ``nursery.start(server, daemon)`` once the
    actors run. Returns the exit status; a failed start-up step raises
    ``StartupError``."""
    # The writer thread hands the GIL back and forth with the event loop on
    # every LMDB call; with CPython's 5 ms switch interval a busy loop makes
    # each hand-off wait, and a commit's latency is mostly that waiting
    # (measured: 12.7 ms -> 9.5 ms per commit, ingest/no-op 0.66 -> 0.81).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    cfg = settings()
    metrics = Metrics(version=__version__, commit=build.commit())
    figures = Figures()
    sup = Supervisor(cfg.supervisor, metrics, random.Random())
    opened = open_data_dir(cfg, metrics, settings)
    setup_tracing(cfg.telemetry, on_drop=metrics.trace_spans_dropped.inc)
    writer = opened.writer
    deadline_scope = trio.CancelScope()
    clean = True
    try:
        with deadline_scope:
            async with trio.open_nursery() as writer_n:
                writer_n.start_soon(sup.supervise, "receipt_writer", writer.run)
                prepared = await prepare(cfg, opened, metrics, settings)
                # This machine's hot-path floor, for Q4 (briefly, off the loop).
                figures.set_floor(await trio.to_thread.run_sync(floor_ticks, FLOOR_BLOCKS))
                _restore_baseline(opened, figures, cfg.validate.invariants.hot_path_floor_tolerance)
                state = LoopState(settings, opened, prepared, metrics, figures)
                actors = build_actors(state, opened)
                daemon = Daemon(state, opened, prepared, actors, supervisor=sup, metrics=metrics)
                async with trio.open_nursery() as loop_n:
                    # Read-only (damage found at start): no actor that writes on
                    # its own runs; reads and proofs are still served.
                    if opened.writable:
                        loop_n.start_soon(sup.supervise, "analyzer", actors.analyzer.run)
                        loop_n.start_soon(sup.supervise, "planner", actors.planner.run)
                        loop_n.start_soon(sup.supervise, "executor", actors.executor.run)
                        loop_n.start_soon(sup.supervise, "scheduler", actors.scheduler.run)
                        loop_n.start_soon(
                            sup.supervise, "checkpointer", actors.checkpointer.run
                        )
                        loop_n.start_soon(sup.supervise, "backup", daemon.backups.run)
                        loop_n.start_soon(sup.supervise, "retention", daemon.retention.run)
                    async with trio.open_nursery() as ingest_n:
                        ingest_n.start_soon(sup.supervise, "ingest", actors.ingest.run)
                        # Even read-only: its records are then counted as dropped.
                        ingest_n.start_soon(sup.supervise, "auditor", actors.auditor.run)
                        async with trio.open_nursery() as front_n:
                            front_n.start_soon(_watch_signals, daemon)
                            for server in servers:
                                await front_n.start(server, daemon)
                            if actors.ring_drain is not None and opened.writable:
                                # A producer like any other: stops with the front,
                                # before the ingest intake closes. A batch cut off
                                # mid-commit is found by its stored cursor at start.
                                front_n.start_soon(
                                    sup.supervise, "ring_drain", actors.ring_drain.run
                                )
                            # Start-up garbage is long-lived: keep it out of every
                            # later full collection (PLATFORM_NOTES, CPython GC).
                            gc.collect()
                            gc.freeze()
                            figures.start()
                            daemon.ready = True
                            status = status_line(daemon, daemon.health())
                            notify(f"READY=1\nSTATUS={status}")
                            if notifying():
                                front_n.start_soon(_report, daemon, watchdog_interval_s(), status)
                            log.info(
                                "knhkd %s ready: http %s, admin %s, data %s",
                                __version__,
                                ",".join(daemon.http_bound) or cfg.http.bind,
                                cfg.admin_socket,
                                cfg.data_dir,
                            )
                            await daemon.shutdown_requested.wait()
                            deadline_scope.deadline = (
                                trio.current_time() + settings().shutdown.timeout_s
                            )
                            # serve_http returns once Hypercorn has drained;
                            # the admin socket and watchdog are cancelled then.
                            await daemon.http_done.wait()
                            front_n.cancel_scope.cancel()
                        actors.ingest.close()
                        # Commits what the front queued, then returns.
                        actors.auditor.close()
                    loop_n.cancel_scope.cancel()
                # The last word of a clean stop: a checkpoint of everything committed.
                if opened.writable:
                    await actors.checkpointer.issue_at_stop()
                writer.close()
        if deadline_scope.cancelled_caught:
            clean = False
            log.warning("shutdown deadline of %.1fs reached", settings().shutdown.timeout_s)
    finally:
        opened.close()
        shutdown_tracing()
    log.info(
        "knhkd stopped%s: %d ingest commits, %d of them on the event loop's thread",
        "" if clean else " (deadline reached)",
        writer.commits,
        writer.inline_commits,
    )
    return 0
