"""Hypercorn's trio worker, bounded and drained: the one place knhkd reaches
into Hypercorn's internals.

``serve`` does what ``hypercorn.trio.serve`` does (lifespan, plain-HTTP
listeners, one ``TCPServer`` per connection) with these differences:

- **At most ``max_connections`` connections served**, and as many more
  closing (lingering, below). A slot is taken before ``accept``: past the
  limit the daemon stops accepting and new connections wait in the kernel's
  listen backlog (``backlog``), costing the process nothing. Hypercorn has no
  such limit.
- **A budget of request-body bytes in flight** across all connections
  (``max_inflight_body_bytes``). Before the app sees a request, the bytes its
  body may make the framework buffer are reserved: its ``Content-Length``, or
  ``max_body_bytes`` for a chunked body (a declared length over
  ``max_body_bytes`` reserves nothing: Quart refuses it with 413 without
  buffering, and cuts a chunked body off at ``max_body_bytes``). A request
  that does not fit is answered 503 ``overloaded`` with ``Retry-After`` and
  ``Connection: close`` before any of its body is read; the reservation is
  returned when the request ends.
- **Draining.** When ``shutdown_trigger`` returns, every request that arrives
  is answered 503 ``draining`` (``Connection: close``) without reaching the
  app, responses of requests already in the app carry ``Connection: close``,
  idle keep-alive connections are closed at once, and listeners keep
  accepting (so late clients get that answer rather than a refused or reset
  connection) until the requests that were in the app have finished or
  ``graceful_timeout`` has passed.
- **Handing over.** When every bind is an inherited socket (``fd://N``:
  socket activation, the socket outlives the process), draining stops
  accepting at once instead: new connections wait in the kernel's backlog for
  the next instance, and a connection accepted but not yet served is kept
  until its request arrives (answered 503 ``draining``, never closed unheard).
- **Lingering close.** A connection the server closes after an answer
  (``Connection: close``), while the client has not closed its side, is
  closed by shutting down its write side and then reading, and dropping,
  what the client still sends (at most ``linger_s`` seconds and
  ``linger_bytes`` bytes, in a slot of its own) until its EOF: closing a TCP
  socket with unread data sends a reset, which can destroy a response the
  client has not read yet (an early 413 or 503 while it is still uploading;
  a refusal with the client's next request pipelined behind it).
- **Closes announced.** An answer started while the server drains, or while
  the client is still sending its request's body, says ``Connection:
  close`` (``_AnnouncedClose``): Hypercorn closes such a connection after
  the answer, and would say nothing.

- **Memory given back.** Once request bodies of at least
  ``TRIM_AFTER_BYTES`` have been released or ``TRIM_AFTER_CONNECTIONS``
  connections closed, ``malloc_trim(0)`` runs (glibc
  only, on a worker thread, at most once per ``TRIM_SETTLE_S``): glibc keeps
  the freed heap pages of a burst of uploads resident otherwise (measured:
  73 MiB at start, 200 MiB under 1,000 slow 1 MB uploads, 167 MiB a minute
  after they closed; 83 MiB after a trim). No wake-up while nothing is freed.

- **Shared sockets balanced** (``balance`` given): processes accepting on
  one socket each wait for their turn before ``accept`` and count the
  connections they hold (api/balance.py).

- **TLS done here** (``tls`` given): each accepted connection is wrapped in
  a ``trio.SSLStream`` of the context ``tls()`` returns *at accept time* (so
  a reloaded certificate serves new connections, never cuts old ones), and
  its handshake is run before Hypercorn sees it. A refused handshake calls
  ``on_handshake_failed(peer_host, reason)`` (Hypercorn logs nothing); a
  completed one puts the ASGI ``tls`` extension in every request's scope:
  ``client_cert_name`` (the verified client certificate's subject, RFC 4514,
  or None), ``client_cert_cn`` (knhkd's: its CN), ``tls_version``.

It also mends a Hypercorn 0.18 fault: the keep-alive timer of a connection
is restarted from the app's task, in that task's cancel scope, so it is
cancelled as soon as the request ends; a keep-alive connection then never
times out and is not closed on shutdown (one idle client held SIGTERM for the
whole graceful timeout). Here one watcher per connection, started by the
connection's own task, closes it after ``keep_alive_timeout`` idle, or at
once when draining.

Pinned: written against Hypercorn ``HYPERCORN_VERSION``; it subclasses
``hypercorn.trio.tcp_server.TCPServer`` (``run``, ``protocol_send``,
``_read_data``, ``_close``, ``_idle_timeout``, ``_initiate_server_close``) and
re-does ``hypercorn.trio.run.worker_serve``. ``tests/unit/test_http_server.py``
fails when the installed Hypercorn is another version or those change shape:
re-read them before moving the pin.

Must never: buffer a request body itself, let a connection outlive the
server's nursery, or let Hypercorn's own TLS in (``ValueError``: its
context would not be TLS 1.3-only nor reloadable; TLS comes through ``tls``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import ssl
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, Protocol, cast

import h11
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed as ConnectionClosed
from hypercorn.events import RawData, Updated
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

from knhkd.api.problems import PROBLEM_JSON, BodiesOverBudget, Draining, problem_for
from knhkd.auth.tls import failure_reason, subject_of
from knhkd.errors import KnhkdError
from knhkd.model import encode_json

HYPERCORN_VERSION = "0.18.0"

# Give freed heap back to the kernel after this many request-body bytes have
# been released, or this many connections closed (each held reads in flight),
# waiting this long first so that a burst is over.
TRIM_AFTER_BYTES = 4 * 1_048_576
TRIM_AFTER_CONNECTIONS = 64
TRIM_SETTLE_S = 1.0

ASGIApp = Callable[..., Awaitable[None]]
Message = dict[str, Any]


def body_reservation(headers: Iterable[tuple[bytes, bytes]], max_body_bytes: int) -> int:
    """The request-body bytes the framework may buffer for these headers."""
    length: int | None = None
    for raw_name, value in headers:
        name = raw_name.lower()
        if name == b"transfer-encoding":
            return max_body_bytes
        if name == b"content-length":
            # h11 has already refused a malformed or conflicting length.
            length = int(value)
    if length is None or length > max_body_bytes:
        return 0  # no body, or one Quart refuses (413) without buffering it
    return length


class Edge:
    """ASGI middleware in front of the app: the body budget and draining."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_inflight_body_bytes: Callable[[], int],
        linger_s: float,
        on_refused: Callable[[int], None],
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.budget = max_inflight_body_bytes
        self.linger_s = linger_s
        self.on_refused = on_refused
        self.held = 0  # body bytes reserved by requests in the app
        self.released = 0  # body bytes released since the last trim
        self.closed = 0  # connections closed since the last trim
        self.freed = trio.Event()  # set once either is past its TRIM_AFTER_*
        self.in_flight = 0  # requests in the app
        self.draining = False
        self._drained = trio.Event()

    async def drained(self) -> None:
        """Returns once draining and no request admitted before it is in the app."""
        if self.in_flight:
            await self._drained.wait()

    async def __call__(
        self, scope: Any, receive: Any, send: Any, sync_spawn: Any, call_soon: Any
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send, sync_spawn, call_soon)
            return
        if self.draining:
            await self._refuse(Draining("knhkd is shutting down"), receive, send)
            return
        need = body_reservation(scope["headers"], self.max_body_bytes)
        if need and self.held + need > self.budget():
            await self._refuse(
                BodiesOverBudget(
                    "request bodies in flight would exceed http.max_inflight_body_bytes; "
                    "retry later"
                ),
                receive,
                send,
            )
            return
        self.held += need
        self.in_flight += 1
        try:
            await self.app(scope, receive, send, sync_spawn, call_soon)
        finally:
            self.held -= need
            self.in_flight -= 1
            if self.draining and not self.in_flight:
                self._drained.set()
            self.released += need
            if self.released >= TRIM_AFTER_BYTES:
                self.freed.set()

    def connection_closed(self) -> None:
        self.closed += 1
        if self.closed >= TRIM_AFTER_CONNECTIONS:
            self.freed.set()

    async def _refuse(self, exc: KnhkdError, receive: Any, send: Any) -> None:
        problem, extra = problem_for(exc)
        body = encode_json(problem)
        headers = [
            (b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(body)).encode()),
            _CLOSE,
            *((k.lower().encode(), v.encode()) for k, v in extra.items()),
        ]
        self.on_refused(problem.status)
        async with trio.open_nursery() as nursery:
            # Hypercorn hands the body to the app through a queue of 10
            # messages and blocks its reader when it is full; drop what
            # arrives until the stream closes (the end of this answer closes
            # it), so that neither side waits on the other.
            nursery.start_soon(_discard, receive)
            start = {"type": "http.response.start", "status": problem.status, "headers": headers}
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": False})
            nursery.cancel_scope.deadline = trio.current_time() + self.linger_s


_CLOSE = (b"connection", b"close")


def with_close(start: Message) -> Message:
    """``start`` (an ``http.response.start``) saying ``Connection: close``, once."""
    headers = start.get("headers", [])
    if any(k.lower() == b"connection" and v.lower() == b"close" for k, v in headers):
        return start
    return {**start, "headers": [*headers, _CLOSE]}


async def _discard(receive: Callable[[], Awaitable[Message]]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _AnnouncedClose:
    """The app, whose answers say ``Connection: close`` whenever Hypercorn
    will close the connection after them (``closes_after`` at the answer's
    start): the server is draining, or the client is still sending the
    request's body. Hypercorn 0.18 recycles a connection only when both
    sides of the exchange are done and the server is not terminating, and
    otherwise closes it without a word, so a keep-alive client would send its
    next request into the close (RFC 9112 §9.6: a server that closes says so
    in its answer). Every route, hook and error of every app is covered
    here, whichever of them answered."""

    def __init__(self, app: ASGIApp, closes_after: Callable[[], bool]) -> None:
        self.app = app
        self.closes_after = closes_after

    async def __call__(
        self, scope: Any, receive: Any, send: Any, sync_spawn: Any, call_soon: Any
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send, sync_spawn, call_soon)
            return

        async def announced(message: Message) -> None:
            if message["type"] == "http.response.start" and self.closes_after():
                message = with_close(message)
            await send(message)

        await self.app(scope, receive, announced, sync_spawn, call_soon)


class _TlsScope:
    """The app, with the connection's ASGI ``tls`` extension in each scope."""

    def __init__(self, app: ASGIApp, info: dict[str, Any]) -> None:
        self.app = app
        self.info = info

    async def __call__(
        self, scope: Any, receive: Any, send: Any, sync_spawn: Any, call_soon: Any
    ) -> None:
        if scope["type"] == "http":
            scope["extensions"]["tls"] = self.info
        await self.app(scope, receive, send, sync_spawn, call_soon)


def tls_extension(stream: trio.SSLStream[trio.SocketStream]) -> dict[str, Any]:
    """The ASGI ``tls`` extension of a connection whose handshake is done."""
    der = stream.getpeercert(binary_form=True)
    name, cn = subject_of(der) if der else (None, None)
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": name,
        "client_cert_cn": cn,
        "client_cert_error": None,
        "tls_version": 0x0304 if stream.version() == "TLSv1.3" else None,
        "cipher_suite": None,
    }


class Connection(TCPServer):
    """One HTTP/1.1 connection: Hypercorn's, with a keep-alive watcher that
    works and a lingering close."""

    def __init__(
        self,
        app: ASGIApp,
        config: HypercornConfig,
        context: WorkerContext,
        state: ConnectionState,
        stream: trio.SocketStream,
        *,
        slots: Slots,
        linger_s: float,
        linger_bytes: int,
        peer: str = "",
        on_handshake_failed: Callable[[str, str], None] | None = None,
        handing_over: bool = False,
    ) -> None:
        super().__init__(
            cast(AppWrapper, _AnnouncedClose(app, self._closes_after)),
            config,
            context,
            state,
            cast(Any, stream),
        )
        self._peer = peer
        self._handing_over = handing_over
        self._on_handshake_failed = on_handshake_failed
        self._slots = slots
        self._holds_open = True  # taken by the listener before accept
        self._holds_linger = False
        self._linger_s = linger_s
        self._linger_bytes = linger_bytes
        self._idle = True
        self._served = False
        self._accepted_draining = context.terminated.is_set()
        self._wake = trio.Event()
        self._closing = False  # write side shut, lingering
        self._done = False  # the reader has stopped
        self._eof = False  # the client has closed its side (or the socket broke)
        self._discarding = False  # the answer going out is the last: drop what comes
        self._read_scope: trio.CancelScope | None = None

    def release(self) -> None:
        """Give back the slot the connection holds (once, whichever it is)."""
        if self._holds_open:
            self._holds_open = False
            self._slots.open.release()
        if self._holds_linger:
            self._holds_linger = False
            self._slots.lingering.release()

    def _start_lingering(self) -> bool:
        """Trade the connection's open slot for a lingering one: a connection
        that only drops bytes does not keep a client from being served."""
        try:
            self._slots.lingering.acquire_nowait()
        except trio.WouldBlock:
            return False
        self.release()
        self._holds_linger = True
        return True

    def wake(self) -> None:
        """Make the watcher look again (the server calls it when draining starts)."""
        self._wake.set()

    async def run(self) -> None:
        try:
            if isinstance(self.stream, trio.SSLStream) and not await self._handshake():
                return
            await super().run()  # its do_handshake returns at once: done above
        finally:
            self._done = True
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.stream.aclose()

    async def _handshake(self) -> bool:
        stream = self.stream
        try:
            with trio.fail_after(self.config.ssl_handshake_timeout):
                await stream.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError) as exc:
            reason = "timeout" if isinstance(exc, trio.TooSlowError) else failure_reason(exc)
            if self._on_handshake_failed is not None:
                self._on_handshake_failed(self._peer, reason)
            return False
        self.app = cast(AppWrapper, _TlsScope(cast(ASGIApp, self.app), tls_extension(stream)))
        return True

    async def protocol_send(self, event: Any) -> None:
        if isinstance(event, Updated):
            # Hypercorn restarts its idle task here, from whichever task sent
            # the event: the app's, whose cancellation then kills the timer.
            self._idle = event.idle
            self._served = self._served or not event.idle
            self._wake.set()
            return
        if isinstance(event, ConnectionClosed) and self._answering():
            # h11 refused bytes the client pipelined behind a request whose
            # answer says "Connection: close" (their state MUST_CLOSE, then
            # ERROR) while that answer is still going out; Hypercorn would
            # close the connection under it and the client would get no
            # answer at all (measured: 2 in 5 refusals with a request
            # pipelined behind them). The answer's own end closes it; until
            # then what the client sends is dropped as a lingering close drops
            # it (within linger_bytes), never buffered by h11.
            self._discarding = True
            return
        await super().protocol_send(event)

    def _answering(self) -> bool:
        """Whether an HTTP/1.1 answer has started and not ended."""
        connection = getattr(self.protocol.protocol, "connection", None)
        return isinstance(connection, h11.Connection) and connection.our_state is h11.SEND_BODY

    async def _idle_timeout(self) -> None:
        # Started once, from the connection's own task (TCPServer.run), and
        # never stopped by protocol_send: it lives as long as the reader.
        while not self._done and not self._closing:
            wake = self._wake = trio.Event()
            if not self._idle:
                await wake.wait()
                continue
            if self.context.terminated.is_set() and (
                self._served or not (self._accepted_draining or self._handing_over)
            ):
                # Idle while draining; a new client may still ask (and hear
                # 503). Handing over, so may one accepted before draining and
                # not served yet: closed unheard, its client would see a
                # connection error, and no successor can take it back.
                break
            with trio.move_on_after(self.config.keep_alive_timeout) as timer:
                await wake.wait()
            if timer.cancelled_caught:
                break
        if not self._done and not self._closing:
            with trio.CancelScope(shield=True):
                await self._initiate_server_close()

    def _closes_after(self) -> bool:
        """Whether Hypercorn closes this HTTP/1.1 connection after the answer
        now starting: the server is draining, or the client is still sending
        its request's body (an HTTP/2 stream has no ``Connection`` header)."""
        connection = getattr(self.protocol.protocol, "connection", None)
        if not isinstance(connection, h11.Connection):
            return False
        return self.context.terminated.is_set() or connection.their_state is h11.SEND_BODY

    async def _initiate_server_close(self) -> None:
        # Idle (or timed out): nothing of the client's is unread, no linger.
        self._closing = True
        await self.protocol.handle(ConnectionClosed())
        await self.stream.aclose()

    async def _close(self) -> None:
        if self._closing or self._done:
            return  # run() closes the stream once the reader has stopped
        self._closing = True
        # Called from whichever task ended the exchange, often the app's,
        # which Quart cancels as soon as its answer is out: shielded, or the
        # close is lost half-way and the connection stays open.
        with trio.CancelScope(shield=True):
            if self._eof or not self._start_lingering():
                # The client has closed its side (nothing more can come), or
                # too many lingering already: close now.
                await self.stream.aclose()
                return
            if self._read_scope is not None:
                self._read_scope.deadline = trio.current_time() + self._linger_s
            # A TLS stream cannot half-close: shut the TCP write side under it
            # (the client has every TLS record of the answer before the FIN).
            target = getattr(self.stream, "transport_stream", self.stream)
            with contextlib.suppress(
                trio.BrokenResourceError, trio.BusyResourceError, trio.ClosedResourceError
            ):
                await target.send_eof()

    async def _read_data(self) -> None:
        dropped = 0
        try:
            while True:
                if self._closing:
                    deadline = trio.current_time() + self._linger_s
                else:
                    deadline = trio.current_time() + (self.config.read_timeout or math.inf)
                with trio.CancelScope(deadline=deadline) as scope:
                    self._read_scope = scope
                    try:
                        data = await self.stream.receive_some(MAX_RECV)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        self._eof = True
                        break
                    finally:
                        self._read_scope = None
                if scope.cancelled_caught:
                    break
                if not data:
                    self._eof = True
                    break
                if self._closing or self._discarding:
                    dropped += len(data)
                    if dropped > self._linger_bytes:
                        break
                    continue
                await self.protocol.handle(RawData(bytes(data)))
            await self.protocol.handle(ConnectionClosed())
        finally:
            self._done = True
            self._wake.set()


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where there is none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
    return None if trim is None else partial(trim, 0)


async def _give_memory_back(edge: Edge) -> None:
    trim = _malloc_trim()
    if trim is None:
        return
    while True:
        await edge.freed.wait()
        await trio.sleep(TRIM_SETTLE_S)
        edge.released = edge.closed = 0
        edge.freed = trio.Event()
        # ctypes drops the GIL: the loop keeps serving while glibc walks its heap.
        await trio.to_thread.run_sync(trim)


class Slots:
    """``open``: connections served; ``lingering``: connections closing."""

    def __init__(self, max_connections: int) -> None:
        self.open = trio.Semaphore(max_connections)
        self.lingering = trio.Semaphore(max_connections)


class Balance(Protocol):
    """Processes sharing one listening socket, each taking its share of the
    connections (api/balance.py ``Shares``)."""

    async def turn(self) -> None: ...
    def opened(self) -> None: ...
    def closed(self) -> None: ...


class _Limited(trio.abc.Listener[trio.SocketStream]):
    """A listener that takes a connection slot (and, sharing the socket with
    other processes, its turn) before each ``accept``."""

    def __init__(
        self, inner: trio.SocketListener, slots: Slots, balance: Balance | None = None
    ) -> None:
        self.inner = inner
        self.slots = slots
        self.balance = balance

    async def accept(self) -> trio.SocketStream:
        await self.slots.open.acquire()
        try:
            if self.balance is not None:
                await self.balance.turn()
            stream = await self.inner.accept()
        except BaseException:
            self.slots.open.release()
            raise
        if self.balance is not None:
            self.balance.opened()
        return stream

    async def aclose(self) -> None:
        await self.inner.aclose()


async def serve(
    app: ASGIApp,
    config: HypercornConfig,
    *,
    max_connections: int,
    max_body_bytes: int,
    max_inflight_body_bytes: Callable[[], int],
    linger_s: float,
    on_refused: Callable[[int], None],
    shutdown_trigger: Callable[[], Awaitable[None]],
    tls: Callable[[], ssl.SSLContext] | None = None,
    on_handshake_failed: Callable[[str, str], None] | None = None,
    balance: Balance | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until ``shutdown_trigger`` returns, then drain (above)."""
    if config.ssl_enabled:
        raise ValueError("knhkd.api.server does TLS itself (tls=), never through Hypercorn's")
    edge = Edge(
        wrap_app(app, config.wsgi_max_body_size, "asgi"),
        max_body_bytes=max_body_bytes,
        max_inflight_body_bytes=max_inflight_body_bytes,
        linger_s=linger_s,
        on_refused=on_refused,
    )
    context = WorkerContext(None)
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(cast(AppWrapper, edge), config, lifespan_state)
    slots = Slots(max_connections)
    connections: set[Connection] = set()
    handing_over = bool(config.bind) and all(b.startswith("fd://") for b in config.bind)
    accepting = trio.CancelScope()

    async def accept_all() -> None:
        with accepting:
            await trio.serve_listeners(handle, listeners, handler_nursery=conn_nursery)

    async def handle(stream: trio.SocketStream) -> None:
        served: trio.abc.Stream = stream
        peer = ""
        if tls is not None:
            with contextlib.suppress(OSError):
                peer = str(stream.socket.getpeername()[0])
            served = trio.SSLStream(stream, tls(), server_side=True, https_compatible=True)
        conn = Connection(
            edge,
            config,
            context,
            ConnectionState(lifespan_state.copy()),
            cast(trio.SocketStream, served),
            slots=slots,
            linger_s=linger_s,
            linger_bytes=max_body_bytes,
            peer=peer,
            on_handshake_failed=on_handshake_failed,
            handing_over=handing_over,
        )
        connections.add(conn)
        try:
            await conn.run()
        finally:
            connections.discard(conn)
            conn.release()
            edge.connection_closed()
            if balance is not None:
                balance.closed()

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        sockets = config.create_sockets()
        listeners = []
        binds = []
        for sock in sockets.insecure_sockets:
            sock.listen(config.backlog)
            inner = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            listeners.append(_Limited(inner, slots, balance))
            scheme = "https" if tls is not None else "http"
            binds.append(f"{scheme}://{repr_socket_addr(sock.family, sock.getsockname())}")
        try:
            async with trio.open_nursery() as conn_nursery:
                async with trio.open_nursery() as accept_nursery:
                    accept_nursery.start_soon(_give_memory_back, edge)
                    accept_nursery.start_soon(accept_all)
                    task_status.started(binds)
                    await shutdown_trigger()
                    deadline = trio.current_time() + config.graceful_timeout
                    edge.draining = True
                    if handing_over:
                        # The listening socket outlives us: what arrives now
                        # waits in its backlog for the next instance.
                        accepting.cancel()
                    await context.terminated.set()
                    for conn in list(connections):
                        conn.wake()
                    with trio.move_on_at(deadline):
                        await edge.drained()
                    accept_nursery.cancel_scope.cancel()
                for listener in listeners:
                    await listener.aclose()
                # What is left answers 503s or lingers: bounded either way.
                conn_nursery.cancel_scope.deadline = min(deadline, trio.current_time() + linger_s)
        finally:
            for listener in listeners:
                await listener.aclose()
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
