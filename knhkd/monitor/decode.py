"""Decoding producer input into ``ObservationIn`` records: decoding is validation.

Guarantees:
- A body is accepted whole or not at all: one bad item rejects the batch, and
  every bad item is reported with its index and the offending field.
- Three shapes are understood: one JSON object, a JSON array of objects, and
  NDJSON (one object per line; selected by the content type
  ``application/x-ndjson`` or ``application/jsonl``).
- Limits are enforced here (item count), the body size by the HTTP layer.

Must never: read the clock, touch storage, or accept unknown fields.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from knhkd.model import FieldError, ObservationIn

NDJSON_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/json-seq"})

_item_decoder = msgspec.json.Decoder(ObservationIn)
_raw_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])


class DecodeFailed(Exception):
    """The body was refused. ``status`` is the HTTP status that fits."""

    def __init__(self, status: int, title: str, detail: str, errors: list[FieldError]) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors


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
    return where.rstrip("`"), msg


def _decode_item(raw: bytes | msgspec.Raw, index: int | None) -> ObservationIn | FieldError:
    try:
        return _item_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        field, msg = field_of(exc)
        return FieldError(field=field, message=msg, index=index)
    except msgspec.DecodeError as exc:
        return FieldError(field="$", message=f"malformed JSON: {exc}", index=index)


def _collect(raws: list[bytes] | list[msgspec.Raw], max_items: int) -> Decoded:
    if not raws:
        raise DecodeFailed(422, "Empty batch", "the batch holds no observation", [])
    if len(raws) > max_items:
        raise DecodeFailed(
            413,
            "Batch too large",
            f"{len(raws)} observations in one request; the limit is {max_items}",
            [],
        )
    items: list[ObservationIn] = []
    errors: list[FieldError] = []
    for i, raw in enumerate(raws):
        got = _decode_item(raw, i)
        if isinstance(got, FieldError):
            errors.append(got)
        else:
            items.append(got)
    if errors:
        raise DecodeFailed(
            422,
            "Invalid observations",
            f"{len(errors)} of {len(raws)} observations are invalid; none was stored",
            errors,
        )
    return Decoded(items, single=False)


def decode_body(body: bytes, content_type: str, *, max_items: int) -> Decoded:
    if content_type in NDJSON_TYPES:
        lines = [line for line in body.split(b"\n") if line.strip()]
        return _collect(lines, max_items)
    stripped = body.lstrip()
    if stripped.startswith(b"["):
        try:
            raws = _raw_list_decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise DecodeFailed(
                400, "Malformed JSON", f"the body is not a JSON array: {exc}", []
            ) from None
        return _collect(raws, max_items)
    if not stripped:
        raise DecodeFailed(400, "Empty body", "expected a JSON object, array or NDJSON", [])
    got = _decode_item(body, None)
    if isinstance(got, FieldError):
        status = 400 if got.message.startswith("malformed JSON") else 422
        title = "Malformed JSON" if status == 400 else "Invalid observation"
        raise DecodeFailed(status, title, f"{got.field}: {got.message}", [got])
    return Decoded([got], single=True)
