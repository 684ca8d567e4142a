"""The HTTP app (quart-trio on Hypercorn's trio worker, inside the daemon's run).

The routes are in ``api/routes/``, one module per resource; this module makes
the app (its blueprints, error handlers, request counters), Hypercorn's one
``Config``, and serves it.

Guarantees:
- Every error is ``application/problem+json`` (api/problems.py), mapped by the
  kind of error (knhkd/errors.py); bodies over ``http.max_body_bytes`` get 413
  before they are read whole, with ``Connection: close``.
- Hypercorn is served programmatically with a shutdown trigger: the Hypercorn
  CLI exits 0 when its worker crashes, and installs no signal handling in
  ``serve`` (PLATFORM_NOTES, Hypercorn). It runs through ``api/server.py``:
  at most ``http.max_connections`` connections, request-body bytes in flight
  within ``http.max_inflight_body_bytes``, header bytes within
  ``http.max_header_bytes``; on shutdown idle connections close at once and
  new requests get 503 ``draining``. ``serve_http`` returns once in-flight
  requests have finished (or ``http.graceful_timeout_s`` passed).
- Socket activation: listening sockets systemd passes as ``http``
  (api/activation.py) are served instead of ``http.bind`` (logged once);
  on shutdown they stop accepting at once and stay open in systemd's hands,
  so the next instance takes what queued meanwhile.
- With ``[http.tls]``, HTTPS only (TLS 1.3; knhkd/auth/tls.py builds the
  context, the daemon holds it and swaps it on SIGHUP): a refused handshake
  counts in ``knhk_tls_handshake_failures_total{reason}`` and is logged at
  warning once per peer address and reason (the last ``TLS_PEERS_LOGGED``
  remembered).
- With ``[telemetry] access_log`` every request the app answers is one info
  line on ``knhkd.http.access``, and every request is a server span when
  tracing is on (api/access.py).

Must never: open LMDB transactions itself or reach past the ``Daemon`` facade,
or send a success status for data that was not committed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config as HypercornConfig
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from knhkd.api import activation, authn, openapi, server, workers
from knhkd.api.access import log_access, traced
from knhkd.api.context import DAEMON_KEY, Front
from knhkd.api.edge import BODY_TIMEOUT_S, Edge
from knhkd.api.guards import guard
from knhkd.api.pool import Pool, started
from knhkd.api.problems import problem_response
from knhkd.api.routes import (
    cycle,
    governance,
    health,
    observations,
    patterns,
    privacy,
    proposals,
    receipts,
    snapshots,
)
from knhkd.auth.ratelimit import FILE as BUCKETS_FILE
from knhkd.auth.ratelimit import SharedBuckets
from knhkd.config import Config
from knhkd.errors import KnhkdError
from knhkd.telemetry.tracing import annotate

if TYPE_CHECKING:  # a worker process imports this module, never the loop
    from knhkd.loop.daemon import Daemon

log = logging.getLogger("knhkd.http")

# How long a closing connection reads and drops what its client still sends,
# so that the close does not reset a response the client has not read yet.
LINGER_S = 2.0

# Peer addresses whose refused handshake was logged (least recent dropped):
# a client retrying a bad certificate in a loop logs one line, not a flood.
TLS_PEERS_LOGGED = 1024

BLUEPRINTS = (
    observations.bp,
    patterns.bp,
    proposals.bp,
    snapshots.bp,
    governance.bp,
    receipts.bp,
    cycle.bp,
    privacy.bp,
    health.bp,
    openapi.bp,
)


def route_app(cfg: Config) -> QuartTrio:
    """An app with the routes ``cfg`` enables and nothing else (what the
    OpenAPI document describes: ``python -m knhkd.cli.openapi``)."""
    # No static files: a /static/<path> route would be one more door.
    app = QuartTrio("knhkd", static_folder=None)
    for bp in BLUEPRINTS:
        app.register_blueprint(bp)
    if cfg.http.noop_endpoint:
        app.register_blueprint(health.bench)
    return app


def create_app(daemon: Front) -> QuartTrio:
    app = route_app(daemon.cfg)
    app.config["MAX_CONTENT_LENGTH"] = daemon.cfg.http.max_body_bytes
    app.config["BODY_TIMEOUT"] = BODY_TIMEOUT_S
    app.config[DAEMON_KEY] = daemon

    @app.before_request
    async def _started() -> None:
        # First of the hooks: a request the guards refuse is timed too.
        g.started_ns = time.perf_counter_ns()

    # Host, Origin and Content-Type, before any route (api/guards.py).
    app.before_request(guard)
    app.before_request(_route_attribute)

    @app.errorhandler(KnhkdError)
    async def _problem(exc: KnhkdError) -> Response:
        if type(exc).problem == KnhkdError.problem:
            log.exception("internal error in %s %s", request.method, request.path)
        return problem_response(exc)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        if exc.code in (404, 405) and request.content_length != 0:
            # Routing refused it before any hook or view read its body: read
            # and drop the body (bounded like any body: max_body_bytes,
            # BODY_TIMEOUT_S) so that the connection carries the client's next
            # request, as a worker does, which reads every body it forwards.
            # A body over the bounds is left unread (api/server.py then says
            # ``Connection: close``).
            with contextlib.suppress(HTTPException):
                await request.get_data(cache=False)
        response = problem_response(exc)
        if exc.code == 413:
            # The rest of the body was never read: the connection cannot carry
            # another request, so say so rather than leave the client waiting.
            response.headers["Connection"] = "close"
        return response

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem_response(exc)

    @app.after_request
    async def _count(response: Response) -> Response:
        started = g.get("started_ns")
        rule = request.url_rule.rule if request.url_rule is not None else "-"
        seconds = None if started is None else (time.perf_counter_ns() - started) / 1e9
        daemon.count_response(response.status_code, rule, seconds)
        telemetry = daemon.cfg.telemetry
        if telemetry.access_log:
            log_access(
                request.method,
                rule,
                response.status_code,
                seconds or 0.0,
                g.get("principal"),
                telemetry.access_log_max_per_s,
            )
        return response

    # Who is asking and may they (api/authn.py): after the edge's checks.
    authn.install(app, daemon.cfg.auth, daemon.cfg.http.tls)
    app.asgi_app = traced(app.asgi_app)  # type: ignore[method-assign,assignment]
    return app


async def _route_attribute() -> None:
    # async, as every hook and view here: Quart runs a plain function in a
    # thread of its own on every request (measured: a third of a no-op's cost).
    rule = request.url_rule
    if rule is not None:
        annotate({"http.route": rule.rule})


def hypercorn_config(daemon: Front) -> HypercornConfig:
    cfg = daemon.cfg.http
    hc = HypercornConfig()
    inherited = activation.take("http")
    if inherited:
        # Hypercorn adopts an fd:// bind as it is; detached, so that only its
        # socket object owns (and at exit closes) our descriptor.
        hc.bind = [f"fd://{sock.detach()}" for sock in inherited]
        log.info("serving the %d HTTP socket(s) systemd passed", len(inherited))
    else:
        hc.bind = [cfg.bind]
    hc.graceful_timeout = cfg.graceful_timeout_s
    hc.keep_alive_timeout = cfg.keep_alive_timeout_s
    # Bytes of an unfinished request line and headers Hypercorn (h11) buffers
    # per connection; past it, 431/400 and close.
    hc.h11_max_incomplete_size = cfg.max_header_bytes
    hc.ssl_handshake_timeout = cfg.tls.handshake_timeout_s
    hc.accesslog = None
    hc.errorlog = logging.getLogger("knhkd.hypercorn")
    return hc


async def serve_http(
    daemon: Daemon,
    *,
    pool: Pool | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until the daemon asks to shut down; Hypercorn drains in-flight
    requests. ``pool``: the worker processes api/pool.py ``started`` began before
    the daemon's start-up (else, with ``http.workers`` > 1, started here)."""
    app = create_app(daemon)
    if pool is not None or daemon.cfg.http.worker_count() > 1:
        # Worker processes in front (api/workers.py).
        try:
            async with contextlib.AsyncExitStack() as stack:
                if pool is None:
                    pool = await stack.enter_async_context(started(daemon.cfg))
                assert pool is not None
                # The forwarded requests' rate limit is the workers' one.
                authn.share_buckets(app.config, SharedBuckets(pool.runtime / BUCKETS_FILE))
                await workers.serve(
                    daemon, app, hypercorn_config(daemon), pool, linger_s=LINGER_S,
                    task_status=task_status,
                )  # fmt: skip
        finally:
            daemon.http_done.set()
        return
    logged: OrderedDict[tuple[str, str], None] = OrderedDict()

    def handshake_failed(peer: str, reason: str) -> None:
        daemon.metrics.tls_handshake_failures.labels(reason).inc()
        if (peer, reason) in logged:
            logged.move_to_end((peer, reason))
            return
        logged[peer, reason] = None
        if len(logged) > TLS_PEERS_LOGGED:
            logged.popitem(last=False)
        log.warning("TLS handshake from %s refused: %s", peer or "-", reason)

    tls = daemon.tls_context if daemon.cfg.http.tls.enabled else None
    # The producers' routes without the framework (api/edge.py), sharing the
    # app's authentication state.
    edge = Edge(daemon, app, app.config)
    try:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(
                lambda task_status: server.serve(
                    edge,
                    hypercorn_config(daemon),
                    max_connections=daemon.cfg.http.max_connections,
                    max_body_bytes=daemon.cfg.http.max_body_bytes,
                    max_inflight_body_bytes=lambda: daemon.cfg.http.max_inflight_body_bytes,
                    linger_s=LINGER_S,
                    on_refused=daemon.count_response,
                    shutdown_trigger=daemon.shutdown_requested.wait,
                    tls=tls,
                    on_handshake_failed=handshake_failed,
                    task_status=task_status,
                )
            )
            daemon.http_bound = list(bound)
            task_status.started()
    finally:
        daemon.http_done.set()
