"""One front-end worker process (``python -m knhkd.api.worker``, started and
supervised by api/workers.py; not a command of its own).

It accepts HTTP on the listening socket the daemon hands it and runs the
daemon's own producers' path (api/edge.py: the same guards, the same
authentication and authorization, the same problem documents as the app)
in front of a ``WorkerFront`` in place of the daemon:

- ``POST /api/v1/observations`` (and the bench's ``POST /api/v1/_noop``)
  are served here: decoded and bounded here (monitor/decode.py), then handed
  to the daemon over the lane (``LaneClient``: up to ``LANE_IN_FLIGHT``
  batches in flight, the requests that arrive meanwhile go in the next), answered 201 only with the
  ids the daemon sends once it has committed them (fsynced, with their
  receipts), or with the problem it answered.
- Every other request is forwarded whole, as it came, to the daemon's app on
  its private Unix socket, and its answer streamed back (``Forwarder``).
- Audit records of its authentication decisions and counts of its answers
  go to the daemon with the next batch (the daemon's /metrics and audit
  trail include them).

Must never: answer 201 without the daemon's ids, resend a batch (a lost lane
fails the requests waiting on it with 503, and the worker exits), or outlive
the daemon: the daemon holds the other end of the worker's stdin, which the
kernel closes however the daemon dies; at its EOF the worker exits at once.
(Not ``PR_SET_PDEATHSIG``: it fires when the *thread* that forked the child
ends, and trio forks from its cache of threads, which end when idle: measured,
a worker killed 10 s after start.)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import traceback
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

import h11
import msgspec
import trio

from knhkd.api import authn, balance, server
from knhkd.api.edge import Edge
from knhkd.api.http import LINGER_S, hypercorn_config
from knhkd.api.lane import FrameReader, frame
from knhkd.api.problems import PROBLEM_JSON, Draining, for_status
from knhkd.auth.ratelimit import FILE as BUCKETS_FILE
from knhkd.auth.ratelimit import SharedBuckets
from knhkd.config import Config
from knhkd.errors import KnhkdError, Unavailable
from knhkd.model import (
    AuditRecord,
    LaneBatch,
    LaneIngest,
    LaneReply,
    LaneResult,
    Problem,
    encode_json,
)
from knhkd.monitor.decode import Decoded
from knhkd.telemetry import logs
from knhkd.telemetry.tracing import setup_tracing

log = logging.getLogger("knhkd.worker")

# Hop-by-hop headers (RFC 9110 §7.6.1): the forwarded request is its own message.
HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade"})

# Of the daemon's answer, not the client's: its framing and hop-by-hop
# headers, and the Date and Server headers its Hypercorn added (the worker's
# adds its own; RFC 9110 §6.6.1: one Date per message). Its "Connection:
# close" is the client's too (413, refusals).
HOP_OUT = (HOP - {b"connection"}) | {b"date", b"server"}
# Request timings one lane batch carries at most (the rest are dropped).
MAX_SAMPLES_PER_BATCH = 4096
# Lane batches a worker has sent and not had answered, at most: enough to keep
# the daemon's group commit fed while a reply travels back.
LANE_IN_FLIGHT = 4
PR_SET_NAME = 15  # prctl(2)

_replies = msgspec.msgpack.Decoder(LaneReply)


class LaneLost(Unavailable):
    """The lane to the daemon broke with this request in flight."""

    problem = "unavailable"
    title = "Unavailable"
    retry_after = 1


class _Relayed(KnhkdError):
    """The problem the daemon answered a lane request with, answered as is."""

    problem = "relayed"

    def __init__(self, p: Problem, headers: dict[str, str]) -> None:
        super().__init__(p.detail, title=p.title)
        self._type = p.type
        self.errors = p.errors
        self.retry_after = int(headers["Retry-After"]) if "Retry-After" in headers else None
        self.www_authenticate = headers.get("WWW-Authenticate")

    @property
    def problem_type(self) -> str:
        return self._type


@cache
def _relayed(status: int) -> type[_Relayed]:
    return type(f"Relayed{status}", (_Relayed,), {"status": status})


class _Slot:
    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: LaneResult | None = None


class LaneClient:
    """The worker's end of the lane: one batch in flight, replies in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending: list[tuple[LaneIngest, _Slot]] = []
        self.audits: list[AuditRecord] = []
        self.answered = [0, 0, 0]
        self.refused: dict[str, int] = {}
        self.request_seconds: dict[str, list[float]] = {}
        self._samples = 0
        self.wake = trio.Event()
        self.lost = False
        # Set when the daemon answers the hello: it serves from then on.
        self.welcomed = trio.Event()

    def _poke(self) -> None:
        self.wake.set()

    def audit(self, record: AuditRecord) -> None:
        self.audits.append(record)
        self._poke()

    def count(self, status: int) -> None:
        self.answered[0 if status < 400 else 1 if status < 500 else 2] += 1
        self._poke()

    def count_refused(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        self._poke()

    def time_request(self, route: str, seconds: float) -> None:
        # Bounded while the lane is down or slow: the figures are windows of
        # recent samples, so the newest batch's worth is all that matters.
        if self._samples < MAX_SAMPLES_PER_BATCH:
            self.request_seconds.setdefault(route, []).append(seconds)
            self._samples += 1

    async def ingest(self, decoded: Decoded, timeout: float) -> list[str]:
        if self.lost:
            raise LaneLost("the daemon is not reachable; retry")
        slot = _Slot()
        self.pending.append((LaneIngest(decoded.items, decoded.single), slot))
        self._poke()
        with trio.move_on_after(timeout):
            await slot.done.wait()
        got = slot.result
        if got is None:
            raise LaneLost("the daemon did not answer in time; the observations may be stored")
        if got.ids is not None:
            return got.ids
        assert got.problem is not None
        raise _relayed(got.problem.status)(got.problem, got.headers)

    async def run(self) -> None:
        next_id = 0  # 0: the hello, sent at once
        in_flight: dict[int, list[_Slot]] = {}
        room = trio.Semaphore(LANE_IN_FLIGHT)

        async def replies(reader: FrameReader) -> None:
            while True:
                reply = await reader.read(_replies)
                if reply.id == 0:
                    self.welcomed.set()
                for slot, result in zip(in_flight.pop(reply.id), reply.results, strict=True):
                    slot.result = result
                    slot.done.set()
                room.release()

        try:
            stream = await trio.open_unix_socket(str(self.path))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(replies, FrameReader(stream))
                while True:
                    if next_id:
                        await self.wake.wait()
                    # At most LANE_IN_FLIGHT batches out: what arrives
                    # meanwhile goes in one batch, not one message each.
                    await room.acquire()
                    self.wake = trio.Event()
                    batch, self.pending = self.pending, []
                    audits, self.audits = self.audits, []
                    answered, self.answered = self.answered, [0, 0, 0]
                    refused, self.refused = self.refused, {}
                    timed, self.request_seconds, self._samples = self.request_seconds, {}, 0
                    in_flight[next_id] = [slot for _, slot in batch]
                    message = LaneBatch(
                        next_id,
                        [r for r, _ in batch],
                        audits,
                        (answered[0], answered[1], answered[2]),
                        refused,
                        timed,
                    )
                    next_id += 1
                    await stream.send_all(frame(message))
        except BaseException:
            # Lost (or stopping): whoever waits is answered 503, never 201.
            self.lost = True
            for slots in in_flight.values():
                for slot in slots:
                    slot.done.set()
            for _, slot in self.pending:
                slot.done.set()
            raise


class WorkerFront:
    """The worker's ``Front`` (api/context.py): the daemon's configuration, the
    draining flag, and the lane. No store, no actors: a route that needs more
    is forwarded to the daemon rather than served here (``Forwarder``)."""

    def __init__(self, cfg: Config, lane: LaneClient) -> None:
        self._cfg = cfg
        self._lane = lane
        self.draining = False

    @property
    def cfg(self) -> Config:
        return self._cfg

    async def audit(self, record: AuditRecord) -> None:
        self._lane.audit(record)

    def check_accepting(self) -> None:
        if self.draining:
            raise Draining("knhkd is shutting down")

    async def ingest(self, decoded: Decoded) -> list[str]:
        http = self._cfg.http
        return await self._lane.ingest(
            decoded, http.enqueue_timeout_s + http.commit_timeout_s + 5.0
        )

    def count_response(self, status: int, route: str = "", seconds: float | None = None) -> None:
        # Route and latency feed the daemon's figures (loop/figures.py), sent
        # with the next lane batch.
        if seconds is not None:
            self._lane.time_request(route or "-", seconds)
        self._lane.count(status)

    def count_refused(self, reason: str, n: int = 1) -> None:
        for _ in range(n):
            self._lane.count_refused(reason)


class Forwarder:
    """ASGI: every request to the daemon's app on its private socket (the
    worker's own routes are api/edge.py's, in front of this)."""

    def __init__(self, inner: Path, cfg: Config) -> None:
        self.inner = str(inner)
        self.max_body = cfg.http.max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await self._forward(scope, receive, send)
        elif scope["type"] == "lifespan":
            # Nothing to start or stop: the daemon's app has its own lifespan.
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        else:  # no websocket routes: refuse the handshake
            await send({"type": "websocket.close", "code": 1008})

    async def _forward(self, scope: Any, receive: Any, send: Any) -> None:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body:
                await _answer(send, for_status(413, "the request body is too large"), close=True)
                return
            if not message.get("more_body", False):
                break
        target = scope["raw_path"] + (
            b"?" + scope["query_string"] if scope["query_string"] else b""
        )
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP]
        headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        if body or scope["method"] in ("POST", "PUT", "PATCH"):
            headers.append((b"content-length", str(len(body)).encode()))
        if not any(k.lower() == b"host" for k, _ in headers):
            headers.append((b"host", b""))
        conn = h11.Connection(h11.CLIENT)
        stream = await trio.open_unix_socket(self.inner)
        try:
            out = conn.send(h11.Request(method=scope["method"], target=target, headers=headers))
            if body:
                out = (out or b"") + (conn.send(h11.Data(data=bytes(body))) or b"")
            await stream.send_all((out or b"") + (conn.send(h11.EndOfMessage()) or b""))
            started = False
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                if isinstance(event, h11.Response):
                    kept = [(k, v) for k, v in event.headers if k.lower() not in HOP_OUT]
                    await send(
                        {"type": "http.response.start", "status": event.status_code,
                         "headers": kept}
                    )  # fmt: skip
                    started = True
                elif isinstance(event, h11.Data):
                    await send({"type": "http.response.body", "body": bytes(event.data),
                                "more_body": True})  # fmt: skip
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    if started:
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
        finally:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.aclose()


async def _answer(send: Any, problem: Problem, *, close: bool = False) -> None:
    body = encode_json(problem)
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _watch_parent(stdin: trio.lowlevel.FdStream) -> None:
    while await stdin.receive_some(4096):
        pass
    log.warning("the daemon is gone: HTTP worker %d exits", os.getpid())
    os._exit(1)


async def run_worker(
    cfg: Config, fd: int, runtime: Path, stdin: trio.lowlevel.FdStream, index: int = 0
) -> int:
    lane = LaneClient(runtime / "lane.sock")
    shares = balance.Shares(runtime / balance.FILE, index)
    front = WorkerFront(cfg, lane)
    # The daemon's rate-limit buckets: a principal's limit holds across workers.
    shared = SharedBuckets(runtime / BUCKETS_FILE)
    app = Edge(front, Forwarder(runtime / "http.sock", cfg), {authn.BUCKETS_KEY: shared})
    hc = hypercorn_config(front)
    hc.bind = [f"fd://{fd}"]
    stop = trio.Event()
    go = trio.Event()  # welcomed by the daemon, or told to stop first

    async def signals() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
            async for _ in received:
                front.draining = True
                stop.set()
                go.set()
                return

    served = trio.Event()

    async def serve(task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await server.serve(
                app,
                hc,
                max_connections=cfg.http.max_connections,
                max_body_bytes=cfg.http.max_body_bytes,
                max_inflight_body_bytes=lambda: cfg.http.max_inflight_body_bytes,
                linger_s=LINGER_S,
                on_refused=front.count_response,
                shutdown_trigger=stop.wait,
                balance=shares,
                task_status=task_status,
            )
        finally:
            served.set()

    async def welcome() -> None:
        await lane.welcomed.wait()
        go.set()

    lost: list[BaseException] = []

    async def keep_lane() -> None:
        # Without its lane a worker can answer nothing but 503: it exits (one
        # line, not a traceback) and the daemon, if it is still there,
        # starts another; LaneClient.run has answered whoever waited.
        try:
            await lane.run()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
            lost.extend(group.exceptions)
        if not lost:
            return
        log.warning(
            "HTTP worker %d (pid %d): the lane to the daemon is gone (%s): exiting",
            index, os.getpid(), "; ".join(str(e) or type(e).__name__ for e in lost),
        )  # fmt: skip
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_parent, stdin)
        nursery.start_soon(signals)
        nursery.start_soon(keep_lane)
        nursery.start_soon(welcome)
        # Accept only once the daemon answers the hello (it is serving: the
        # worker may start while the daemon itself starts up, api/workers.py);
        # connections meanwhile wait in the listening socket's backlog.
        await go.wait()
        if not stop.is_set():
            await nursery.start(serve)
            await served.wait()
        # server.serve returns once drained; then the last counts and audits go.
        with trio.move_on_after(cfg.http.graceful_timeout_s + LINGER_S + 1.0):
            while not lane.lost and (lane.pending or lane.audits or any(lane.answered)):
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    return 1 if lost else 0


def _serve(cfg: Config, fd: int, runtime: Path, index: int, stdin_fd: int) -> int:
    # The daemon's log format and journald priorities (the same stderr),
    # and its tracing: requests a worker serves are traced where they run.
    logs.configure(cfg.telemetry, tag=f"worker {index}")
    setup_tracing(cfg.telemetry)
    stdin = trio.lowlevel.FdStream(stdin_fd)
    return trio.run(run_worker, cfg, fd, runtime, stdin, index)


def _name(name: str) -> None:
    """The process's name (``ps -e``, ``top``, /proc/PID/comm; 15 bytes at
    most): a forked worker's command line is the daemon's."""
    libc = ctypes.util.find_library("c")
    prctl = getattr(ctypes.CDLL(libc), "prctl", None) if libc else None
    if prctl is not None:
        prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def run_forked(cfg: Config, fd: int, runtime: Path, index: int, stdin_fd: int) -> NoReturn:
    """A worker forked by ``knhkd run`` before its start-up (api/pool.py
    ``prefork``): ``main`` without the interpreter's start and imports, which
    it shares with the daemon. Never returns into the daemon's code."""
    status = 1
    try:
        _name(f"knhkd-worker-{index}")
        status = _serve(cfg, fd, runtime, index, stdin_fd)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="knhkd.api.worker")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--runtime", type=Path, required=True)
    p.add_argument("--index", type=int, default=0)
    args = p.parse_args(argv)
    cfg = msgspec.json.decode(sys.stdin.buffer.readline(), type=Config)
    return _serve(cfg, args.fd, args.runtime, args.index, os.dup(sys.stdin.fileno()))


if __name__ == "__main__":
    sys.exit(main())
