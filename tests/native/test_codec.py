"""The C drain codec (native/src/knhk_codec.c) against the Python reference.

Held to: the same verdicts, reasons and messages as the plain-Python decoder
(tests/native/reference_decode.py, built on records.decode_value) for arbitrary
64-byte records, valid or not; byte-for-byte the msgpack msgspec writes for the
same ``Observation``; ids that are ULIDs of the ingest millisecond and the
sequence number; LMDB keys and sector runs that match the records; and, through
the ingest commit job, stored records that ``fsck`` verifies against their
receipts when ring batches and HTTP items share one commit.
"""

from __future__ import annotations

import hashlib
import math
import struct
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ulid import ULID

from knhkd.hotpath import codec, tsc
from knhkd.hotpath.codec import Encoded, RingCodec
from knhkd.hotpath.records import RECORD, pack_record
from knhkd.hotpath.ring import ticks_now
from knhkd.model import KeyCount, Observation, ObservationCounts, ObservationIn
from knhkd.store.ids import seq_key
from knhkd.store.schema import LEAF_DIGEST_BYTES, LEAF_SALT_BYTES
from tests.native.reference_decode import reference_decode

EVENT_CODES = {"7": "named.seven", "65535": "plc:last/code-x"}


def _payload(kind: int) -> st.SearchStrategy[bytes]:
    floats = st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=5, max_size=5)
    ints = st.lists(st.integers(-(2**63), 2**63 - 1), min_size=5, max_size=5)
    text = st.text(max_size=13).map(lambda s: s.encode("utf-8")[:40])
    return st.one_of(
        floats.map(lambda v: struct.pack("=5d", *v)),
        ints.map(lambda v: struct.pack("=5q", *v)),
        text,
        st.binary(max_size=40),
    ).map(lambda b: b.ljust(40, b"\0"))


@st.composite
def records(draw: st.DrawFn) -> tuple[Any, ...]:
    """A record's fields; its stamp is absolute, or (None, delta) to be taken
    relative to the clock's reference (which the test reads)."""
    kind = draw(st.integers(0, 8))
    if draw(st.booleans()):  # mostly in bounds, so values are exercised
        length = draw(st.integers(0, {3: 40, 4: 40, 5: 5, 6: 5}.get(kind, 1)))
    else:
        length = draw(st.integers(0, 255))
    stamp = draw(
        st.one_of(
            st.just(0),
            st.integers(1, 2**64 - 1),
            st.tuples(st.none(), st.integers(-(10**13), 10**13)),
        )
    )
    sector = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 65535, 3, 3]))
    flags = draw(st.sampled_from([0, 0, 0, 1, 0x8000]))
    event = draw(st.sampled_from([0, 1, 7, 42, 999, 65535]) | st.integers(0, 0xFFFF))
    seq = draw(st.integers(0, 2**64 - 1))
    return (seq, stamp, sector, event, kind, length, flags, draw(_payload(kind)))


def _pack(fields: tuple[Any, ...], ref_ticks: int) -> bytes:
    seq, stamp, *rest = fields
    if isinstance(stamp, tuple):
        stamp = min(max(ref_ticks + stamp[1], 0), 2**64 - 1)
    return RECORD.pack(seq, stamp, *rest)


def _check_against_reference(
    recs: list[bytes], clock: tsc.TickClock, first_seq: int, now: int
) -> None:
    raw = b"".join(recs)
    want = reference_decode(raw, clock, EVENT_CODES)
    batch = RingCodec(EVENT_CODES).batch(raw, len(recs), clock)
    assert batch.rejected == want.rejected
    assert len(batch) == len(want.items)
    assert batch.inputs() == want.items

    enc = batch.encode(first_seq, now)
    assert enc.keys == [seq_key(first_seq + i) for i in range(len(want.items))]
    _check_leaves(enc)
    stored = enc.observations()
    for i, (item, rec, obs) in enumerate(zip(want.items, enc.records, stored, strict=True)):
        ulid = ULID.from_str(obs.id)
        assert ulid.bytes[:6] == (now // 1_000_000).to_bytes(6, "big")
        assert int.from_bytes(ulid.bytes[6:14], "big") == first_seq + i
        expected = Observation(
            id=obs.id,
            seq=first_seq + i,
            event_type=item.event_type,
            sector=item.sector,
            value=item.value,
            metadata={},
            ingested_at_ns=now,
            event_time=item.event_time,
        )
        assert bytes(rec) == msgspec.msgpack.encode(expected)
    # Runs: the records of one sector, contiguous, in order, covering them all.
    assert sum(r.count for r in enc.runs) == len(stored)
    assert b"".join(enc.blob[r.start : r.end] for r in enc.runs) == b"".join(
        bytes(r) for r in enc.records
    )
    for r in enc.runs:
        assert {o.sector for o in stored[r.first : r.first + r.count]} == {r.sector}


def _check_leaves(enc: Encoded) -> None:
    """Each leaf is what the Python path (loop/ingest.py's HTTP part, fsck)
    computes: SHA-256(salt || the stored record), then the salt."""
    assert len(enc.leaves) == len(enc.records)
    assert len(enc.digests) == LEAF_DIGEST_BYTES * len(enc.records)
    salts = set()
    for i, (leaf, rec) in enumerate(zip(enc.leaves, enc.records, strict=True)):
        assert len(leaf) == LEAF_DIGEST_BYTES + LEAF_SALT_BYTES
        digest, salt = leaf[:LEAF_DIGEST_BYTES], leaf[LEAF_DIGEST_BYTES:]
        assert digest == hashlib.sha256(salt + bytes(rec)).digest()
        assert enc.digests[i * LEAF_DIGEST_BYTES : (i + 1) * LEAF_DIGEST_BYTES] == digest
        salts.add(salt)
    assert len(salts) == len(enc.records)  # fresh per record


def test_the_codec_leaf_constants_are_the_stores() -> None:
    assert (codec.SALT_BYTES, codec.DIGEST_BYTES) == (LEAF_SALT_BYTES, LEAF_DIGEST_BYTES)


def test_leaf_digests_are_the_python_paths_over_every_record_size() -> None:
    # Records of 100+ sizes from under 128 to over 320 bytes (SHA-256's
    # 64-byte block boundaries fall everywhere), in runs of several sectors,
    # a refused one in the middle.
    clock = tsc.TickClock(tsc.TickRate(2_000_000_000, "override"))
    names = {str(c): "e." + "x" * c for c in range(0, 250, 7)}
    recs = [
        pack_record(1 + i % 5, 7 * (i % 36), "t" * (i % 41) if i % 2 else [i] * (i % 6), i)
        for i in range(300)
    ]
    recs[150] = RECORD.pack(1, 0, 9, 1, 1, 1, 0, bytes(40))  # unknown sector
    batch = RingCodec(names).batch(b"".join(recs), len(recs), clock)
    enc = batch.encode(5, time.time_ns())
    assert len(enc.records) == 299
    sizes = {len(r) for r in enc.records}
    assert min(sizes) < 128 and max(sizes) > 320 and len(sizes) > 100
    _check_leaves(enc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), hz=st.integers(1_000_000, 5_000_000_000))
def test_the_codec_agrees_with_the_python_reference(data: st.DataObject, hz: int) -> None:
    clock = tsc.TickClock(tsc.TickRate(hz, "override"))
    ref_ticks = clock.params()[1]
    recs = [_pack(f, ref_ticks) for f in data.draw(st.lists(records(), min_size=1, max_size=24))]
    first_seq = data.draw(st.integers(0, 2**63))
    now = data.draw(st.integers(0, 2**63 - 1))
    _check_against_reference(recs, clock, first_seq, now)


@pytest.mark.parametrize(
    "value",
    [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, -1, -32, -33, -128,
     -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63), 0.0, -0.0, 1e308, 5e-324,
     "", "x" * 31, "x" * 32, "é" * 20, b"", b"\x00" * 16, b"\xff" * 40, [], [1, -1, 2**40],
     [1.5, -0.0, 3.0, 1e-300, 2.0], None],
)  # fmt: skip
def test_every_msgpack_form_boundary(value: Any) -> None:
    clock = tsc.TickClock(tsc.TickRate(2_445_000_000, "override"))
    now = ticks_now()
    stamps = [now, now + 1_222_500_000, 0, 1]  # now, +0.5 s, unstamped, at the counter's start
    recs = [pack_record(s % 5 + 1, s % 3, value, t) for s, t in enumerate(stamps)]
    _check_against_reference(recs, clock, 2**32 - 2, time.time_ns())


@pytest.mark.parametrize(
    "text",
    [b"\xed\xa0\x80", b"\xed\x9f\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xc2\x80", b"\xe0\x80\x80",
     b"\xe0\xa0\x80", b"\xf0\x8f\xbf\xbf", b"\xf0\x90\x80\x80", b"\xf4\x8f\xbf\xbf",
     b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xe2\x82", b"a\xe2\x82\xac", b"\x80",
     b"\xff", "😀".encode(), b"\x00nul", b"ok\xc3"],
)  # fmt: skip
def test_text_is_strict_utf8_as_python_decodes_it(text: bytes) -> None:
    clock = tsc.TickClock(tsc.TickRate(2_000_000_000, "override"))
    rec = RECORD.pack(0, 0, 5, 1, 3, len(text), 0, text.ljust(40, b"\0"))
    _check_against_reference([rec, rec[:-40] + text.ljust(40, b"x")], clock, 0, time.time_ns())


def test_event_times_take_every_timestamp_form() -> None:
    # timestamp32 (a whole second), timestamp64 (with microseconds), and none
    # (implausible: more than an hour ahead). The 96-bit form (before 1970 or
    # after 2514) is never written: such stamps are implausible, hence none.
    clock = tsc.TickClock(tsc.TickRate(1_000_000_000, "override"))
    ref_ns, ref_ticks, _, _ = clock.params()
    whole = ref_ticks - ref_ns % 10**9  # a whole second, in the past
    recs = [pack_record(5, 1, 1, t) for t in (whole, whole + 1_500, ref_ticks + 2 * 3600 * 10**9)]
    forms = [rec[rec.index(b"event_time") + 10] for rec in _encoded(recs, clock)]
    assert forms == [0xD6, 0xD7, 0xC0]
    _check_against_reference(recs, clock, 0, time.time_ns())


def _encoded(recs: list[bytes], clock: tsc.TickClock) -> list[bytes]:
    batch = RingCodec({}).batch(b"".join(recs), len(recs), clock)
    return [bytes(r) for r in batch.encode(0, time.time_ns()).records]


def test_refused_records_are_left_out_and_named() -> None:
    clock = tsc.TickClock(tsc.TickRate(2_000_000_000, "override"))
    recs = [pack_record(3, 1, float(i), 0) for i in range(6)]
    recs[1] = RECORD.pack(9, 0, 3, 1, 2, 1, 0, struct.pack("=d", math.inf).ljust(40, b"\0"))
    batch = RingCodec({}).batch(b"".join(recs), 6, clock)
    assert [(r.index, r.reason) for r in batch.rejected] == [(1, "nonfinite")]
    assert len(batch) == 5
    # Positions among the accepted records, as the SHACL gate reports them.
    batch.refuse([0, 3], "shacl", {3: "value: too cold"})
    assert [(r.index, r.reason, r.message) for r in batch.rejected[1:]] == [
        (0, "shacl", "shacl"),
        (4, "shacl", "value: too cold"),
    ]
    assert [o.value for o in batch.inputs()] == [2.0, 3.0, 5.0]
    stored = batch.encode(10, time.time_ns()).observations()
    assert [(o.seq, o.value) for o in stored] == [(10, 2.0), (11, 3.0), (12, 5.0)]


def test_a_batch_owns_its_records() -> None:
    clock = tsc.TickClock(tsc.TickRate(2_000_000_000, "override"))
    buf = bytearray(pack_record(3, 1, 1.0, 0))
    batch = RingCodec({}).batch(memoryview(buf), 1, clock)
    buf[:] = pack_record(1, 2, 2.0, 0)  # the consumer reuses its buffer
    assert batch.inputs() == [ObservationIn(event_type="ring.1", sector="manufacturing", value=1.0)]


def test_event_codes_must_name_valid_event_types() -> None:
    with pytest.raises(ValueError, match="event type"):
        RingCodec({"1": "no spaces allowed"})
    with pytest.raises(ValueError, match="65536"):
        RingCodec({"65536": "a.b"})
    assert RingCodec({"1": "plc.error"}).event_type(1) == "plc.error"
    assert RingCodec({}).event_type(65535) == "ring.65535"


def test_ring_batches_and_http_items_share_one_verified_commit(tmp_path: Path) -> None:
    from knhkd.datadir.fsck import fsck
    from knhkd.loop.ingest import commit_job
    from tests.unit.test_verifiable_log import Log

    lg = Log(tmp_path)
    clock = tsc.TickClock(tsc.TickRate(2_000_000_000, "override"))
    codec = RingCodec({})
    ring = [pack_record(1 + i % 2 + (i // 3) % 2, 1, i, ticks_now()) for i in range(9)]
    http = [ObservationIn(event_type="a.b", sector="finance", value=i) for i in range(3)]
    parts: list[Any] = [
        http,
        codec.batch(b"".join(ring), 9, clock),
        http,
        codec.batch(ring[0], 1, clock),
    ]
    out, counts = lg.run(commit_job(lg.store, lg.log, parts, time.time_ns, evidence_sample=4))
    assert [len(p) if isinstance(p, list) else p.last_seq - p.first_seq + 1 for p in out] == [
        3, 9, 3, 1,
    ]  # fmt: skip
    assert [(p.first_seq, p.last_seq) for p in out if isinstance(p, ObservationCounts)] == [
        (3, 11), (15, 15),
    ]  # fmt: skip
    with lg.store.reader() as txn:
        assert lg.store.tables.observations.count(txn) == 16
    report = fsck(lg.store)
    assert report.ok, report.errors
    with lg.store.reader() as txn:
        stored = [lg.store.tables.observations.get(txn, s) for s in range(16)]
    lg.store.close()
    assert [o.seq for o in stored] == list(range(16))
    assert counts == Counter(o.sector for o in stored)
    # HTTP parts are handed over as stored; ring parts as counts of what was stored.
    assert out[0] == stored[:3] and out[2] == stored[12:15]
    ring_part = out[1]
    assert isinstance(ring_part, ObservationCounts)
    assert ring_part == counts_of(stored[3:12], sample=4)


def counts_of(stored: list[Observation], sample: int) -> ObservationCounts:
    """The ObservationCounts of a batch, from its observations, in plain Python."""
    keys: dict[tuple[str, str], KeyCount] = {}
    for pos, o in enumerate(stored):
        k = keys.get((o.sector, o.event_type))
        ev = [(pos, o.id)]
        if k is None:
            keys[(o.sector, o.event_type)] = KeyCount(o.sector, o.event_type, 1, pos, ev)
        else:
            keys[(o.sector, o.event_type)] = KeyCount(
                o.sector, o.event_type, k.count + 1, pos, (k.evidence + ev)[:sample]
            )
    return ObservationCounts(
        stored[0].ingested_at_ns, stored[0].seq, stored[-1].seq, list(keys.values())
    )


_EVENTS = {"1": "login", "2": "sensor.error", "3": "error", "4": "plc.ok"}


@settings(max_examples=150, deadline=None)
@given(
    batches=st.lists(
        st.lists(
            st.tuples(st.sampled_from([1, 2, 3, 4, 5]), st.sampled_from([1, 2, 3, 4, 9])),
            min_size=0,
            max_size=40,
        ),
        min_size=1,
        max_size=6,
    ),
    gaps=st.lists(st.integers(0, 90 * 10**9), min_size=6, max_size=6),
    sample=st.integers(1, 5),
    threshold=st.integers(1, 20),
)
def test_the_analyzer_counts_a_ring_batch_as_it_observes_its_observations(
    batches: list[list[tuple[int, int]]], gaps: list[int], sample: int, threshold: int
) -> None:
    from knhkd.analyze.detectors import Detectors
    from knhkd.config import AnalyzeConfig, ErrorSpikeConfig, HighFrequencyConfig

    cfg = AnalyzeConfig(
        evidence_sample=sample,
        high_frequency=HighFrequencyConfig(threshold=threshold),
        error_spike=ErrorSpikeConfig(min_events=1, error_rate=0.1),
    )
    schema = {s: frozenset() for s in ("finance", "healthcare", "manufacturing", "logistics")}
    t0 = 1_700_000_000 * 10**9
    by_list, by_counts = Detectors(cfg, schema, t0), Detectors(cfg, schema, t0)
    clock = tsc.TickClock(tsc.TickRate(2_000_000_000, "override"))
    codec = RingCodec(_EVENTS)
    now, seq = t0, 0
    for batch, gap in zip(batches, gaps, strict=False):
        now += gap
        recs = b"".join(pack_record(sector, event, 1, 0) for sector, event in batch)
        enc = codec.batch(recs, len(batch), clock).encode(seq, now, sample)
        stored = enc.observations()
        seq += len(stored)
        by_list.observe(stored)
        if enc.counts is not None:
            assert enc.counts == counts_of(stored, sample)
            by_counts.observe_counts(enc.counts)
        else:
            assert not stored
        assert by_counts.evaluate(now + 1) == by_list.evaluate(now + 1)
        # The least-recently-seen order that max_keys evicts by.
        for table in ("_by_type", "_errors", "_drift"):
            assert list(getattr(by_counts, table)._series) == list(getattr(by_list, table)._series)
    assert by_counts.evaluate(now + 31 * 10**9) == by_list.evaluate(now + 31 * 10**9)


def test_any_record_is_checked_encoded_and_grouped_without_memory_errors(tmp_path: Path) -> None:
    """The codec under AddressSanitizer and UBSan over ~10^5 arbitrary records
    (tests/native/codec_fuzz.c): a producer can write any 64 bytes."""
    import shutil
    import subprocess

    from tests.native.conftest import NATIVE

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    exe = tmp_path / "codec_fuzz"
    build = subprocess.run(
        [cc, "-std=gnu11", "-O1", "-g", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=all", "-Wall", "-Wextra", "-Werror",
         f"-I{NATIVE / 'include'}", f"-I{NATIVE / 'src'}",
         str(Path(__file__).parent / "codec_fuzz.c"), str(NATIVE / "src" / "knhk_codec.c"),
         "-lcrypto", "-o", str(exe)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    for seed in (1, 2, 3):
        run = subprocess.run(
            [str(exe), str(seed), "300"], capture_output=True, text=True, timeout=120, check=False
        )
        assert run.returncode == 0, run.stderr[-3000:]


def test_a_ring_batch_with_nothing_accepted_still_commits_its_cursor(tmp_path: Path) -> None:
    # Every record refused (or every slot corrupt): the positions must still
    # commit, with no observation and no receipt, so the records are not read again.
    from knhkd.loop.ingest import commit_job
    from tests.unit.test_verifiable_log import Log

    lg = Log(tmp_path)
    tables = lg.store.tables

    def count(table: Any) -> int:
        with lg.store.reader() as txn:
            return int(table.count(txn))

    before = count(tables.receipts)
    clock = tsc.TickClock(tsc.TickRate(2_000_000_000, "override"))
    bad = RingCodec({}).batch(pack_record(0, 1, 1.0, 0) * 3, 3, clock)  # sector 0
    empty = RingCodec({}).batch(b"", 0, clock)
    assert len(bad) == 0 and len(bad.rejected) == 3
    job = commit_job(lg.store, lg.log, [bad, empty], time.time_ns, {b"ring.cursor": b"c"})
    out, counts = lg.run(job)
    assert out == [None, None] and counts == {}
    assert count(tables.observations) == 0 and count(tables.receipts) == before
    with lg.store.reader() as txn:
        assert tables.ring_cursor.get_raw(txn) == b"c"
    lg.store.close()
