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
  its answers; the requests of a batch go through ``Daemon.ingest_many``
  together (the write gate, the sector shapes gate, the group commit), each
  exactly as a request served by the daemon would, and the reply carries
  each one's ids only once its observations and their receipts are fsynced,
  else the problem the daemon would have answered. A batch is processed
  once: nothing is ever resent, so a worker that dies or loses the lane
  never duplicates an observation; a request whose reply did not reach its
  worker was never answered 201.
- ``http.sock``: the daemon's own app (every route), to which a worker
  forwards each request it does not serve itself.
- ``connections``: each worker's count of open connections, by which the
  workers take turns to accept (api/balance.py).

The processes, the listening socket and the lane's socket are api/pool.py's
(made before the daemon's own start-up, so that the workers start beside
it; their supervision, restarts and stop). ``serve`` answers a
worker's hello on the lane only once the daemon serves (its ``http.sock``
is up and every use case runs): the worker accepts from then on, and a
connection that comes sooner waits in the listening socket's backlog. On
shutdown each worker gets SIGTERM and drains its connections
(api/server.py) while the lane and the ingest intake still run; one still
alive after ``graceful_timeout_s`` + ``LINGER_S`` is killed.

Must never: resend a batch, answer a lane request before its commit, or let
a worker outlive the daemon.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec
import trio
from hypercorn.config import Config as HypercornConfig

from knhkd.api import server
from knhkd.api.lane import FrameReader, frame
from knhkd.api.pool import Pool
from knhkd.api.problems import problem_for
from knhkd.config import parse_bind
from knhkd.errors import KnhkdError
from knhkd.model import FigureSamples, LaneBatch, LaneReply, LaneResult
from knhkd.monitor.decode import Decoded

if TYPE_CHECKING:  # a worker process imports this module, never the loop
    from knhkd.loop.daemon import Daemon

log = logging.getLogger("knhkd.workers")

# How long start-up waits for every worker to say hello before it goes on.
START_TIMEOUT_S = 60.0

_batches = msgspec.msgpack.Decoder(LaneBatch)


def _result(outcome: list[str] | Exception) -> LaneResult:
    if not isinstance(outcome, Exception):
        return LaneResult(ids=outcome)
    # Answered as the daemon's own route would.
    if not isinstance(outcome, KnhkdError) or type(outcome).problem == KnhkdError.problem:
        log.error(
            "internal error in a worker's POST /api/v1/observations",
            exc_info=(type(outcome), outcome, outcome.__traceback__),
        )
    problem, headers = problem_for(outcome)
    return LaneResult(problem=problem, headers=headers)


async def serve_lane(
    daemon: Daemon, on_hello: Callable[[], None], stream: trio.SocketStream
) -> None:
    """One worker's lane: batches in, each processed once, its reply sent when
    all of it is committed (batches in flight together answer in any order)."""
    reader = FrameReader(stream)
    sending = trio.Lock()

    async def answer(batch: LaneBatch) -> None:
        # Queued together, so that they share the ingest actor's group commit
        # (with each other and with the other workers' requests).
        outcomes = await daemon.ingest_many([Decoded(r.items, r.single) for r in batch.requests])
        results = [_result(outcome) for outcome in outcomes]
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


async def serve(
    daemon: Daemon,
    app: Any,
    hc: HypercornConfig,
    pool: Pool,
    *,
    linger_s: float,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``http.bind`` through ``pool``'s worker processes until the daemon
    asks to shut down; returns once they are gone and forwarded requests done."""
    cfg = daemon.cfg.http
    pool.attach(daemon)
    inner = HypercornConfig()
    for key in ("graceful_timeout", "keep_alive_timeout", "h11_max_incomplete_size", "errorlog"):
        setattr(inner, key, getattr(hc, key))
    inner.accesslog = None
    inner.bind = [f"unix:{pool.runtime / 'http.sock'}"]
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
            # Only now is a worker's hello answered: it starts accepting then.
            front.start_soon(
                trio.serve_listeners,
                partial(serve_lane, daemon, pool.hello),
                [trio.SocketListener(pool.lane)],
            )
            with trio.move_on_after(START_TIMEOUT_S):
                await pool.all_ready.wait()
            host, _ = parse_bind(cfg.bind)
            shown = f"[{host}]" if ":" in host else host
            daemon.http_bound = [f"http://{shown}:{pool.sock.getsockname()[1]}"]
            log.info("HTTP served by %d worker processes", pool.count)
            task_status.started()
            await daemon.shutdown_requested.wait()
            # The workers drain while the lane and the ingest intake run.
            await pool.stop(cfg.graceful_timeout_s + linger_s)
            front.cancel_scope.cancel()
        stop_inner.set()  # the daemon's own server drains, then returns
