"""What a route reads and answers, declared beside its handler.

``@documented(...)`` (placed under the blueprint's route decorator) attaches a
``RouteDoc`` to the handler. Two things read it: the edge guard
(api/guards.py: which media types a route's body may have) and the OpenAPI
document (api/openapi.py: request and response schemas, query parameters,
the problem types the route itself can give). ``api/openapi.py`` refuses to
build a document while any registered route lacks one, so no route can be
left out.

Must never: be read to decide anything but those two things.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

JSON = "application/json"
TEXT = "text/plain"
ATTR = "route_doc"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Param:
    """A query parameter (an integer: the only kind the API has)."""

    name: str
    description: str
    minimum: int
    maximum: int
    default: int | None = None


@dataclass(frozen=True)
class Answer:
    """One response: its status, what it means, the type of its body (a
    tuple: any one of them)."""

    status: int
    description: str
    type: Any = None
    media: str = JSON


@dataclass(frozen=True)
class RouteDoc:
    summary: str
    answers: tuple[Answer, ...]
    # The type of the JSON request body, or None: the route reads no body.
    body: Any = None
    # Media types the body may have besides ``application/json`` and
    # ``application/*+json`` (observations: NDJSON).
    extra_media: tuple[str, ...] = ()
    # A body may be absent (it then reads as the type's defaults).
    body_optional: bool = False
    params: tuple[Param, ...] = ()
    # (status, problem slug) the route itself can give, besides those every
    # route of its kind can (api/openapi.py adds them).
    problems: tuple[tuple[int, str], ...] = ()
    # Commits to the store: it can also be refused for storage or draining.
    writes: bool = False
    tags: tuple[str, ...] = field(default=())


def documented(doc: RouteDoc) -> Callable[[F], F]:
    def attach(fn: F) -> F:
        setattr(fn, ATTR, doc)
        return fn

    return attach


def doc_of(view: Callable[..., Any] | None) -> RouteDoc | None:
    found = getattr(view, ATTR, None)
    return found if isinstance(found, RouteDoc) else None
