"""The edge's refusals of a request before any route sees it: whom it is
addressed to (``Host``), which web page sent it (``Origin``), and what its body
is (``Content-Type``).

Guarantees, checked in this order, each a problem+json and nothing done:
- ``Host`` must name this daemon (``http.allowed_hosts``; when empty and bound
  to a loopback address: ``localhost``, ``127.0.0.1``, ``[::1]``, bare or with
  the bound port). A page whose own name resolves to 127.0.0.1 (DNS
  rebinding) still sends its own name: 403 ``host-not-allowed``. A request
  with no ``Host`` is refused the same way when the check applies.
- A mutating request (POST, PUT, PATCH, DELETE) that carries an ``Origin``
  (browsers send one; curl, knhkctl and producers do not) is refused unless
  that origin is in ``http.allowed_origins``: 403 ``origin-not-allowed``.
  This is what stops a page on the same machine from driving the API with a
  form or ``fetch``.
- A route that reads a JSON body (api/routes/doc.py) accepts a body only as
  ``application/json``, ``application/*+json`` or the route's own extra types
  (NDJSON for observations), in UTF-8: anything else, a missing content type
  included, is 415 ``unsupported-media-type``. Browsers can send text/plain,
  form and multipart bodies (and typeless ones) across sites without asking;
  never a JSON one. A request with no body at all is the route's to judge.
- A refused request whose body was not read is answered with
  ``Connection: close`` (the unread bytes would stall the next request).

Must never: read the body, reach the daemon beyond its configuration, or
refuse a request that has neither ``Origin`` nor a foreign ``Host``
for anything but its media type.
"""

from __future__ import annotations

from functools import lru_cache

from quart import Response, after_this_request, current_app, request
from werkzeug.http import parse_options_header
from werkzeug.sansio.utils import get_content_length
from werkzeug.wrappers.response import Response as WerkzeugResponse

from knhkd.api.problems import HostNotAllowed, OriginNotAllowed
from knhkd.api.routes.base import front
from knhkd.api.routes.doc import JSON, RouteDoc, doc_of
from knhkd.config import HttpConfig, is_loopback, parse_bind
from knhkd.errors import KnhkdError, UnsupportedMediaType

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def _name_of(host: str) -> str:
    """``host`` without its port (``[::1]:8080`` → ``[::1]``)."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.partition(":")[0]


@lru_cache(maxsize=8)
def _allowed_hosts(allowed: tuple[str, ...], bind: str) -> frozenset[str] | None:
    """The Host values this configuration answers to, or None: any will do."""
    host, port = parse_bind(bind)
    if not allowed:
        if not is_loopback(host):
            return None
        allowed = LOOPBACK_NAMES
    exact: set[str] = set()
    for entry in (a.lower() for a in allowed):
        if _name_of(entry) != entry:  # has a port: only that one
            exact.add(entry)
        else:
            exact.update((entry, f"{entry}:{port}"))
    return frozenset(exact)


def check_host(host: str, cfg: HttpConfig) -> None:
    allowed = _allowed_hosts(cfg.allowed_hosts, cfg.bind)
    if allowed is None or host.lower() in allowed:
        return
    raise HostNotAllowed(
        f"this API does not answer to Host {host!r}; see http.allowed_hosts"
        if host
        else "a Host header is required"
    )


def check_origin(method: str, origin: str | None, cfg: HttpConfig) -> None:
    if origin is None or method not in MUTATING:
        return
    if origin.lower().rstrip("/") in {o.lower().rstrip("/") for o in cfg.allowed_origins}:
        return
    raise OriginNotAllowed(
        f"requests from web pages of {origin!r} may not change anything; "
        "see http.allowed_origins"
    )


def is_json(mimetype: str) -> bool:
    return mimetype == JSON or (mimetype.startswith("application/") and mimetype.endswith("+json"))


async def _close(response: Response | WerkzeugResponse) -> Response | WerkzeugResponse:
    response.headers["Connection"] = "close"
    return response


def close_if_body_unread() -> None:
    """A request refused before its body was read (here, or by api/authn.py's
    hook) is answered with ``Connection: close``, always: whether its body
    had arrived whole by the time of the answer is timing (when it had not,
    Hypercorn closes the connection, and api/server.py announces it), so a
    refused client is told the same thing every time, and a refused body is
    never read."""
    headers = request.headers
    if body_expected(headers.get("Content-Length"), headers.get("Transfer-Encoding")):
        after_this_request(_close)


def body_expected(content_length: str | None, transfer_encoding: str | None) -> bool:
    """Whether a request with these headers has a body to read (Werkzeug's
    reading of ``Content-Length``, as the app's ``request.content_length``)."""
    return bool(get_content_length(content_length, transfer_encoding)) or (
        transfer_encoding is not None
    )


async def guard() -> None:
    """The app's ``before_request`` hook."""
    headers = request.headers
    has_body = body_expected(headers.get("Content-Length"), headers.get("Transfer-Encoding"))
    try:
        check(
            front().cfg.http,
            request.method,
            headers.get("Host", ""),
            headers.get("Origin"),
            headers.get("Content-Type"),
            doc_of(current_app.view_functions.get(request.endpoint or "")),
            has_body,
        )
    except KnhkdError:
        close_if_body_unread()
        raise


def check(
    cfg: HttpConfig,
    method: str,
    host: str,
    origin: str | None,
    content_type: str | None,
    doc: RouteDoc | None,
    has_body: bool,
) -> None:
    """Every check of this module, in order, on a request's raw header values
    (the app's hook and api/edge.py both call it)."""
    check_host(host, cfg)
    check_origin(method, origin, cfg)
    if doc is None or doc.body is None or not has_body:
        return
    parsed, params = parse_options_header(content_type or "")
    mimetype = parsed.lower()
    charset = params.get("charset", "utf-8").lower()
    if (is_json(mimetype) or mimetype in doc.extra_media) and charset in ("utf-8", "utf8"):
        return
    accepted = ", ".join(("application/json", "application/*+json", *doc.extra_media))
    raise UnsupportedMediaType(
        f"the body must be {accepted} (UTF-8); got {content_type!r}" if content_type
        else f"a body needs a Content-Type: {accepted}",
        title="Unsupported media type",
    )
