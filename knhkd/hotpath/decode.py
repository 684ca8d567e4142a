"""Drained ring records → ``ObservationIn``: the ring's "decoding is validation".

A record becomes the observation
``{event_type: <name of its event code>, sector: <name of its sector code>,
value: <its payload>, metadata: {}, event_time: <its tick stamp as UTC time>}``.

Event codes map through ``[ring] event_codes`` (code → event type); a code not
listed there becomes the event type ``ring.<code>`` (e.g. ``ring.42``), so a
producer needs no registration and an operator can name codes later. A name
from the table is checked against ``model.EventType`` when the decoder is
built, so every event type produced is one HTTP ingest would accept too.

Guarantees:
- Each record is accepted or refused on its own (a ring record has no request
  to fail with it); a refused record is reported with its index, its lane
  sequence, a short reason code and a message, and is never stored.
- Refused: an unknown sector code (0 included, so a zeroed record is refused),
  nonzero reserved flags, an unknown value kind, a length outside the kind's
  bounds, a NaN or infinity, TEXT that is not UTF-8.
- The tick stamp becomes ``event_time`` (UTC, rounded to the microsecond, as
  ``TickClock.to_datetime`` gives it); a stamp of 0 ("not stamped") or one
  that is not a plausible time (``TickClock.to_datetime``) gives none, and the
  record is kept: the stamp is the producer's, the ingest time is ours.

Must never: read the clock (the caller passes a ``TickClock``), touch storage,
import above layer 2.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from knhkd.hotpath.records import (
    KIND_F64,
    KIND_I64,
    RECORD,
    SECTOR_BY_CODE,
    InvalidRecord,
    decode_value,
)
from knhkd.hotpath.tsc import TickClock
from knhkd.model import EventType, ObservationIn

_F64_1 = struct.Struct("=d")
_I64_1 = struct.Struct("=q")


@dataclass(frozen=True)
class Rejection:
    index: int
    seq: int
    reason: str
    message: str


@dataclass
class Decoded:
    items: list[ObservationIn] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    # Filled by the caller when it applies SHACL shapes (monitor/ring_drain.py).
    shacl_rejected: list[Rejection] = field(default_factory=list)


def default_event_type(code: int) -> str:
    return f"ring.{code}"


def check_event_codes(event_codes: Mapping[str, str]) -> dict[int, str]:
    """The configured table as {code: event type}; ``ValueError`` naming a bad entry."""
    out: dict[int, str] = {}
    for raw_code, name in event_codes.items():
        if not raw_code.isdigit() or not 0 <= int(raw_code) <= 0xFFFF:
            raise ValueError(f"event code {raw_code!r} is not an integer from 0 to 65535")
        try:
            out[int(raw_code)] = msgspec.convert(name, EventType)
        except msgspec.ValidationError as exc:
            raise ValueError(f"event code {raw_code}: event type {name!r}: {exc}") from None
    return out


class RecordDecoder:
    def __init__(self, event_codes: Mapping[str, str]) -> None:
        self.event_codes = dict(event_codes)
        self._names = check_event_codes(event_codes)

    def event_type(self, code: int) -> str:
        name = self._names.get(code)
        if name is None:
            name = self._names[code] = default_event_type(code)
        return name

    def decode(
        self, records: memoryview | bytes, clock: TickClock, *, start: int = 0, stop: int = -1
    ) -> Decoded:
        """Decode packed records ``[start, stop)`` (all when ``stop`` is -1)."""
        size = RECORD.size
        view = memoryview(records)[start * size : None if stop < 0 else stop * size]
        out = Decoded()
        items = out.items
        names = self._names
        sectors = SECTOR_BY_CODE
        # TickClock.to_datetime, inlined (distinct stamps: one per record).
        ref_ns, ref_ticks, scale, latest_ns = clock.params()
        from_ts = datetime.fromtimestamp
        f64 = _F64_1.unpack_from
        i64 = _I64_1.unpack_from
        # Records stamped in one batch, or within one microsecond (a burst from
        # a C producer), share a time: build each distinct datetime once.
        last_tsc = 0
        last_us = -1
        last_time: datetime | None = None
        for i, (seq, tsc, sector, event, kind, length, flags, payload) in enumerate(
            RECORD.iter_unpack(view), start
        ):
            sector_name = sectors.get(sector)
            if sector_name is None:
                out.rejected.append(Rejection(i, seq, "sector", f"unknown sector code {sector}"))
                continue
            if flags:
                out.rejected.append(Rejection(i, seq, "flags", f"reserved flags {flags:#06x}"))
                continue
            # The common kinds inline (a call costs as much as the decoding).
            if kind == KIND_F64 and length == 1:
                value = f64(payload)[0]
                if value - value != 0.0:  # NaN or an infinity
                    out.rejected.append(Rejection(i, seq, "nonfinite", f"F64 payload {value}"))
                    continue
            elif kind == KIND_I64 and length == 1:
                value = i64(payload)[0]
            else:
                try:
                    value = decode_value(kind, length, payload)
                except InvalidRecord as exc:
                    out.rejected.append(Rejection(i, seq, exc.reason, str(exc)))
                    continue
            if tsc != last_tsc:
                last_tsc = tsc
                ns = ref_ns + int((tsc - ref_ticks) * scale)
                if not tsc or not 0 <= ns <= latest_ns:
                    last_time, last_us = None, -1
                elif (ns + 500) // 1000 != last_us:
                    last_us = (ns + 500) // 1000  # rounded to the microsecond
                    last_time = from_ts(last_us / 1e6, UTC)
            event_type = names.get(event)
            if event_type is None:
                event_type = self.event_type(event)
            items.append(
                ObservationIn(
                    event_type=event_type, sector=sector_name, value=value, event_time=last_time
                )
            )
        return out
