"""The producers' path, served without the framework: ``POST
/api/v1/observations`` (and, with ``http.noop_endpoint``, the bench's
``POST /api/v1/_noop``, its baseline) answered as plain ASGI in front of
the app, the daemon's Quart app (api/http.py) or a worker's forwarder
(api/worker.py). Quart's request and response objects, context and hooks cost
more CPU per request than a durable ingest does (measured on this machine:
a raw ASGI no-op ~3,000 req/s, Quart's ~1,860, with knhkd's hooks ~1,480).

Guarantees:
- The same answers, audit records, counts, span and access-log line as the
  app's route, because every decision is the app's own function, called
  here with the request's raw values, in the app's order:
  ``guards.check`` (Host, Origin, media type); ``authn.authenticate_request``
  and ``authn.permit`` (the permission of ``ROUTE_PERMISSIONS``, the same
  rate limiter); the route's own ``observations.decode`` and
  ``observations.accept``; ``problems.problem_for`` for every refusal;
  ``Front.count_response`` and ``access.log_access`` for every answer.
  tests/integration/test_worker_edge.py sends the same requests through this
  path and through the Quart app and holds the two to each other.
- The body is read only once the request is admitted, and never past
  ``http.max_body_bytes`` (413, as Quart's ``MAX_CONTENT_LENGTH``); a request
  refused before its body was read, or with 413, is answered with
  ``Connection: close``. A client that disconnects mid-body is answered
  nothing and nothing of its request is stored.
- Anything else (another method or path, lifespan) goes to the app
  untouched.

Must never: decide anything the app decides in a function of its own (a
check written twice drifts apart), or answer 201 before ``Front.ingest``
returned the ids.
"""

from __future__ import annotations

import logging
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import trio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, RequestTimeout
from werkzeug.http import parse_options_header

from knhkd.api import authn, guards
from knhkd.api.access import ASGIApp, log_access, traced
from knhkd.api.context import Front
from knhkd.api.problems import PROBLEM_JSON, problem_for
from knhkd.api.routes import health, observations
from knhkd.api.routes.doc import JSON, RouteDoc, doc_of
from knhkd.errors import KnhkdError
from knhkd.model import Principal, encode_json
from knhkd.telemetry.tracing import annotate

log = logging.getLogger("knhkd.http")

# Seconds to wait for a whole request body: Quart's ``BODY_TIMEOUT``, which
# api/http.py sets to this same value.
BODY_TIMEOUT_S = 60.0

_JSON_TYPE = (b"content-type", JSON.encode())
_PROBLEM_TYPE = (b"content-type", PROBLEM_JSON.encode())
_CLOSE = (b"connection", b"close")


@dataclass(frozen=True, slots=True)
class _Route:
    rule: str
    endpoint: str  # its name in authn.ROUTE_PERMISSIONS
    doc: RouteDoc | None
    ingest: bool


class _Gone(Exception):
    """The client went away before its body was whole."""


class Edge:
    """ASGI: the producers' routes served here, every other request by ``app``.

    ``auth``: where the ``AuthState`` lives (``authn.state_of``); the app's
    config when the app is the daemon's, so both paths share one rate limiter.
    """

    def __init__(self, front: Front, app: ASGIApp, auth: MutableMapping[str, Any]) -> None:
        self.front = front
        self.app = app
        self.auth = auth
        self.routes = {
            "/api/v1/observations": _Route(
                "/api/v1/observations",
                "observations.ingest",
                doc_of(observations.ingest),
                ingest=True,
            )
        }
        if front.cfg.http.noop_endpoint:
            self.routes["/api/v1/_noop"] = _Route(
                "/api/v1/_noop", "bench.noop", doc_of(health.noop), ingest=False
            )
        self._traced = traced(self._serve)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in self.routes
            and not scope.get("root_path")
        ):
            await self._traced(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _serve(self, scope: Any, receive: Any, send: Any) -> None:
        started = time.perf_counter_ns()
        route = self.routes[scope["path"]]
        front = self.front
        cfg = front.cfg
        headers: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            # The first of a repeated header, as the app's ``headers.get``.
            headers.setdefault(name.lower(), value.decode("latin-1"))
        has_body = guards.body_expected(
            headers.get(b"content-length"), headers.get(b"transfer-encoding")
        )
        principal: Principal | None = None
        extra: list[tuple[bytes, bytes]] = []
        try:
            try:
                guards.check(
                    cfg.http,
                    "POST",
                    headers.get(b"host", ""),
                    headers.get(b"origin"),
                    headers.get(b"content-type"),
                    route.doc,
                    has_body,
                )
            except KnhkdError:
                if has_body:
                    extra.append(_CLOSE)
                raise
            annotate({"http.route": route.rule})
            need = authn.ROUTE_PERMISSIONS.get(route.endpoint)
            if need != authn.PUBLIC:
                name = f"POST {route.rule}"
                peer = (scope.get("client") or ("<local>",))[0] or ""
                state = authn.state_of(self.auth, cfg)
                try:
                    principal = await authn.authenticate_request(
                        state,
                        front,
                        name,
                        headers.get(b"authorization"),
                        scope.get("extensions", {}).get("tls"),
                        peer,
                    )
                    await authn.permit(state, front, principal, need, name, peer)
                except authn.REFUSALS:
                    if has_body:
                        extra.append(_CLOSE)
                    raise
            if route.ingest:
                front.check_accepting()
                raw = await _body(receive, headers, cfg.http.max_body_bytes)
                mimetype = parse_options_header(headers.get(b"content-type", ""))[0].lower()
                decoded = observations.decode(front, raw, mimetype)
                status, body = 201, encode_json(await observations.accept(front, decoded))
            else:
                await _body(receive, headers, cfg.http.max_body_bytes)
                status, body = 200, b"{}"
            out = [_JSON_TYPE]
        except _Gone:
            return
        except Exception as exc:  # every error is a problem document
            if isinstance(exc, HTTPException) and exc.code == 413:
                # The rest of the body is never read: the connection cannot
                # carry another request.
                extra.append(_CLOSE)
            elif not isinstance(exc, (KnhkdError, HTTPException)):
                log.exception("unhandled error in POST %s", scope["path"])
            elif isinstance(exc, KnhkdError) and type(exc).problem == KnhkdError.problem:
                log.exception("internal error in POST %s", scope["path"])
            problem, more = problem_for(exc)
            status, body = problem.status, encode_json(problem)
            out = [_PROBLEM_TYPE]
            out.extend((k.lower().encode(), v.encode("latin-1")) for k, v in more.items())
        out.append((b"content-length", str(len(body)).encode()))
        out.extend(dict.fromkeys(extra))
        seconds = (time.perf_counter_ns() - started) / 1e9
        front.count_response(status, route.rule, seconds)
        if cfg.telemetry.access_log:
            log_access(
                "POST", route.rule, status, seconds, principal, cfg.telemetry.access_log_max_per_s
            )
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body, "more_body": False})


async def _body(receive: Any, headers: dict[bytes, str], limit: int) -> bytes:
    """The whole request body, within ``limit`` bytes and ``BODY_TIMEOUT_S``
    (Quart's ``Body``: a declared length over the limit is refused unread)."""
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestEntityTooLarge()
    chunks: list[bytes] = []
    size = 0
    with trio.move_on_after(BODY_TIMEOUT_S):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Gone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestEntityTooLarge()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
    raise RequestTimeout()
