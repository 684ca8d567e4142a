"""The one error hierarchy: every refusal a client can be told about.

Guarantees:
- Every error the daemon reports to a client (HTTP, admin socket, ``knhkctl``)
  is a ``KnhkdError``. Its kind (a direct subclass here) fixes the HTTP status;
  each class names its problem type, the ``urn:knhkd:problem:<problem>`` of the
  RFC 9457 document ``api/problems.py`` builds from it, and a title.
- ``detail`` is what the client is told; ``str(exc)`` is what the log says
  (the same text unless a subclass says otherwise). ``line()`` is the one line
  the admin socket answers with.
- A package raises its own exception types (``DecodeFailed``,
  ``SnapshotConflict``, ``RelaxationError`` …), each subclassing the kind it
  is; the edge (api/) maps by kind and never imports them.
- ``Invalid`` carries the offending fields; ``Unavailable`` and
  ``TooManyRequests`` the seconds after which a retry may succeed;
  ``Unauthorized`` (and ``Forbidden`` when tokens are checked) the RFC 6750
  ``WWW-Authenticate`` challenge, which never quotes the token.

Must never: import from the project (every package imports this one), or
describe an error whose cause the client cannot know about as anything but
``KnhkdError`` itself (500, ``internal-error``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from msgspec import Struct

PROBLEM_PREFIX = "urn:knhkd:problem:"


class FieldError(Struct, omit_defaults=True):
    """One offending field of a refused input (``Invalid.errors``); a wire
    record of ``Problem`` too, re-exported by ``knhkd.model``."""

    field: str
    message: str
    index: int | None = None
    # A SHACL result (ingest shapes): focus node and value as N-Triples terms,
    # the result path as a SPARQL property path, the constraint component IRI
    # and the severity's local name (Violation, Warning, Info).
    focus_node: str | None = None
    path: str | None = None
    constraint: str | None = None
    severity: str | None = None
    value: str | None = None


class KnhkdError(Exception):
    """Base of every reported error. Raised as itself it is an internal error:
    500 ``internal-error``, whose detail is not shown to HTTP clients."""

    status: ClassVar[int] = 500
    problem: ClassVar[str] = "internal-error"
    # A class default an instance may replace (``title=``): the same kind of
    # error reads "Observation not found" on one route and "Proposal not
    # found" on another.
    title: str = "Internal error"
    errors: Sequence[FieldError] = ()
    retry_after: int | None = None
    # The ``WWW-Authenticate`` header of a 401 (or 403) answer, when there is one.
    www_authenticate: str | None = None

    def __init__(self, detail: str = "", *, title: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if title is not None:
            self.title = title

    @property
    def problem_type(self) -> str:
        return PROBLEM_PREFIX + self.problem

    def line(self) -> str:
        """The one line the admin socket (and so ``knhkctl``) shows."""
        return str(self)


class Malformed(KnhkdError):
    """The request cannot be read (not JSON, a bad parameter): 400."""

    status = 400
    problem = "bad-request"
    title = "Bad request"


class Unauthorized(KnhkdError):
    """No credentials, or credentials that do not check out: 401, with a
    ``WWW-Authenticate: Bearer`` challenge saying which (RFC 6750 §3)."""

    status = 401
    problem = "unauthorized"
    title = "Unauthorized"

    def __init__(self, detail: str = "", *, challenge: str = 'Bearer realm="knhkd"') -> None:
        super().__init__(detail)
        self.www_authenticate = challenge


class Forbidden(KnhkdError):
    """The caller may not do this: 403."""

    status = 403
    problem = "forbidden"
    title = "Forbidden"


class PrincipalMismatch(Forbidden):
    """A body names someone other than the authenticated caller (an approver,
    an actor, a signer): 403. A decision is taken by, and signed for, the
    caller only."""

    problem = "principal-mismatch"
    title = "Principal mismatch"


class NotFound(KnhkdError):
    """The named record does not exist: 404."""

    status = 404
    problem = "not-found"
    title = "Not found"


class Conflict(KnhkdError):
    """The request contradicts the current state (a stale snapshot, a rule of
    the relaxation state machine): 409. Nothing was changed."""

    status = 409
    problem = "conflict"
    title = "Conflict"


class PayloadTooLarge(KnhkdError):
    """The body, or the batch it holds, is over its limit: 413."""

    status = 413
    problem = "payload-too-large"
    title = "Payload too large"


class UnsupportedMediaType(KnhkdError):
    """The body's media type is not one this resource reads: 415."""

    status = 415
    problem = "unsupported-media-type"
    title = "Unsupported media type"


class Invalid(KnhkdError):
    """Well-formed input that breaks a rule: 422, naming each offending field."""

    status = 422
    problem = "invalid"
    title = "Invalid input"

    def __init__(
        self,
        detail: str = "",
        errors: Sequence[FieldError] = (),
        *,
        title: str | None = None,
    ) -> None:
        super().__init__(detail, title=title)
        self.errors = list(errors)


class TooManyRequests(KnhkdError):
    """The caller is over its rate limit: 429; nothing was done, retry after
    ``retry_after`` seconds."""

    status = 429
    problem = "too-many-requests"
    title = "Too many requests"

    def __init__(self, detail: str = "", *, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class Unavailable(KnhkdError):
    """Not now (overloaded, shutting down, storage failing): 503; nothing was
    done, and the request may be retried after ``retry_after`` seconds."""

    status = 503
    problem = "unavailable"
    title = "Service unavailable"


class StorageFull(KnhkdError):
    """The store cannot grow to hold the request: 507; nothing was stored."""

    status = 507
    problem = "storage-full"
    title = "Insufficient storage"


class ReadOnly(Unavailable):
    """The store takes no writes until an operator acts (damage found at start,
    see loop/write_gate.py): 503 naming the finding; reads keep working."""

    problem = "read-only"
    title = "Store is read-only"


# The kinds, for the edges that map them and the tests that check the mapping.
KINDS: tuple[type[KnhkdError], ...] = (
    KnhkdError,
    Malformed,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    Invalid,
    TooManyRequests,
    Unavailable,
    StorageFull,
)
