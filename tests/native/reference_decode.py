"""The ring decoder in plain Python: the reference ``knhkd.hotpath.codec`` is
held to (tests only; knhkd validates and encodes records in C).

Written for obviousness, not speed: one record at a time, through
``records.decode_value`` and ``TickClock.to_datetime``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from knhkd.hotpath.codec import Rejection, check_event_codes, default_event_type
from knhkd.hotpath.records import RECORD, SECTOR_BY_CODE, InvalidRecord, decode_value
from knhkd.hotpath.tsc import TickClock
from knhkd.model import ObservationIn


@dataclass
class Decoded:
    items: list[ObservationIn] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def reference_decode(records: bytes, clock: TickClock, event_codes: dict[str, str]) -> Decoded:
    names = check_event_codes(event_codes)
    out = Decoded()
    for i, (seq, stamp, sector, event, kind, length, flags, payload) in enumerate(
        RECORD.iter_unpack(records)
    ):
        sector_name = SECTOR_BY_CODE.get(sector)
        if sector_name is None:
            out.rejected.append(Rejection(i, seq, "sector", f"unknown sector code {sector}"))
            continue
        if flags:
            out.rejected.append(Rejection(i, seq, "flags", f"reserved flags {flags:#06x}"))
            continue
        try:
            value = decode_value(kind, length, payload)
        except InvalidRecord as exc:
            out.rejected.append(Rejection(i, seq, exc.reason, str(exc)))
            continue
        out.items.append(
            ObservationIn(
                event_type=names.get(event) or default_event_type(event),
                sector=sector_name,
                value=value,
                event_time=clock.to_datetime(stamp) if stamp else None,
            )
        )
    return out
