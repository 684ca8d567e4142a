"""RFC 9457 problem details: the one way the API reports an error.

Guarantees: every error response is ``application/problem+json`` with a stable
``type`` URI (``urn:knhkd:problem:<slug>``), a title, the status, a detail,
and, for invalid input, ``errors`` naming each offending field (and item index
in a batch): the first ``MAX_ERRORS`` of them, with ``errors_omitted`` counting
the rest, so a large bad batch does not make a larger error document.
Must never: leak a stack trace or an internal exception text for a 5xx.
"""

from __future__ import annotations

from quart import Response

from knhkd.model import FieldError, Problem, encode_json

PROBLEM_JSON = "application/problem+json"
# Enough to fix a batch by; a 10,000-item batch with one fault per item would
# otherwise answer with megabytes.
MAX_ERRORS = 100


class ApiProblem(Exception):
    """Raise from a handler to answer with a problem document."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str = "",
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title)
        errors = errors or []
        self.problem = Problem(
            type=f"urn:knhkd:problem:{slug}",
            title=title,
            status=status,
            detail=detail,
            errors=errors[:MAX_ERRORS],
            errors_omitted=max(0, len(errors) - MAX_ERRORS),
        )
        self.headers = headers or {}


def problem_response(exc: ApiProblem) -> Response:
    return Response(
        encode_json(exc.problem),
        status=exc.problem.status,
        content_type=PROBLEM_JSON,
        headers=exc.headers,
    )


_SLUGS = {
    400: ("bad-request", "Bad request"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("payload-too-large", "Payload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    500: ("internal-error", "Internal error"),
    503: ("unavailable", "Service unavailable"),
}


def for_status(status: int, detail: str = "") -> ApiProblem:
    slug, title = _SLUGS.get(status, ("error", "Error"))
    return ApiProblem(status, slug, title, detail)
