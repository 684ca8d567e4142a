"""Drained ring records → stored observations, validated and encoded in C.

A record becomes the observation
``{event_type: <name of its event code>, sector: <name of its sector code>,
value: <its payload>, metadata: {}, event_time: <its tick stamp as UTC time>}``.

Event codes map through ``[ring] event_codes`` (code → event type); a code not
listed there becomes the event type ``ring.<code>`` (e.g. ``ring.42``), so a
producer needs no registration and an operator can name codes later. A name
from the table is checked against ``model.EventType`` when the codec is built,
so every event type produced is one HTTP ingest would accept too.

The work is in ``native/src/knhk_codec.c`` (a Python decoder cost ~4 µs a
record and bounded the drain near 200,000 records/s): ``RingCodec.batch``
validates a drained batch, ``RingBatch.encode`` writes each accepted record as
the exact msgpack bytes ``msgspec`` writes for ``model.Observation`` (ids,
sequence numbers and LMDB keys included) together with each record's leaf
(SHA-256(salt || record) and its fresh 16-byte salt, the value
``observation_leaves`` stores: hashed in C, so the drain does no per-record
Python work), and ``RingBatch.inputs`` gives the accepted records as
``ObservationIn`` for the SHACL gate.

Guarantees:
- Each record is accepted or refused on its own (a ring record has no request
  to fail with it); a refused record is reported with its index in the batch,
  its lane sequence, a short reason code and a message, and is never encoded.
- Refused: an unknown sector code (0 included, so a zeroed record is refused),
  nonzero reserved flags, an unknown value kind, a length outside the kind's
  bounds, a NaN or infinity, TEXT that is not UTF-8 (the rules and messages of
  ``records.decode_value``, which explains every refusal the C check makes).
- The tick stamp becomes ``event_time`` (UTC, rounded to the microsecond, as
  ``TickClock.to_datetime`` gives it); a stamp of 0 ("not stamped") or one
  that is not a plausible time gives none, and the record is kept: the stamp
  is the producer's, the ingest time is ours.
- A ``RingBatch`` owns a copy of its records: the consumer's buffer may be
  reused as soon as ``RingCodec.batch`` returns.
- A leaf digest is byte-identical to ``hashlib.sha256(salt + record)``, what
  the HTTP path computes and fsck recomputes (tests/native/test_codec.py).

Must never: read the clock (the caller passes a ``TickClock`` and the ingest
time), touch storage, import above layer 2.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from knhkd.hotpath._ring_cffi import ffi, lib
from knhkd.hotpath.records import RECORD, SECTOR_BY_CODE, InvalidRecord, decode_value
from knhkd.hotpath.tsc import TickClock
from knhkd.model import (
    EventType,
    KeyCount,
    Observation,
    ObservationCounts,
    ObservationIn,
    Sector,
)

_MAX_RECORD: Final = int(lib.KNHK_CODEC_MAX_RECORD)
_HEADER: Final = int(lib.KNHK_CODEC_ARRAY_HEADER)
_KEY_BYTES: Final = int(lib.KNHK_CODEC_KEY_BYTES)
_LEAF_BYTES: Final = int(lib.KNHK_CODEC_LEAF_BYTES)
SALT_BYTES: Final = int(lib.KNHK_CODEC_SALT_BYTES)
DIGEST_BYTES: Final = int(lib.KNHK_CODEC_DIGEST_BYTES)
_REFUSED: Final = int(lib.KNHK_REC_REFUSED)

# enum knhk_rec_verdict → the reason codes of records.InvalidRecord.
REASONS: Final[Mapping[int, str]] = {
    int(lib.KNHK_REC_SECTOR): "sector",
    int(lib.KNHK_REC_FLAGS): "flags",
    int(lib.KNHK_REC_KIND): "kind",
    int(lib.KNHK_REC_LEN): "len",
    int(lib.KNHK_REC_NONFINITE): "nonfinite",
    int(lib.KNHK_REC_UTF8): "utf8",
}

# The buffers are written in full by C before they are read: skip the zeroing.
_alloc = ffi.new_allocator(should_clear_after_alloc=False)

_keys_decoder = msgspec.msgpack.Decoder(list[bytes])
_raw_decoder = msgspec.msgpack.Decoder(list[msgspec.Raw])
_obs_decoder = msgspec.msgpack.Decoder(list[Observation])
_inputs_decoder = msgspec.msgpack.Decoder(list[ObservationIn])


@dataclass(frozen=True)
class Rejection:
    index: int  # the record's position in its drained batch
    seq: int  # its lane sequence
    reason: str
    message: str


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


def explain(record: bytes | memoryview, index: int, verdict: int) -> Rejection:
    """Why record ``index`` of a packed batch was refused, as Python words it."""
    seq, _tsc, sector, _event, kind, length, flags, payload = RECORD.unpack_from(
        record, index * RECORD.size
    )
    reason = REASONS.get(verdict, "invalid")
    if verdict == lib.KNHK_REC_SECTOR:
        return Rejection(index, seq, reason, f"unknown sector code {sector}")
    if verdict == lib.KNHK_REC_FLAGS:
        return Rejection(index, seq, reason, f"reserved flags {flags:#06x}")
    try:
        decode_value(kind, length, payload)
    except InvalidRecord as exc:
        return Rejection(index, seq, exc.reason, str(exc))
    # Not reached while the C check and records.decode_value agree (tests hold them to it).
    return Rejection(index, seq, reason, f"refused by the native check ({reason})")


@dataclass(frozen=True)
class SectorRun:
    """Consecutive encoded records of one sector: ``blob[start:end]``."""

    sector: Sector
    first: int  # index into Encoded.records
    count: int
    start: int
    end: int


# A few records per batch are decoded alone: the ends of each sector's run
# (for receipts) and the evidence of each key (for the analyzer).
_one_decoder = msgspec.msgpack.Decoder(Observation)


@dataclass(frozen=True)
class Encoded:
    """A batch's accepted records as stored: ``keys[i]`` → ``records[i]``,
    and ``keys[i]`` → ``leaves[i]`` in ``observation_leaves``.

    ``records`` are zero-copy views (``msgspec.Raw``) into ``blob``, each the
    msgpack of one ``model.Observation``; ``runs`` give the records of one
    sector as contiguous byte ranges of ``blob``. ``leaves[i]`` is record i's
    leaf digest followed by its salt; ``digests`` the leaf digests alone, back
    to back (``digests[32 * i : 32 * (i + 1)]``), for the receipts.
    """

    keys: list[bytes]
    records: list[msgspec.Raw]
    blob: bytes
    runs: list[SectorRun]
    leaves: list[bytes]
    digests: bytes
    counts: ObservationCounts | None = None

    def observations(self) -> list[Observation]:
        return _obs_decoder.decode(self.blob)

    def id_at(self, i: int) -> str:
        """The id of record ``i`` (decoded alone: the others stay bytes)."""
        return _one_decoder.decode(self.records[i]).id


@dataclass(frozen=True)
class _Out:
    """What one knhk_codec_encode call wrote (keys, leaves, digests: stored shape only)."""

    blob: bytes
    keys: bytes
    leaves: bytes
    digests: bytes
    runs: list[Any]


class RingCodec:
    """The event-code table in C form; makes ``RingBatch``es."""

    def __init__(self, event_codes: Mapping[str, str]) -> None:
        self.event_codes = dict(event_codes)
        self._names = check_event_codes(event_codes)
        self._name_ptrs: Any = ffi.new("char *[]", 0x10000)
        self._name_lens: Any = ffi.new("uint16_t[]", 0x10000)
        self._keep: list[Any] = []  # the C strings the table points at
        # Scratch for knhk_codec_group (zero between calls; one batch at a
        # time encodes: the writer thread's).
        self._group_slots: Any = ffi.new("uint32_t[]", int(lib.KNHK_CODEC_GROUP_SLOTS))
        for code, name in self._names.items():
            raw = name.encode("utf-8")
            buf = ffi.new("char[]", raw)
            self._keep.append(buf)
            self._name_ptrs[code] = buf
            self._name_lens[code] = len(raw)

    def event_type(self, code: int) -> str:
        return self._names.get(code) or default_event_type(code)

    def batch(self, records: bytes | memoryview, count: int, clock: TickClock) -> RingBatch:
        """Validate ``count`` packed records (copied: ``records`` may be reused)."""
        return RingBatch(self, bytes(records[: count * RECORD.size]), count, clock)

    def _params(self, batch: RingBatch, shape: int) -> Any:
        p = ffi.new("knhk_codec_params *")
        p.shape = shape
        p.event_name = self._name_ptrs
        p.event_name_len = self._name_lens
        ref_ns, ref_ticks, scale, latest_ns = batch.clock_params
        p.clock_ref_ns = ref_ns
        p.clock_ref_ticks = ref_ticks
        p.clock_scale = scale
        p.clock_latest_ns = latest_ns
        return p


class RingBatch:
    """One drained batch: its records, which are accepted, and why others are not.

    ``len(batch)`` is the number of accepted records: what one commit stores.
    """

    def __init__(self, codec: RingCodec, records: bytes, count: int, clock: TickClock) -> None:
        self._codec = codec
        self._records = records
        self._recs: Any = ffi.from_buffer("knhk_record[]", records)
        self.count = count
        self.clock_params = clock.params()
        self._verdict: Any = ffi.new("uint8_t[]", max(count, 1))
        self.accepted = int(lib.knhk_codec_check(self._recs, count, self._verdict))
        self.rejected: list[Rejection] = []
        if self.accepted < count:
            verdicts = bytes(ffi.buffer(self._verdict, count))
            self.rejected = [
                explain(records, i, v) for i, v in enumerate(verdicts) if v != lib.KNHK_REC_OK
            ]

    def __len__(self) -> int:
        return self.accepted

    def accepted_indexes(self) -> list[int]:
        verdicts = bytes(ffi.buffer(self._verdict, self.count))
        return [i for i, v in enumerate(verdicts) if v == lib.KNHK_REC_OK]

    def refuse(self, positions: Iterable[int], reason: str, messages: Mapping[int, str]) -> None:
        """Refuse accepted records by their ``positions`` among the accepted ones
        (e.g. the indexes the SHACL gate reports for ``inputs()``)."""
        wanted = set(positions)
        if not wanted:
            return
        index = self.accepted_indexes()
        for pos in sorted(wanted):
            i = index[pos]
            self._verdict[i] = _REFUSED
            seq = RECORD.unpack_from(self._records, i * RECORD.size)[0]
            self.rejected.append(Rejection(i, seq, reason, messages.get(pos, reason)))
        self.accepted -= len(wanted)

    def _encode(self, shape: int, first_seq: int, ingested_at_ns: int) -> _Out:
        n = self.count
        p = self._codec._params(self, shape)
        p.first_seq = first_seq
        p.ingested_at_ns = ingested_at_ns
        stored = shape == lib.KNHK_SHAPE_OBSERVATION
        keys: Any = ffi.NULL
        leaves: Any = ffi.NULL
        digests: Any = ffi.NULL
        keys_cap = leaves_cap = digests_cap = 0
        if stored:
            m = max(self.accepted, 1)
            # Kept referenced until the call returns: p.random and p.salts point
            # into them. One read of the kernel's CSPRNG for all the salts.
            rnd = ffi.from_buffer("uint16_t[]", secrets.token_bytes(2 * m))
            salts = ffi.from_buffer("uint8_t[]", os.urandom(SALT_BYTES * m))
            p.random = rnd
            p.salts = salts
            keys_cap = _HEADER + n * _KEY_BYTES
            keys = _alloc("uint8_t[]", keys_cap)
            leaves_cap = _HEADER + n * _LEAF_BYTES
            leaves = _alloc("uint8_t[]", leaves_cap)
            digests_cap = max(n, 1) * DIGEST_BYTES
            digests = _alloc("uint8_t[]", digests_cap)
        out_cap = _HEADER + n * _MAX_RECORD
        out = _alloc("uint8_t[]", out_cap)
        runs = _alloc("knhk_codec_run[]", max(n, 1))
        nruns = ffi.new("size_t *")
        size = int(
            lib.knhk_codec_encode(
                self._recs, n, self._verdict, p, out, out_cap, keys, keys_cap,
                leaves, leaves_cap, digests, digests_cap, runs, nruns,
            )
        )  # fmt: skip
        if size == -2:
            raise RuntimeError("knhk_codec_encode: libcrypto failed to compute SHA-256")
        if size < 0:  # the capacities above are the header's safe sizes
            raise AssertionError("knhk_codec_encode: output buffer too small")
        blob = ffi.buffer(out, size)[:]
        if not stored:
            return _Out(blob, b"", b"", b"", [runs[i] for i in range(nruns[0])])
        return _Out(
            blob,
            ffi.buffer(keys, _HEADER + self.accepted * _KEY_BYTES)[:],
            ffi.buffer(leaves, _HEADER + self.accepted * _LEAF_BYTES)[:],
            ffi.buffer(digests, self.accepted * DIGEST_BYTES)[:],
            [runs[i] for i in range(nruns[0])],
        )

    def encode(self, first_seq: int, ingested_at_ns: int, evidence_sample: int = 0) -> Encoded:
        """The accepted records as stored observations, sequence numbers from
        ``first_seq``, ids from ``ingested_at_ns`` and fresh random bits, with
        their leaves (fresh salts); with ``evidence_sample`` > 0, also their
        ``ObservationCounts``."""
        got = self._encode(int(lib.KNHK_SHAPE_OBSERVATION), first_seq, ingested_at_ns)
        out_runs: list[SectorRun] = []
        first = 0
        for r in got.runs:
            count = int(r.count)
            out_runs.append(SectorRun(SECTOR_BY_CODE[int(r.sector)], first, count, r.start, r.end))
            first += count
        records = _raw_decoder.decode(got.blob)
        counts = None
        if evidence_sample > 0 and records:
            counts = ObservationCounts(
                ingested_at_ns,
                first_seq,
                first_seq + len(records) - 1,
                self._key_counts(records, evidence_sample),
            )
        return Encoded(
            _keys_decoder.decode(got.keys),
            records,
            got.blob,
            out_runs,
            _keys_decoder.decode(got.leaves),
            got.digests,
            counts,
        )

    def _key_counts(self, records: list[msgspec.Raw], sample: int) -> list[KeyCount]:
        n = self.count
        # No key has more positions than the batch has records.
        sample = min(sample, max(len(records), 1))
        keys = _alloc("knhk_codec_key[]", max(n, 1))
        positions = _alloc("uint32_t[]", max(n, 1) * sample)
        ng = int(
            lib.knhk_codec_group(
                self._recs, n, self._verdict, sample, self._codec._group_slots, keys, positions
            )
        )
        out: list[KeyCount] = []
        for g in range(ng):
            k = keys[g]
            taken = min(int(k.count), sample)
            evidence = [
                (p, _one_decoder.decode(records[p]).id)
                for p in positions[g * sample : g * sample + taken]
            ]  # fmt: skip
            out.append(
                KeyCount(
                    SECTOR_BY_CODE[int(k.sector)],
                    self._codec.event_type(int(k.event)),
                    int(k.count),
                    int(k.last),
                    evidence,
                )
            )
        return out

    def inputs(self) -> list[ObservationIn]:
        """The accepted records as ``ObservationIn`` (for the SHACL gate)."""
        return _inputs_decoder.decode(self._encode(int(lib.KNHK_SHAPE_INPUT), 0, 0).blob)
