"""The nursery tree: run the daemon from start-up to exit status.

Nesting of nurseries is the shutdown order: front (HTTP, admin, signals,
watchdog, ring drain) inside ingest inside the loop actors inside the
receipt writer. An actor past its restart budget raises ``ActorFailed`` out
of all of them: exit status 1. SIGTERM/SIGINT drain (``/ready`` 503, Hypercorn
finishes in-flight requests, the ingest intake commits what it holds, a last
checkpoint) within ``shutdown.timeout_s``; SIGHUP reloads the configuration.

Must never: exit 0 after losing an acknowledged write, or let a front task
outlive the ingest intake it feeds.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence

import trio

from knhkd import __version__
from knhkd.loop.analyzer import Analyzer
from knhkd.loop.cycle import AnalyzerMessage, Cycle, CycleScheduler
from knhkd.loop.daemon import Daemon
from knhkd.loop.executor import Executor
from knhkd.loop.ingest import Ingest
from knhkd.loop.planner import Planner
from knhkd.loop.ring_drain import RingDrain
from knhkd.loop.sdnotify import notify, watchdog_interval_s
from knhkd.telemetry.tracing import setup_tracing, shutdown_tracing
from knhkd.validate.pipeline import default_pipeline

log = logging.getLogger("knhkd")

SWITCH_INTERVAL_S = 0.0005


async def _watch_signals(daemon: Daemon) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                notify("RELOADING=1")
                await daemon.reload()
                notify("READY=1")
                continue
            log.info("received %s: shutting down", signal.Signals(signum).name)
            daemon.draining = True
            daemon.ready = False
            notify("STOPPING=1")
            daemon.shutdown_requested.set()
            return


async def _watchdog(daemon: Daemon, interval: float) -> None:
    while True:
        if daemon.health().status == "healthy":
            notify("WATCHDOG=1")
        await trio.sleep(interval)


Server = Callable[..., Awaitable[None]]


async def run_daemon(daemon: Daemon, servers: Sequence[Server]) -> int:
    """Run until shutdown; ``servers`` (admin socket, HTTP) are started in order
    with ``nursery.start`` once the actors run. Returns the exit status."""
    # The writer thread hands the GIL back and forth with the event loop on
    # every LMDB call; with CPython's 5 ms switch interval a busy loop makes
    # each hand-off wait, and a commit's latency is mostly that waiting
    # (measured: 12.7 ms -> 9.5 ms per commit, ingest/no-op 0.66 -> 0.81).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    cfg = daemon.cfg
    daemon.open()
    # integrity hook: findings freeze the store; no actor that writes on its own runs.
    writes = not daemon.check_integrity()
    setup_tracing(cfg.telemetry)
    sup = daemon.supervisor
    to_analyzer_send, to_analyzer_recv = trio.open_memory_channel[AnalyzerMessage](
        cfg.loop.channel_capacity
    )
    to_planner_send, to_planner_recv = trio.open_memory_channel[Cycle](cfg.loop.channel_capacity)
    to_exec_send, to_exec_recv = trio.open_memory_channel[Cycle](cfg.loop.channel_capacity)
    deadline_scope = trio.CancelScope()
    clean = True
    try:
        with deadline_scope:
            async with trio.open_nursery() as writer_n:
                writer_n.start_soon(sup.supervise, "receipt_writer", daemon.writer.run)
                await daemon.register_keys()
                await daemon.load_knowledge()
                await daemon.load_governance()
                daemon.scheduler = CycleScheduler(
                    to_analyzer_send, lambda: daemon.cfg.loop.interval_s
                )
                daemon.executor = Executor(
                    daemon.ctx,
                    daemon.set_knowledge,
                    default_pipeline(),
                    to_exec_recv,
                    inputs=daemon.validation_inputs,
                    before_cycle=daemon.advance_relaxations,
                )
                analyzer = Analyzer(daemon.ctx, to_analyzer_recv, to_planner_send)
                planner = Planner(daemon.ctx, to_planner_recv, to_exec_send)
                daemon.ingest_actor = Ingest(
                    daemon.store,
                    daemon.writer,
                    daemon.receipts,
                    daemon.metrics,
                    to_analyzer_send,
                    capacity=cfg.loop.channel_capacity * 16,
                    shapes_digest=daemon.observation_shapes_digest,
                    evidence_sample=lambda: daemon.cfg.analyze.evidence_sample,
                )
                async with trio.open_nursery() as loop_n:
                    if writes:  # integrity hook
                        loop_n.start_soon(sup.supervise, "analyzer", analyzer.run)
                        loop_n.start_soon(sup.supervise, "planner", planner.run)
                        loop_n.start_soon(sup.supervise, "executor", daemon.executor.run)
                        loop_n.start_soon(sup.supervise, "scheduler", daemon.scheduler.run)
                        loop_n.start_soon(sup.supervise, "checkpointer", daemon.checkpointer.run)
                    async with trio.open_nursery() as ingest_n:
                        ingest_n.start_soon(sup.supervise, "ingest", daemon.ingest_actor.run)
                        async with trio.open_nursery() as front_n:
                            front_n.start_soon(_watch_signals, daemon)
                            for server in servers:
                                await front_n.start(server, daemon)
                            interval = watchdog_interval_s()
                            if interval:
                                front_n.start_soon(_watchdog, daemon, interval)
                            if daemon.ring is not None and writes:  # integrity hook
                                # A producer like any other: stops with the front,
                                # before the ingest intake closes. A batch cut off
                                # mid-commit is found by its stored cursor at start.
                                daemon.ring_drain = RingDrain(
                                    lambda: daemon.cfg,
                                    daemon.ring,
                                    daemon.store,
                                    daemon.ingest_actor,
                                    daemon.metrics,
                                    # The same SHACL gate as HTTP ingest.
                                    shacl_gate=lambda: daemon.shacl_gate,
                                )
                                front_n.start_soon(
                                    sup.supervise, "ring_drain", daemon.ring_drain.run
                                )
                            # Start-up garbage is long-lived: keep it out of every
                            # later full collection (PLATFORM_NOTES, CPython GC).
                            gc.collect()
                            gc.freeze()
                            daemon.figures.start()
                            daemon.ready = True
                            notify("READY=1")
                            log.info(
                                "knhkd %s ready: http %s, admin %s, data %s",
                                __version__,
                                ",".join(daemon.http_bound) or cfg.http.bind,
                                cfg.admin_socket,
                                cfg.data_dir,
                            )
                            await daemon.shutdown_requested.wait()
                            deadline_scope.deadline = trio.current_time() + cfg.shutdown.timeout_s
                            # serve_http returns once Hypercorn has drained;
                            # the admin socket and watchdog are cancelled then.
                            await daemon.http_done.wait()
                            front_n.cancel_scope.cancel()
                        daemon.ingest_actor.close()
                    loop_n.cancel_scope.cancel()
                # The last word of a clean stop: a checkpoint of everything committed.
                if writes:  # integrity hook
                    await daemon.checkpointer.issue()
                daemon.writer.close()
        if deadline_scope.cancelled_caught:
            clean = False
            log.warning("shutdown deadline of %.1fs reached", cfg.shutdown.timeout_s)
    finally:
        if daemon.ring is not None:
            daemon.ring.close()
        daemon.store.close()
        shutdown_tracing()
    log.info(
        "knhkd stopped%s: %d ingest commits, %d of them on the event loop's thread",
        "" if clean else " (deadline reached)",
        daemon.writer.commits,
        daemon.writer.inline_commits,
    )
    return 0
