"""What every route module shares: the daemon of the running app, JSON
answers, query parameters and the raw body.

Guarantees: ``front()`` is the ``Front`` ``create_app`` was given, and
``daemon()`` the ``Daemon`` (a ``TypeError`` otherwise, never a wrong object;
api/context.py); a bad query parameter is 400
``invalid-parameter`` naming it.
"""

from __future__ import annotations

import base64
from typing import Any, TypeVar

import msgspec
from quart import Response, request

from knhkd.api.context import DAEMON_KEY as DAEMON_KEY  # noqa: PLC0414
from knhkd.api.context import current_principal as current_principal  # noqa: PLC0414
from knhkd.api.context import daemon as daemon  # noqa: PLC0414
from knhkd.api.context import front as front  # noqa: PLC0414
from knhkd.api.problems import InvalidParameter, InvalidRequestBody, MalformedJson
from knhkd.errors import PrincipalMismatch
from knhkd.model import FieldError, Principal, encode_json
from knhkd.monitor.decode import field_of

T = TypeVar("T")

JSON = "application/json"
def acting_as(named: str, field: str) -> Principal:
    """The caller, who takes a decision a body may name (``approver``,
    ``actor`` …): an empty name is the caller; any other than the caller's
    ``Principal.name`` is 403 ``principal-mismatch`` (nothing is done)."""
    principal = current_principal()
    if named and named != principal.name:
        raise PrincipalMismatch(
            f"{field} {named[:256]!r} is not the caller {principal.name!r}: "
            "a decision is taken as the authenticated caller (omit the name)"
        )
    return principal


def json(obj: Any, status: int = 200) -> Response:
    return Response(encode_json(obj), status=status, content_type=JSON)


def int_arg(name: str, default: int, *, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidParameter(f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise InvalidParameter(f"{name} must be between {lo} and {hi}")
    return value


def b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


async def body() -> bytes:
    data = await request.get_data(cache=False, as_text=False)
    return data if isinstance(data, bytes) else data.encode()


async def decode_json(
    decoder: msgspec.json.Decoder[T],
    invalid: type[InvalidRequestBody] = InvalidRequestBody,
    *,
    deep_field: str = "$",
    empty: bytes | None = None,
) -> T:
    """The body decoded as ``decoder``'s type: 400 ``malformed-json`` when it
    is not JSON, 422 (``invalid``'s problem type) naming the field when it is
    not that type, never anything else. An empty body reads as ``empty``
    when given."""
    raw = await body()
    try:
        return decoder.decode(raw if raw or empty is None else empty)
    except msgspec.ValidationError as exc:
        field, msg = field_of(exc)
        raise invalid(f"{field}: {msg}", [FieldError(field=field, message=msg)]) from None
    except msgspec.DecodeError as exc:
        raise MalformedJson(str(exc)) from None
    except RecursionError:
        # Only a member a type ignores (an unknown key of a struct that allows
        # them, ``deep_field``) can nest this deep: typed fields refuse sooner.
        raise invalid(
            f"{deep_field}: nested too deeply",
            [FieldError(field=deep_field, message="nested too deeply")],
        ) from None
