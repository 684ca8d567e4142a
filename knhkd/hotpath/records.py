"""The 64-byte ring record in Python: codes, packing, and value decoding.

The layout is ``struct knhk_record`` of ``native/include/knhk_ring.h``, in host
byte order (the ring never leaves its host)::

    seq u64 | tsc u64 | sector u16 | event u16 | kind u8 | len u8 | flags u16 | payload 40 B

Guarantees:
- ``encode_value`` accepts None, an int (signed 64-bit), a finite float, a list
  or tuple of 0–5 numbers (float64 when any is a float), a str of at most 40
  UTF-8 bytes, bytes of at most 40; ``decode_value`` gives each back as the JSON
  value it stands for: equal for None, ints, floats, str and lists of ints or
  of floats (a one-element list stays a list: arrays have their own kinds); a
  tuple comes back as a list, a mixed list as floats, bytes as a lowercase hex
  string (the only JSON form of bytes).
- ``decode_value`` accepts exactly the payloads the header documents and names
  what is wrong with any other (``InvalidRecord.reason``, a short fixed code):
  it is the ring's half of "decoding is validation".

Must never: import cffi or anything above layer 2 (pure Python, usable by a
producer that only packs records), accept a NaN or infinity (JSON has none), or
a bool (it would come back as an int).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

from knhkd.model import SECTORS, Sector

RECORD_SIZE: Final = 64
PAYLOAD_BYTES: Final = 40
PAYLOAD_WORDS: Final = 5

# seq, tsc, sector, event, kind, len, flags, payload ("=": host order, no padding).
RECORD: Final = struct.Struct("=QQHHBBH40s")
assert RECORD.size == RECORD_SIZE

# enum knhk_sector: 0 is invalid so that a zeroed record is refused.
SECTOR_CODES: Final[Mapping[Sector, int]] = {
    "finance": 1,
    "healthcare": 2,
    "manufacturing": 3,
    "logistics": 4,
    "generic": 5,
}
SECTOR_BY_CODE: Final[Mapping[int, Sector]] = {c: s for s, c in SECTOR_CODES.items()}
assert set(SECTOR_CODES) == set(SECTORS)

# enum knhk_value_kind
KIND_NONE: Final = 0
KIND_I64: Final = 1
KIND_F64: Final = 2
KIND_TEXT: Final = 3
KIND_BYTES: Final = 4
KIND_I64_ARRAY: Final = 5
KIND_F64_ARRAY: Final = 6

_I64 = [struct.Struct(f"={n}q") for n in range(PAYLOAD_WORDS + 1)]
_F64 = [struct.Struct(f"={n}d") for n in range(PAYLOAD_WORDS + 1)]
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_EMPTY = bytes(PAYLOAD_BYTES)


class InvalidRecord(ValueError):
    """A record (or a value to pack) that the ring format cannot carry.

    ``reason`` is a short fixed code (``sector``, ``kind``, ``len``, ``flags``,
    ``nonfinite``, ``utf8``, ``value``); the message says more.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def sector_code(sector: str) -> int:
    try:
        return SECTOR_CODES[sector]  # type: ignore[index]
    except KeyError:
        raise InvalidRecord("sector", f"unknown sector {sector!r}") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def encode_value(value: Any) -> tuple[int, int, bytes]:
    """(kind, len, payload) for ``value``; raises ``InvalidRecord`` if it does not fit."""
    if value is None:
        return KIND_NONE, 0, _EMPTY
    if isinstance(value, bool):
        raise InvalidRecord("value", "a bool has no ring encoding; send 0 or 1")
    if isinstance(value, int):
        if not _I64_MIN <= value <= _I64_MAX:
            raise InvalidRecord("value", f"{value} does not fit in a signed 64-bit integer")
        return KIND_I64, 1, _I64[1].pack(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRecord("nonfinite", f"{value} is not a finite number")
        return KIND_F64, 1, _F64[1].pack(value)
    if isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) > PAYLOAD_BYTES:
            raise InvalidRecord("len", f"text of {len(raw)} UTF-8 bytes; at most {PAYLOAD_BYTES}")
        return KIND_TEXT, len(raw), raw
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        if len(raw) > PAYLOAD_BYTES:
            raise InvalidRecord("len", f"{len(raw)} bytes; at most {PAYLOAD_BYTES}")
        return KIND_BYTES, len(raw), raw
    if isinstance(value, list | tuple):
        n = len(value)
        if n > PAYLOAD_WORDS:
            raise InvalidRecord("len", f"a list of {n} numbers; at most {PAYLOAD_WORDS} fit")
        if all(_is_int(v) for v in value):
            if not all(_I64_MIN <= v <= _I64_MAX for v in value):
                raise InvalidRecord("value", "a list element does not fit in 64 bits")
            return KIND_I64_ARRAY, n, _I64[n].pack(*value)
        if all(_is_int(v) or isinstance(v, float) for v in value):
            floats = [float(v) for v in value]
            if not all(math.isfinite(v) for v in floats):
                raise InvalidRecord("nonfinite", "a list element is not a finite number")
            return KIND_F64_ARRAY, n, _F64[n].pack(*floats)
        raise InvalidRecord("value", "a list must hold only numbers")
    raise InvalidRecord("value", f"a {type(value).__name__} has no ring encoding")


def pack_record(sector: int, event: int, value: Any = None, tsc: int = 0) -> bytes:
    """One 64-byte record; ``seq`` is left 0 (append assigns it)."""
    kind, length, payload = encode_value(value)
    return RECORD.pack(0, tsc, sector, event, kind, length, 0, payload)


def pack_into(buf: bytearray, offset: int, sector: int, event: int, value: Any, tsc: int) -> None:
    kind, length, payload = encode_value(value)
    RECORD.pack_into(buf, offset, 0, tsc, sector, event, kind, length, 0, payload)


_F64_PACK = _F64[1].pack
_I64_PACK = _I64[1].pack


def pack_many(buf: bytearray, records: Sequence[Sequence[Any]]) -> None:
    """Pack ``(sector, event, value[, tsc])`` records into ``buf`` back to back.

    A float or int value takes an inlined path (a Python call per record costs
    as much as the packing); anything else goes through ``encode_value``.
    """
    pack = RECORD.pack_into
    off = 0
    for rec in records:
        if len(rec) == 4:
            sector, event, value, tsc = rec
        else:
            sector, event, value = rec
            tsc = 0
        t = type(value)
        if t is float and value - value == 0.0:
            pack(buf, off, 0, tsc, sector, event, KIND_F64, 1, 0, _F64_PACK(value))
        elif t is int and _I64_MIN <= value <= _I64_MAX:
            pack(buf, off, 0, tsc, sector, event, KIND_I64, 1, 0, _I64_PACK(value))
        else:
            pack_into(buf, off, sector, event, value, tsc)
        off += RECORD_SIZE


def decode_value(kind: int, length: int, payload: bytes) -> Any:
    """The JSON value of a payload; raises ``InvalidRecord`` naming the fault."""
    if kind == KIND_F64:
        if length != 1:
            raise InvalidRecord("len", f"F64 with len {length}")
        f = _F64[1].unpack_from(payload)[0]
        if not math.isfinite(f):
            raise InvalidRecord("nonfinite", f"F64 payload holds {f}")
        return f
    if kind == KIND_I64:
        if length != 1:
            raise InvalidRecord("len", f"I64 with len {length}")
        return _I64[1].unpack_from(payload)[0]
    if kind == KIND_TEXT:
        if length > PAYLOAD_BYTES:
            raise InvalidRecord("len", f"TEXT with len {length}")
        try:
            return payload[:length].decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRecord("utf8", "TEXT payload is not valid UTF-8") from None
    if kind == KIND_F64_ARRAY:
        if length > PAYLOAD_WORDS:
            raise InvalidRecord("len", f"F64_ARRAY with len {length}")
        floats = _F64[length].unpack_from(payload)
        for v in floats:
            if not math.isfinite(v):
                raise InvalidRecord("nonfinite", f"F64_ARRAY payload holds {v}")
        return list(floats)
    if kind == KIND_I64_ARRAY:
        if length > PAYLOAD_WORDS:
            raise InvalidRecord("len", f"I64_ARRAY with len {length}")
        return list(_I64[length].unpack_from(payload))
    if kind == KIND_NONE:
        if length != 0:
            raise InvalidRecord("len", f"NONE with len {length}")
        return None
    if kind == KIND_BYTES:
        if length > PAYLOAD_BYTES:
            raise InvalidRecord("len", f"BYTES with len {length}")
        return payload[:length].hex()
    raise InvalidRecord("kind", f"unknown value kind {kind}")
