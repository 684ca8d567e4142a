"""RFC 9457 problem details: the one way the API reports an error.

Guarantees: every error response is ``application/problem+json`` with a stable
``type`` URI (``urn:knhkd:problem:<slug>``), a title, the status, a detail,
and, for invalid input, ``errors`` naming each offending field (and item index
in a batch): the first ``MAX_ERRORS`` of them, with ``errors_omitted`` counting
the rest, so a large bad batch does not make a larger error document.

The mapping is by kind (``knhkd.errors``): a ``KnhkdError`` answers with the
status, problem type, title and detail it names (and ``Retry-After`` when it
says when to retry); Werkzeug's own HTTP errors (no route, wrong method, body
over ``MAX_CONTENT_LENGTH``) by their status; anything else is 500
``internal-error``.

Must never: leak a stack trace or an internal exception's text (500
``internal-error``), or know a package's exception types: a handler lets the
error its call raised propagate, and its kind says how to answer.
"""

from __future__ import annotations

from quart import Response
from werkzeug.exceptions import HTTPException

from knhkd.errors import (
    Forbidden,
    Invalid,
    KnhkdError,
    Malformed,
    Unavailable,
)
from knhkd.model import Problem, encode_json

PROBLEM_JSON = "application/problem+json"
# Enough to fix a batch by; a 10,000-item batch with one fault per item would
# otherwise answer with megabytes.
MAX_ERRORS = 100
INTERNAL_DETAIL = "an internal error occurred; see the daemon log"


# The edge's own refusals (the request itself, before the daemon is asked).


class InvalidParameter(Malformed):
    problem = "invalid-parameter"
    title = "Invalid query parameter"


class MalformedJson(Malformed):
    problem = "malformed-json"
    title = "Malformed JSON"


class InvalidRequestBody(Invalid):
    """JSON, but not the record the route reads: 422 naming the field."""

    problem = "invalid-body"
    title = "Invalid request body"


class InvalidProposal(InvalidRequestBody):
    problem = "invalid-proposal"
    title = "Invalid proposal"


class HostNotAllowed(Forbidden):
    problem = "host-not-allowed"
    title = "Host not allowed"


class OriginNotAllowed(Forbidden):
    problem = "origin-not-allowed"
    title = "Origin not allowed"


class NotReady(Unavailable):
    problem = "not-ready"
    title = "Not ready"


class Draining(Unavailable):
    """A request that arrived after SIGTERM (api/server.py): the same problem
    the ingest intake answers once it has closed."""

    problem = "draining"
    title = "Shutting down"
    retry_after = 5


class BodiesOverBudget(Unavailable):
    """Request bodies in progress would exceed ``http.max_inflight_body_bytes``."""

    problem = "overloaded"
    title = "Overloaded"
    retry_after = 1


_SLUGS = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("payload-too-large", "Payload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    429: ("too-many-requests", "Too many requests"),
    500: ("internal-error", "Internal error"),
    503: ("unavailable", "Service unavailable"),
}


def for_status(status: int, detail: str = "") -> Problem:
    """The problem for a bare HTTP status (Werkzeug's errors)."""
    slug, title = _SLUGS.get(status, ("error", "Error"))
    return Problem(type=f"urn:knhkd:problem:{slug}", title=title, status=status, detail=detail)


def problem_for(exc: BaseException) -> tuple[Problem, dict[str, str]]:
    """The problem document and extra headers that answer ``exc``."""
    if isinstance(exc, KnhkdError) and type(exc).problem != KnhkdError.problem:
        errors = list(exc.errors)
        problem = Problem(
            type=exc.problem_type,
            title=exc.title,
            status=exc.status,
            detail=exc.detail,
            errors=errors[:MAX_ERRORS],
            errors_omitted=max(0, len(errors) - MAX_ERRORS),
        )
        headers = {} if exc.retry_after is None else {"Retry-After": str(exc.retry_after)}
        if exc.www_authenticate is not None:
            headers["WWW-Authenticate"] = exc.www_authenticate
        return problem, headers
    if isinstance(exc, HTTPException):
        # 405 names the methods the path has (RFC 9110 §15.5.6).
        allowed = getattr(exc, "valid_methods", None)
        headers = {"Allow": ", ".join(sorted(allowed))} if allowed else {}
        return for_status(exc.code or 500, exc.description or ""), headers
    return for_status(500, INTERNAL_DETAIL), {}


def problem_response(exc: BaseException) -> Response:
    problem, headers = problem_for(exc)
    return Response(
        encode_json(problem), status=problem.status, content_type=PROBLEM_JSON, headers=headers
    )
