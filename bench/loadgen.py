"""An HTTP/1.1 load generator for loopback benchmarks, on raw sockets.

Modes:
- ``closed``: N keep-alive connections, each sends its next request as soon as
  the previous response arrives, for a fixed duration. Measures throughput
  (req/s) and latency from the moment each request was written.
- ``open``: requests follow a fixed schedule at rate R (request i is due at
  t0 + i/R). Latency is measured from the *intended* send time, so a slow
  server delays the clock of every request behind it and that wait is counted
  (no coordinated omission). Requests are spread over a pool of connections;
  when none is free the request waits in a queue while its clock runs.
- ``serve-trivial``: a minimal HTTP server answering ``200 {}`` to anything, to
  measure the generator's own ceiling (proof that the client is not the
  bottleneck of a benchmark).

Guarantees:
- Every response's status is checked: 2xx count as ok, other statuses are
  counted per code; a broken connection counts as an error, never as a success.
- Runs are bounded: duration ≤ 600 s, ≤ 512 connections, ≤ 20 M requests, and the
  drain after the last request waits at most ``--drain`` seconds. Requests still
  unanswered then are reported, and (open loop) counted in the latency
  percentiles with the time they had waited so far, a lower bound.
- Only loopback addresses (127.0.0.0/8, ::1) are accepted as targets.
- ``https://`` targets are verified against ``--cafile`` (TLS through
  asyncio's SSL transport; the handshake is outside the measured window).
- ``--json`` prints exactly one JSON object on stdout.

The hot loop is an ``asyncio.Protocol`` per connection driven by callbacks: no
coroutine, no HTTP library and no allocation beyond the response buffer per
request. The event loop uses ``select()``: epoll's timeout has millisecond
granularity and would add up to 1 ms of scheduling lag to an open-loop run;
select's is microseconds. The collector is paused during a run (the generator
leaves no cyclic garbage worth collecting in a bounded run) so that the client's
own GC pauses do not show up as server latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import ipaddress
import json
import math
import selectors
import signal
import socket
import ssl
import sys
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

MAX_DURATION_S = 600.0
MAX_CONNECTIONS = 512  # select() handles fds < 1024
MAX_REQUESTS = 20_000_000
MAX_RATE = 200_000.0

now = time.monotonic  # the event loop's clock: timers and stamps agree


# --------------------------------------------------------------------------- #
# Target and request
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Target:
    host: str  # the loopback address connected to
    port: int
    path: str
    host_header: str
    tls: ssl.SSLContext | None = None
    server_name: str = ""


def parse_target(url: str, cafile: str = "") -> Target:
    """Split ``url`` and refuse anything that does not resolve to loopback only."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
        raise SystemExit(f"loadgen: expected http(s)://HOST:PORT/PATH, got {url!r}")
    tls = None
    if parts.scheme == "https":
        tls = ssl.create_default_context(cafile=cafile or None)
    infos = socket.getaddrinfo(parts.hostname, parts.port, type=socket.SOCK_STREAM)
    addrs = [str(info[4][0]) for info in infos]
    if not addrs or not all(ipaddress.ip_address(a).is_loopback for a in addrs):
        raise SystemExit(f"loadgen: refusing non-loopback target {parts.hostname} ({addrs})")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(addrs[0], parts.port, path, parts.netloc, tls, parts.hostname)


def build_request(
    target: Target, method: str, body: bytes, content_type: str, headers: tuple[str, ...] = ()
) -> bytes:
    head = [f"{method} {target.path} HTTP/1.1", f"Host: {target.host_header}", *headers]
    if body or method in ("POST", "PUT", "PATCH"):
        head += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


# --------------------------------------------------------------------------- #
# One connection
# --------------------------------------------------------------------------- #


class Conn(asyncio.Protocol):
    """A keep-alive HTTP/1.1 client connection with one request in flight."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need = -1  # body bytes still expected; -1: reading the head
        self.chunked = False
        self.status = 0
        self.stamp = 0.0  # the time latency is measured from
        self.busy = False
        self.reusable = True

    # ---- asyncio callbacks ------------------------------------------------ #

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self.busy:
            self.busy = False
            self.run.on_error(self)
        else:
            self.run.on_closed(self)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while buf:
            if self.need < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                del buf[: end + 4]
                self.status = int(head[9:12])
                i = head.find(b"\r\ncontent-length:")
                if i >= 0:
                    j = head.find(b"\r\n", i + 2)
                    self.need = int(head[i + 17 : j if j >= 0 else len(head)])
                    self.chunked = False
                elif b"\r\ntransfer-encoding: chunked" in head:
                    self.need, self.chunked = 0, True
                else:  # 204/304, or a body delimited by close: not keep-alive
                    self.need, self.chunked = 0, False
                    if self.status not in (204, 304):
                        self.reusable = False
                if b"\r\nconnection: close" in head:
                    self.reusable = False
            if self.chunked:
                if not self._consume_chunks():
                    return
            elif len(buf) < self.need:
                return
            else:
                del buf[: self.need]
            self.need = -1
            self.busy = False
            self.run.on_response(self, self.status)

    def _consume_chunks(self) -> bool:
        """Drop complete chunks from the buffer; True once the last chunk is in."""
        buf = self.buf
        while True:
            eol = buf.find(b"\r\n")
            if eol < 0:
                return False
            size = int(bytes(buf[:eol]).split(b";", 1)[0], 16)
            if size == 0:
                end = buf.find(b"\r\n\r\n", eol)  # optional trailers, then CRLF
                if end < 0:
                    return False
                del buf[: end + 4]
                self.chunked = False
                return True
            if len(buf) < eol + 2 + size + 2:
                return False
            del buf[: eol + 2 + size + 2]

    # ---- used by the run --------------------------------------------------- #

    def send(self, stamp: float) -> None:
        assert self.transport is not None
        self.stamp = stamp
        self.busy = True
        self.transport.write(self.run.request)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


# --------------------------------------------------------------------------- #
# Runs
# --------------------------------------------------------------------------- #


@dataclass
class Result:
    mode: str
    url: str
    connections: int
    duration_s: float
    warmup_s: float
    completed: int = 0
    ok: int = 0
    non_2xx: int = 0
    errors: int = 0
    unanswered: int = 0
    all_ok: int = 0
    status: Counter[int] = field(default_factory=Counter)
    latency_s: array[float] = field(default_factory=lambda: array("d"))
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latency_s)
        pct = {
            f"p{label}": _ms(_nearest_rank(lat, q))
            for label, q in (("50", 0.50), ("90", 0.90), ("95", 0.95), ("99", 0.99),
                             ("99.9", 0.999))
        }  # fmt: skip
        pct["max"] = _ms(lat[-1]) if lat else None
        pct["mean"] = _ms(sum(lat) / len(lat)) if lat else None
        return {
            "mode": self.mode,
            "url": self.url,
            "connections": self.connections,
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "completed": self.completed,
            "ok": self.ok,
            "non_2xx": self.non_2xx,
            "errors": self.errors,
            "unanswered": self.unanswered,
            "all_ok": self.all_ok,
            "status": {str(k): v for k, v in sorted(self.status.items())},
            "rps": round(self.completed / self.duration_s, 1),
            "ok_rps": round(self.ok / self.duration_s, 1),
            "latency_ms": pct,
            **self.extra,
        }


def _nearest_rank(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


class Run:
    """What closed and open loops share: the connection pool and the tallies."""

    def __init__(self, target: Target, request: bytes, connections: int, res: Result) -> None:
        self.target = target
        self.request = request
        self.n_conns = connections
        self.res = res
        self.loop = asyncio.get_running_loop()
        self.conns: set[Conn] = set()
        self.record_from = math.inf  # stamps before this are warm-up
        self.sent = 0
        self.inflight = 0
        self.reconnects = 0
        self.stopping = False  # set when the run is over: closed connections stay closed
        self.finished: asyncio.Future[None] = self.loop.create_future()

    async def connect_one(self) -> Conn:
        tls = self.target.tls
        _, proto = await self.loop.create_connection(
            lambda: Conn(self),
            self.target.host,
            self.target.port,
            ssl=tls,
            server_hostname=self.target.server_name if tls is not None else None,
        )
        assert isinstance(proto, Conn)
        self.conns.add(proto)
        return proto

    async def connect_all(self) -> None:
        await asyncio.gather(*(self.connect_one() for _ in range(self.n_conns)))

    def record(self, stamp: float, t: float, status: int) -> None:
        res = self.res
        if 200 <= status < 300:
            res.all_ok += 1  # warm-up included: what the server acknowledged in total
        if stamp < self.record_from:
            return
        res.completed += 1
        res.latency_s.append(t - stamp)
        res.status[status] += 1
        if 200 <= status < 300:
            res.ok += 1
        else:
            res.non_2xx += 1

    def send(self, conn: Conn, stamp: float) -> None:
        self.sent += 1
        self.inflight += 1
        conn.send(stamp)

    def replace(self, conn: Conn) -> None:
        """Swap a closed connection for a new one, which then rejoins the run."""
        self.conns.discard(conn)
        conn.close()
        if self.stopping:
            return
        self.reconnects += 1
        task = self.loop.create_task(self.connect_one())
        task.add_done_callback(self._rejoin)

    def _rejoin(self, task: asyncio.Task[Conn]) -> None:
        if task.cancelled() or task.exception() is not None:
            self.res.errors += 1  # the server stopped accepting: that slot is lost
            self.maybe_finish()
            return
        self.idle(task.result())

    def on_error(self, conn: Conn) -> None:
        self.inflight -= 1
        if conn.stamp >= self.record_from:
            self.res.errors += 1
        self.replace(conn)

    def on_closed(self, conn: Conn) -> None:
        if conn in self.conns:
            self.replace(conn)

    def on_response(self, conn: Conn, status: int) -> None:
        raise NotImplementedError

    def idle(self, conn: Conn) -> None:
        raise NotImplementedError

    def maybe_finish(self) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)


class ClosedLoop(Run):
    def __init__(self, *args: Any, duration: float, warmup: float) -> None:
        super().__init__(*args)
        self.duration = duration
        self.warmup = warmup
        self.deadline = math.inf

    async def go(self, drain: float) -> None:
        await self.connect_all()
        start = now()
        self.record_from = start + self.warmup
        self.deadline = self.record_from + self.duration
        for conn in list(self.conns):
            self.send(conn, now())
        try:
            await asyncio.wait_for(
                asyncio.shield(self.finished), self.warmup + self.duration + drain
            )
        except TimeoutError:
            self.res.unanswered = self.inflight

    def on_response(self, conn: Conn, status: int) -> None:
        t = now()
        self.inflight -= 1
        self.record(conn.stamp, t, status)
        if not conn.reusable:
            self.replace(conn)
        else:
            self.idle(conn)

    def idle(self, conn: Conn) -> None:
        if now() < self.deadline and self.sent < MAX_REQUESTS:
            self.send(conn, now())
        else:
            self.maybe_finish()

    def maybe_finish(self) -> None:
        if self.inflight == 0 and (now() >= self.deadline or self.sent >= MAX_REQUESTS):
            self.finish()


class OpenLoop(Run):
    def __init__(self, *args: Any, rate: float, duration: float, warmup: float) -> None:
        super().__init__(*args)
        self.interval = 1.0 / rate
        self.total = min(MAX_REQUESTS, math.ceil((warmup + duration) * rate))
        self.warmup = warmup
        self.free: deque[Conn] = deque()
        self.queue: deque[float] = deque()  # intended times waiting for a connection
        self.t0 = 0.0
        self.next = 0  # index of the next request to issue
        self.scheduled = 0  # set to total once every request has been issued
        self.queued = 0  # requests that found no free connection at their time
        self.max_queue = 0
        self.lag = array("d")  # actual write time minus intended time

    async def go(self, drain: float) -> None:
        await self.connect_all()
        self.free.extend(self.conns)
        self.t0 = now() + 0.005
        self.record_from = self.t0 + self.warmup
        # Timer callbacks, not a sleeping coroutine: one loop iteration per wake-up
        # instead of two, and no future or task per request.
        self.loop.call_at(self.t0, self.tick)
        try:
            limit = self.warmup + self.total * self.interval + drain
            await asyncio.wait_for(asyncio.shield(self.finished), limit)
        except TimeoutError:
            give_up = now()
            waiting = [c.stamp for c in self.conns if c.busy] + list(self.queue)
            waiting += [self.t0 + i * self.interval for i in range(self.next, self.total)]
            for stamp in waiting:
                if stamp >= self.record_from:
                    self.res.unanswered += 1
                    self.res.latency_s.append(give_up - stamp)

    def tick(self) -> None:
        """Issue every request that is due (catching up after a late wake-up)."""
        t = now()
        t0, interval, total = self.t0, self.interval, self.total
        i = self.next
        while i < total and t0 + i * interval <= t:
            self.dispatch(t0 + i * interval)
            i += 1
        self.next = i
        if i < total:
            self.loop.call_at(t0 + i * interval, self.tick)
        else:
            self.scheduled = i
            self.maybe_finish()

    def dispatch(self, intended: float) -> None:
        if self.free:
            self.write(self.free.popleft(), intended)
        else:
            self.queued += 1
            self.queue.append(intended)
            self.max_queue = max(self.max_queue, len(self.queue))

    def write(self, conn: Conn, intended: float) -> None:
        if intended >= self.record_from:
            self.lag.append(now() - intended)
        self.send(conn, intended)

    def on_response(self, conn: Conn, status: int) -> None:
        t = now()
        self.inflight -= 1
        self.record(conn.stamp, t, status)
        if not conn.reusable:
            self.replace(conn)
        else:
            self.idle(conn)

    def idle(self, conn: Conn) -> None:
        if self.queue:
            self.write(conn, self.queue.popleft())
        else:
            self.free.append(conn)
            self.maybe_finish()

    def maybe_finish(self) -> None:
        if self.scheduled and self.inflight == 0 and not self.queue:
            self.finish()

    def extra(self) -> dict[str, Any]:
        lag = sorted(self.lag)
        measured = self.total - math.ceil(self.warmup / self.interval)
        return {
            "target_rate": round(1.0 / self.interval, 3),
            "scheduled": measured,
            "queued_for_connection": self.queued,
            "max_queue": self.max_queue,
            "send_lag_ms": {
                "p50": _ms(_nearest_rank(lag, 0.5)),
                "p99": _ms(_nearest_rank(lag, 0.99)),
                "max": _ms(lag[-1]) if lag else None,
            },
        }


# --------------------------------------------------------------------------- #
# Entry points
# --------------------------------------------------------------------------- #


def _new_loop() -> asyncio.AbstractEventLoop:
    _tight_timer_slack()
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


def _tight_timer_slack() -> None:
    """Ask Linux to fire our timers on time (default slack: 50 µs), best effort."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK, 1 ns
    except (OSError, AttributeError):
        pass


def _run(coro_factory: Callable[[], Any]) -> Any:
    loop = _new_loop()
    try:
        return loop.run_until_complete(coro_factory())
    finally:
        loop.close()


def run_load(args: argparse.Namespace) -> dict[str, Any]:
    target = parse_target(args.url, args.cafile)
    body = args.body.encode() if args.body is not None else b""
    request = build_request(target, args.method, body, args.content_type, tuple(args.header))
    res = Result(args.mode, args.url, args.connections, args.duration, args.warmup)

    async def main() -> dict[str, Any]:
        run: ClosedLoop | OpenLoop
        if args.mode == "closed":
            run = ClosedLoop(target, request, args.connections, res,
                             duration=args.duration, warmup=args.warmup)  # fmt: skip
        else:
            run = OpenLoop(target, request, args.connections, res,
                           rate=args.rate, duration=args.duration, warmup=args.warmup)  # fmt: skip
        gc.collect()
        gc.disable()
        try:
            await run.go(args.drain)
        finally:
            gc.enable()
            run.stopping = True
            for conn in list(run.conns):
                conn.close()
        if isinstance(run, OpenLoop):
            res.extra.update(run.extra())
        res.extra["reconnects"] = run.reconnects
        return res.summary()

    out: dict[str, Any] = _run(main)
    return out


class _TrivialServer(asyncio.Protocol):
    """Answers ``200 {}`` to every request; handles keep-alive and pipelining."""

    RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out: list[bytes] = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(buf[:end]).lower()
            i = head.find(b"\r\ncontent-length:")
            length = 0
            if i >= 0:
                j = head.find(b"\r\n", i + 2)
                length = int(head[i + 17 : j if j >= 0 else len(head)])
            if len(buf) < end + 4 + length:
                break
            del buf[: end + 4 + length]
            out.append(self.RESPONSE)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


def serve_trivial(args: argparse.Namespace) -> None:
    if not ipaddress.ip_address(args.host).is_loopback:
        raise SystemExit("loadgen: serve-trivial binds loopback only")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_TrivialServer, args.host, args.port, backlog=1024)
        port = server.sockets[0].getsockname()[1]
        print(f"PORT {port}", flush=True)
        stop = loop.create_future()

        def on_signal() -> None:
            if not stop.done():
                stop.set_result(None)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        with contextlib.suppress(TimeoutError):  # bounded even if nobody stops it
            await asyncio.wait_for(stop, args.max_lifetime)
        server.close()

    _run(main)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loadgen", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    for mode, text in (("closed", "as fast as possible"), ("open", "at a fixed rate")):
        m = sub.add_parser(mode, help=f"{mode} loop: {text}")
        m.add_argument("--url", required=True, help="http://127.0.0.1:PORT/PATH")
        m.add_argument("--method", default="POST")
        m.add_argument("--cafile", default="", help="https: the CA to verify the server with")
        m.add_argument("--body", default=None, help="request body (text)")
        m.add_argument("--content-type", default="application/json")
        m.add_argument(
            "--header", action="append", default=[], help="'Name: value', sent on every request"
        )
        m.add_argument("--duration", type=float, default=10.0, help="measured seconds")
        m.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
        m.add_argument("--drain", type=float, default=5.0, help="max wait for the last replies")
        m.add_argument("--connections", type=int, default=16 if mode == "closed" else 64)
        if mode == "open":
            m.add_argument("--rate", type=float, required=True, help="requests per second")
        m.add_argument("--json", action="store_true", help="print one JSON object")
    s = sub.add_parser("serve-trivial", help="a minimal 200 {} server (client ceiling)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--max-lifetime", type=float, default=900.0, help="exit after this many s")
    return p


def _check_bounds(args: argparse.Namespace) -> None:
    if not 0 < args.duration <= MAX_DURATION_S or not 0 <= args.warmup <= 60:
        raise SystemExit(f"loadgen: duration must be in (0, {MAX_DURATION_S}], warmup ≤ 60")
    if not 1 <= args.connections <= MAX_CONNECTIONS:
        raise SystemExit(f"loadgen: connections must be in [1, {MAX_CONNECTIONS}]")
    if not 0 <= args.drain <= 60:
        raise SystemExit("loadgen: drain must be in [0, 60]")
    if args.mode == "open" and not 0 < args.rate <= MAX_RATE:
        raise SystemExit(f"loadgen: rate must be in (0, {MAX_RATE}]")


def format_line(s: dict[str, Any]) -> str:
    lat = s["latency_ms"]
    line = (
        f"{s['mode']:6} {s['rps']:>10,.1f} req/s  p50 {lat['p50']} ms  p95 {lat['p95']} ms  "
        f"p99 {lat['p99']} ms  max {lat['max']} ms  ok {s['ok']}  non-2xx {s['non_2xx']}  "
        f"errors {s['errors']}  unanswered {s['unanswered']}"
    )
    if s["mode"] == "open":
        lag = s["send_lag_ms"]
        line += (
            f"\n       target {s['target_rate']:,.0f}/s  queued {s['queued_for_connection']}"
            f"  send lag p50 {lag['p50']} ms p99 {lag['p99']} ms max {lag['max']} ms"
        )
    return line


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.mode == "serve-trivial":
        serve_trivial(args)
        return 0
    _check_bounds(args)
    summary = run_load(args)
    print(json.dumps(summary) if args.json else format_line(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
