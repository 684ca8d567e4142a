"""Decoding producer input into ``ObservationIn`` records: decoding is validation.

Guarantees:
- A body is accepted whole or not at all: one bad item rejects the batch, and
  every bad item is reported with its index and the offending field.
- Three shapes are understood: one JSON object, a JSON array of objects, and
  NDJSON (one object per line; selected by the content type
  ``application/x-ndjson`` or ``application/jsonl``).
- Limits are enforced here (item count; the sizes of ``[limits]``: each
  string and the members of each array/object in ``value``, ``metadata``
  entries, ``rdf.data`` characters), the body size by the HTTP layer; a
  violation is a 422 field error naming the path.
- Every accepted ``value`` can be stored and read back unchanged: each integer
  in it is within int64 (-2**63 .. 2**63-1, what MessagePack and the C codec
  hold), each float is finite, and it nests at most ``MAX_VALUE_DEPTH`` (32)
  arrays/objects deep. A violation is a 422 field error naming the path under
  ``$.value`` (and the item's index in a batch), never a 500 at commit time.
- No body makes decoding raise anything but ``DecodeFailed``: JSON nested
  deeper than msgspec's recursion limit is refused as ``$.value`` too deep (an
  object cannot recurse through any other field), and every check here is
  iterative, so it cannot itself exhaust the stack.

Must never: read the clock, touch storage, or accept unknown fields.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from knhkd.config import LimitsConfig
from knhkd.errors import Invalid, KnhkdError, Malformed, PayloadTooLarge
from knhkd.model import FieldError, ObservationIn

NDJSON_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/json-seq"})

_item_decoder = msgspec.json.Decoder(ObservationIn)
_raw_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Arrays/objects nested in one observation's value, at most (a scalar is 0,
# ``[1]`` is 1). Far below msgspec's recursion limit (~1000 levels, less on a
# deep stack), and deeper than any structured reading a producer sends.
MAX_VALUE_DEPTH = 32

TOO_DEEP = f"nested deeper than {MAX_VALUE_DEPTH} arrays/objects"
INT_RANGE = f"integer out of range (int64: {INT64_MIN}..{INT64_MAX})"
DEFAULT_LIMITS = LimitsConfig()


class DecodeFailed(KnhkdError):
    """The body was refused; nothing of it was stored. Raised as one of its
    kinds below, whose ``status`` is the HTTP status that fits."""

    def __init__(self, title: str, detail: str, errors: Sequence[FieldError] = ()) -> None:
        super().__init__(detail, title=title)
        self.errors = list(errors)


class MalformedBody(DecodeFailed, Malformed):
    """Not JSON (or NDJSON) at all: 400."""

    problem = "malformed-json"


class InvalidBody(DecodeFailed, Invalid):
    """JSON, but not observations: 422 naming each offending field."""

    problem = "invalid-observation"


class BatchTooLarge(DecodeFailed, PayloadTooLarge):
    """More observations in one request than ``http.max_batch_items``: 413."""

    problem = "batch-too-large"

    def __init__(self, detail: str) -> None:
        super().__init__("Batch too large", detail)


@dataclass(frozen=True)
class Decoded:
    items: list[ObservationIn]
    # True when the body was one JSON object: the answer then carries one id.
    single: bool


def field_of(exc: msgspec.ValidationError) -> tuple[str, str]:
    text = str(exc)
    msg, sep, where = text.rpartition(" - at `")
    if not sep:
        return "$", text
    where = where.rstrip("`")
    # msgspec names a bad map key "key` in `$.metadata": the field is the map.
    key, sep, where_map = where.partition("` in `")
    if sep and key == "key":
        return where_map, f"{msg} (a key)"
    return where, msg


def _path(node: tuple[Any, ...]) -> str:
    # ``node`` is (parent, segment) linked back to (): built per child only as
    # a pair, the string only for the one error reported.
    parts: list[str] = []
    while node:
        node, seg = node
        parts.append(seg)
    return "$.value" + "".join(reversed(parts))


def value_problem(value: Any, limits: LimitsConfig = DEFAULT_LIMITS) -> tuple[str, str] | None:
    """(field, message) of the first part of ``value`` (in document order) that
    cannot be stored as given or is over ``limits``, else None. Iterative: a
    value of any depth costs at most MAX_VALUE_DEPTH levels of stack-free work
    before it is refused."""
    t = type(value)
    if t is bool or value is None:
        return None
    max_str = limits.value_max_string_length
    max_members = limits.value_max_members
    long_str = f"string longer than {max_str} characters"
    stack: list[tuple[Any, int, tuple[Any, ...]]] = [(value, 0, ())]
    while stack:
        node, depth, where = stack.pop()
        t = type(node)
        if t is str:
            if len(node) > max_str:
                return _path(where), long_str
        elif t is int:
            if not INT64_MIN <= node <= INT64_MAX:
                return _path(where), INT_RANGE
        elif t is float:
            # msgspec already refuses 1e999 ("Number out of range"); kept so
            # the guarantee does not rest on that.
            if not math.isfinite(node):
                return _path(where), "number must be finite"
        elif t is list or t is dict:
            if depth >= MAX_VALUE_DEPTH:
                return _path(where), TOO_DEEP
            if len(node) > max_members:
                return _path(where), f"more than {max_members} members"
            # Dict members are named ``[...]`` as msgspec names them.
            if t is list:
                children = [(c, (where, f"[{i}]")) for i, c in enumerate(node)]
            else:
                for key in node:
                    if len(key) > max_str:
                        return _path(where), f"object key longer than {max_str} characters"
                children = [(c, (where, "[...]")) for c in node.values()]
            stack.extend((c, depth + 1, w) for c, w in reversed(children))
        elif not (t is bool or node is None):
            return _path(where), f"unsupported type {t.__name__}"
    return None


def item_problem(item: ObservationIn, limits: LimitsConfig) -> tuple[str, str] | None:
    """(field, message) of the first part of a decoded observation over
    ``limits`` (or not storable), else None."""
    if len(item.metadata) > limits.metadata_max_entries:
        return "$.metadata", f"more than {limits.metadata_max_entries} entries"
    if item.rdf is not None and len(item.rdf.data) > limits.rdf_max_length:
        return "$.rdf.data", f"longer than {limits.rdf_max_length} characters"
    return value_problem(item.value, limits)


def _decode_item(
    raw: bytes | msgspec.Raw, index: int | None, limits: LimitsConfig
) -> ObservationIn | FieldError:
    try:
        item = _item_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        field, msg = field_of(exc)
        return FieldError(field=field, message=msg, index=index)
    except msgspec.DecodeError as exc:
        return FieldError(field="$", message=f"malformed JSON: {exc}", index=index)
    except RecursionError:
        # Only ``value`` (Any) can recurse: every other field is typed and
        # refuses an array at its first level, and unknown fields are refused
        # at their key, before their value is read.
        return FieldError(field="$.value", message=TOO_DEEP, index=index)
    problem = item_problem(item, limits)
    if problem is not None:
        return FieldError(field=problem[0], message=problem[1], index=index)
    return item


_STRUCTURAL = re.compile(rb'[\[\]{},"]')


def _string_end(body: bytes, i: int) -> int:
    """Index just past the string opening at ``body[i]``, -1 if unterminated."""
    j = i + 1
    while True:
        j = body.find(b'"', j)
        if j < 0:
            return -1
        k = j - 1
        while body[k] == 0x5C:  # a run of backslashes, each run counted once
            k -= 1
        if (j - 1 - k) % 2 == 0:
            return j + 1
        j += 1


def split_array(body: bytes) -> list[bytes] | None:
    """The raw items of a top-level JSON array, without recursion; None if it
    is not one array. Only used when msgspec's own split hit its recursion
    limit, so that each item can still be judged (and named) on its own.
    Linear in the body: every byte is looked at a bounded number of times."""
    items: list[bytes] = []
    depth = 0
    start = -1
    pos = 0
    while True:
        m = _STRUCTURAL.search(body, pos)
        if m is None:
            return None
        i = m.start()
        c = body[i]
        pos = i + 1
        if c == 0x22:  # '"'
            pos = _string_end(body, i)
            if pos < 0:
                return None
            continue
        if depth == 0:
            if c != 0x5B or body[:i].strip():
                return None
            depth, start = 1, i + 1
        elif c in b"[{":
            depth += 1
        elif c in b"]}":
            depth -= 1
            if depth == 0:
                last = body[start:i]
                if last.strip() or items:
                    items.append(last)
                return None if body[i + 1 :].strip() else items
        elif c == 0x2C and depth == 1:  # ','
            items.append(body[start:i])
            start = i + 1


def _collect(
    raws: list[bytes] | list[msgspec.Raw], max_items: int, limits: LimitsConfig
) -> Decoded:
    if not raws:
        raise InvalidBody("Empty batch", "the batch holds no observation")
    if len(raws) > max_items:
        raise BatchTooLarge(f"{len(raws)} observations in one request; the limit is {max_items}")
    items: list[ObservationIn] = []
    errors: list[FieldError] = []
    for i, raw in enumerate(raws):
        got = _decode_item(raw, i, limits)
        if isinstance(got, FieldError):
            errors.append(got)
        else:
            items.append(got)
    if errors:
        raise InvalidBody(
            "Invalid observations",
            f"{len(errors)} of {len(raws)} observations are invalid; none was stored",
            errors,
        )
    return Decoded(items, single=False)


def _split(body: bytes) -> list[bytes] | list[msgspec.Raw]:
    try:
        return _raw_list_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedBody("Malformed JSON", f"the body is not a JSON array: {exc}") from None
    except RecursionError:
        pass
    raws = split_array(body)
    if raws is None:
        raise MalformedBody("Malformed JSON", "the body is not a JSON array")
    return raws


def decode_detect(body: bytes, limits: LimitsConfig = DEFAULT_LIMITS) -> list[ObservationIn]:
    """A JSON array of observations for ``/patterns/detect``: the same checks
    as ingest (an empty body or array is no observation), no item limit but
    the body size."""
    if not body.strip():
        return []
    if not body.lstrip().startswith(b"["):
        try:
            msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            raise MalformedBody("Malformed JSON", str(exc)) from None
        except RecursionError:
            pass  # well-formed or not, it is no array: 422 below
        raise InvalidBody(
            "Invalid observations",
            "expected a JSON array of observations",
            [FieldError(field="$", message="expected a JSON array")],
        )
    raws = _split(body)
    if not raws:
        return []
    return _collect(raws, len(raws), limits).items


def decode_body(
    body: bytes, content_type: str, *, max_items: int, limits: LimitsConfig = DEFAULT_LIMITS
) -> Decoded:
    if content_type in NDJSON_TYPES:
        lines = [line for line in body.split(b"\n") if line.strip()]
        return _collect(lines, max_items, limits)
    stripped = body.lstrip()
    if stripped.startswith(b"["):
        return _collect(_split(body), max_items, limits)
    if not stripped:
        raise MalformedBody("Empty body", "expected a JSON object, array or NDJSON")
    got = _decode_item(body, None, limits)
    if isinstance(got, FieldError):
        if got.message.startswith("malformed JSON"):
            raise MalformedBody("Malformed JSON", f"{got.field}: {got.message}", [got])
        raise InvalidBody("Invalid observation", f"{got.field}: {got.message}", [got])
    return Decoded([got], single=True)
