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
  resolved one, and the current span's trace id when tracing is on. At most
  ``access_log_max_per_s`` lines a second in this process (a token bucket
  of one second's worth): the requests over it are not logged but counted,
  and the next line logged is preceded by one saying how many and since
  when; an answer from 500 on is logged whatever the budget.

Must never: log a request's query, headers or body (so never a token).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry import trace

from knhkd.model import Principal
from knhkd.telemetry.tracing import SERVER, enabled, error_status, extract, start_span, use_span

# Not ``knhkd.access``, which is authorization's decision log (api/authn.py).
access = logging.getLogger("knhkd.http.access")

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


class _Budget:
    """Lines this process may log now: ``rate`` a second, at most one
    second's worth saved up."""

    __slots__ = ("at", "skipped", "skipped_from", "tokens")

    def __init__(self) -> None:
        self.at = time.monotonic()
        self.tokens = math.inf  # full, whatever the first rate
        self.skipped = 0
        self.skipped_from = 0.0

    def take(self, rate: float) -> bool:
        now = time.monotonic()
        self.tokens = min(rate, self.tokens + (now - self.at) * rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        if not self.skipped:
            self.skipped_from = now
        self.skipped += 1
        return False


_budget = _Budget()


def log_access(
    method: str,
    rule: str,
    status: int,
    duration_s: float,
    principal: object,
    max_per_s: float = 0.0,
) -> None:
    """The access log's line for one answered request (``rule``: its route
    template, ``-`` when none matched), within ``max_per_s`` lines a second
    (0: no limit; module docstring)."""
    if not access.isEnabledFor(logging.INFO):
        return
    if max_per_s > 0 and status < 500 and not _budget.take(max_per_s):
        return
    if _budget.skipped:
        access.info(
            "%d requests not logged in the last %.1f s (telemetry.access_log_max_per_s = %g)",
            _budget.skipped,
            time.monotonic() - _budget.skipped_from,
            max_per_s,
            extra={"fields": {"not_logged": _budget.skipped}},
        )
        _budget.skipped = 0
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
