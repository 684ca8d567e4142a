"""What every HTTP request leaves behind, whichever path served it (the app,
api/http.py, or the lean path, api/edge.py): its server span and its line
in the access log.

Guarantees:
- ``traced``: one ``knhk.http.request`` server span per request, child of
  the caller's span when the request carries W3C ``traceparent`` /
  ``tracestate``, current while the request is served (so the spans and
  links made meanwhile are in the caller's trace), with the response status
  (an error status from 500 on). With tracing off: one test per request.
- ``log_access``: one info line on ``knhkd.http.access`` (``[telemetry]
  access_log``): method, route template (never the path: it may carry ids a
  template does not), status, duration, the principal once authentication
  resolved one, and the current span's trace id when tracing is on.

Must never: log a request's query, headers or body (so never a token).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry import trace

from knhkd.model import Principal
from knhkd.telemetry.tracing import SERVER, enabled, error_status, extract, start_span, use_span

# Not ``knhkd.access``, which is authorization's decision log (api/authn.py).
access = logging.getLogger("knhkd.http.access")

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


def log_access(
    method: str, rule: str, status: int, duration_s: float, principal: object
) -> None:
    """The access log's line for one answered request (``rule``: its route
    template, ``-`` when none matched)."""
    if not access.isEnabledFor(logging.INFO):
        return
    name = principal.name if isinstance(principal, Principal) else "-"
    ctx = trace.get_current_span().get_span_context()
    trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else "-"
    access.info(
        "%s %s %d %.1fms principal=%s trace=%s",
        method,
        rule,
        status,
        duration_s * 1000.0,
        name,
        trace_id,
        extra={
            "fields": {
                "method": method,
                "route": rule,
                "status": status,
                "duration_s": round(duration_s, 6),
                "principal": None if name == "-" else name,
                "trace_id": None if trace_id == "-" else trace_id,
            }
        },
    )


def traced(inner: ASGIApp) -> ASGIApp:
    """``inner`` with one server span per HTTP request (module docstring)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or not enabled():
            await inner(scope, receive, send)
            return
        carrier = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope.get("headers", ())
            if k in (b"traceparent", b"tracestate")
        }
        s = start_span(
            "knhk.http.request",
            {"http.request.method": str(scope.get("method", ""))},
            parent=extract(carrier),
            kind=SERVER,
        )

        async def send_status(message: Any) -> None:
            if message.get("type") == "http.response.start":
                code = int(message.get("status", 0))
                s.set_attribute("http.response.status_code", code)
                if code >= 500:
                    s.set_status(error_status(f"HTTP {code}"))
            await send(message)

        try:
            with use_span(s):
                await inner(scope, receive, send_status)
        finally:
            s.end()

    return app
