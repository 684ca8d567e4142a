"""The API's error mapping: each kind of knhkd/errors.py, and each package's
exception the routes let through, answers with the status, problem type,
title and headers it answered with before the hierarchy existed."""

from __future__ import annotations

import msgspec
import pytest
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.exceptions import NotFound as NoRoute

from knhkd import errors
from knhkd.api.problems import (
    INTERNAL_DETAIL,
    MAX_ERRORS,
    InvalidParameter,
    InvalidProposal,
    MalformedJson,
    NotReady,
    problem_for,
)
from knhkd.execute.promotion import RollbackRefused
from knhkd.governance import relaxation
from knhkd.loop.cycle import CycleFailed
from knhkd.loop.daemon import NotFound
from knhkd.loop.ingest import Closed, Overloaded
from knhkd.loop.knowledge_state import SnapshotConflict
from knhkd.loop.startup import StartupError
from knhkd.loop.writer import CommitFailed, WriterClosed
from knhkd.model import FieldError
from knhkd.monitor.decode import DecodeFailed, decode_body, decode_detect
from knhkd.monitor.shapes import ShaclRejected
from knhkd.receipts.keyring import RotationError
from knhkd.receipts.merkle import ProofError

KIND_STATUS = {
    errors.KnhkdError: (500, "internal-error"),
    errors.Malformed: (400, "bad-request"),
    errors.Unauthorized: (401, "unauthorized"),
    errors.Forbidden: (403, "forbidden"),
    errors.NotFound: (404, "not-found"),
    errors.Conflict: (409, "conflict"),
    errors.PayloadTooLarge: (413, "payload-too-large"),
    errors.UnsupportedMediaType: (415, "unsupported-media-type"),
    errors.Invalid: (422, "invalid"),
    errors.TooManyRequests: (429, "too-many-requests"),
    errors.Unavailable: (503, "unavailable"),
    errors.StorageFull: (507, "storage-full"),
}


def test_the_table_covers_every_kind() -> None:
    assert set(KIND_STATUS) == set(errors.KINDS)


@pytest.mark.parametrize("kind", errors.KINDS, ids=lambda k: k.__name__)
def test_each_kind_answers_with_its_status_and_type(kind: type[errors.KnhkdError]) -> None:
    status, slug = KIND_STATUS[kind]
    problem, headers = problem_for(kind("what happened"))
    assert (problem.status, problem.type) == (status, f"urn:knhkd:problem:{slug}")
    assert problem.title == kind.title
    # 401 always says how to authenticate (RFC 6750); 429 when to come back.
    assert headers == {
        errors.Unauthorized: {"WWW-Authenticate": 'Bearer realm="knhkd"'},
        errors.TooManyRequests: {"Retry-After": "1"},
    }.get(kind, {})
    # An error raised as the base kind is internal: its text stays in the log.
    assert problem.detail == (INTERNAL_DETAIL if kind is errors.KnhkdError else "what happened")


def test_an_unknown_exception_is_an_internal_error() -> None:
    problem, headers = problem_for(KeyError("secret internals"))
    assert (problem.status, problem.type) == (500, "urn:knhkd:problem:internal-error")
    assert problem.detail == INTERNAL_DETAIL and headers == {}


def test_an_error_that_names_no_problem_of_its_own_is_internal() -> None:
    class Oops(errors.KnhkdError):
        pass

    problem, _ = problem_for(Oops("secret internals"))
    assert (problem.status, problem.detail) == (500, INTERNAL_DETAIL)


def test_werkzeug_errors_by_status() -> None:
    assert problem_for(NoRoute())[0].type == "urn:knhkd:problem:not-found"
    assert problem_for(MethodNotAllowed())[0].status == 405


def _decode_failure(body: bytes, ctype: str = "application/json", n: int = 10) -> DecodeFailed:
    with pytest.raises(DecodeFailed) as info:
        decode_body(body, ctype, max_items=n)
    return info.value


OBS = b'{"event_type":"x","sector":"finance","value":1,"metadata":{}}'
ITEM = FieldError(field="$.sector", message="bad")

# (raised, status, problem slug, title, detail, Retry-After): what each route
# answered with before the hierarchy (api/http.py's catch clauses).
CASES: list[tuple[BaseException, int, str, str, str, str | None]] = [
    (_decode_failure(b"{nope"), 400, "malformed-json", "Malformed JSON", "", None),
    (_decode_failure(b""), 400, "malformed-json", "Empty body", "", None),
    (_decode_failure(b"[]"), 422, "invalid-observation", "Empty batch", "", None),
    (
        _decode_failure(b'{"sector":"mars"}'),
        422,
        "invalid-observation",
        "Invalid observation",
        "",
        None,
    ),
    (
        _decode_failure(b"[" + OBS + b"," + OBS + b"]", n=1),
        413,
        "batch-too-large",
        "Batch too large",
        "2 observations in one request; the limit is 1",
        None,
    ),
    (
        ShaclRejected([ITEM], 1, 2),
        422,
        "shacl-violation",
        "Observations violate their sector's shapes",
        "1 of 2 observation(s) violate their sector's shapes; none was stored",
        None,
    ),
    (
        Overloaded("the ingest queue is full"),
        503,
        "overloaded",
        "Overloaded",
        "the ingest queue is full",
        "1",
    ),
    (
        Closed("knhkd is shutting down"),
        503,
        "draining",
        "Shutting down",
        "knhkd is shutting down",
        "5",
    ),
    (
        WriterClosed("the store is closing"),
        503,
        "draining",
        "Shutting down",
        "the store is closing",
        "5",
    ),
    (
        CommitFailed("write transaction failed: disk"),
        503,
        "storage-unavailable",
        "Storage unavailable",
        "nothing was stored: write transaction failed: disk",
        "5",
    ),
    (
        NotFound("no observation 'x'", title="Observation not found"),
        404,
        "not-found",
        "Observation not found",
        "no observation 'x'",
        None,
    ),
    (RollbackRefused("genesis"), 409, "rollback-refused", "Rollback refused", "genesis", None),
    (SnapshotConflict("stale"), 409, "snapshot-conflict", "Snapshot conflict", "stale", None),
    (relaxation.SelfApproval("ann"), 409, "self-approval", "Relaxation refused", "ann", None),
    (relaxation.ImmutableGuard("g"), 409, "immutable-guard", "Relaxation refused", "g", None),
    (relaxation.UnknownGuard("g"), 404, "unknown-guard", "Relaxation refused", "g", None),
    (relaxation.UnknownRelaxation("r"), 404, "unknown-relaxation", "Relaxation refused", "r", None),
    (relaxation.MissingIdentity("who"), 422, "missing-identity", "Relaxation refused", "who", None),
    (
        CycleFailed("cycle c failed: x"),
        500,
        "cycle-failed",
        "Cycle failed",
        "cycle c failed: x",
        None,
    ),
    (
        ProofError("index 9 >= size 3"),
        400,
        "invalid-proof-request",
        "No such proof",
        "index 9 >= size 3",
        None,
    ),
    (
        InvalidParameter("limit must be an integer"),
        400,
        "invalid-parameter",
        "Invalid query parameter",
        "limit must be an integer",
        None,
    ),
    (MalformedJson("x"), 400, "malformed-json", "Malformed JSON", "x", None),
    (
        InvalidProposal("$.sector: bad", [ITEM]),
        422,
        "invalid-proposal",
        "Invalid proposal",
        "$.sector: bad",
        None,
    ),
    (
        NotReady("knhkd is starting or draining"),
        503,
        "not-ready",
        "Not ready",
        "knhkd is starting or draining",
        None,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: type(c[0]).__name__)
def test_each_package_error_keeps_its_answer(
    case: tuple[BaseException, int, str, str, str, str | None],
) -> None:
    exc, status, slug, title, detail, retry_after = case
    problem, headers = problem_for(exc)
    assert (problem.status, problem.type, problem.title) == (
        status,
        f"urn:knhkd:problem:{slug}",
        title,
    )
    if detail:
        assert problem.detail == detail
    assert headers.get("Retry-After") == retry_after


def test_detect_refusals_name_the_same_problems() -> None:
    with pytest.raises(DecodeFailed) as malformed:
        decode_detect(b"{nope")
    with pytest.raises(DecodeFailed) as invalid:
        decode_detect(b'{"a": 1}')
    assert problem_for(malformed.value)[0].type == "urn:knhkd:problem:malformed-json"
    assert problem_for(invalid.value)[0].type == "urn:knhkd:problem:invalid-observation"


def test_field_errors_are_listed_up_to_the_limit() -> None:
    many = [FieldError(field="$", message="bad", index=i) for i in range(MAX_ERRORS + 7)]
    problem, _ = problem_for(errors.Invalid("bad batch", many))
    assert len(problem.errors) == MAX_ERRORS and problem.errors_omitted == 7
    doc = msgspec.json.decode(msgspec.json.encode(problem))
    assert doc["errors"][0] == {"field": "$", "message": "bad", "index": 0}


def test_the_admin_line_names_a_relaxation_refusal_only() -> None:
    assert relaxation.DuplicateApproval("ben").line() == "DuplicateApproval: ben"
    assert RollbackRefused("genesis").line() == "genesis"
    assert RotationError("key k was used before").line() == "key k was used before"


def test_startup_error_keeps_its_one_line() -> None:
    exc = StartupError("storage", "locked")
    assert str(exc) == "storage: locked" and exc.step == "storage"
