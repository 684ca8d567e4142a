"""The shared-memory ring through its Python binding, with real files and processes.

Covered: header validation (version, magic, layout, configured size), round
trips of every value kind, wrap-around, a full lane (refused, counted, nothing
overwritten), lane exclusivity and release (close, SIGKILL), one consumer,
the seqlock-protected snapshot descriptor (including a writer dead mid-update),
producers killed mid-write (never a torn record), a corrupt slot, the
producers' tick samples, validation and decoding (hotpath/codec.py),
tick-rate detection.
"""

from __future__ import annotations

import math
import signal
import struct
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knhkd.hotpath import tsc
from knhkd.hotpath.codec import RingBatch, RingCodec
from knhkd.hotpath.records import (
    RECORD,
    SECTOR_CODES,
    InvalidRecord,
    decode_value,
    encode_value,
    pack_record,
)
from knhkd.hotpath.ring import (
    OP_APPEND,
    OP_SNAPSHOT_READ,
    Consumer,
    Producer,
    Reader,
    RingBusy,
    RingFull,
    RingMismatch,
    RingNotFound,
    ticks_now,
)
from knhkd.model import SECTORS
from tests.native.conftest import (
    REPO,
    SNAPSHOT_OFFSET,
    VERSION_OFFSET,
    read_u64,
    slot_offset,
    spawn_producer,
    write_bytes,
)
from tests.native.producer_proc import payload, well_formed

GENERIC = SECTOR_CODES["generic"]


def _drain(c: Consumer, batch: int = 4096) -> list[tuple[int, int, Any]]:
    """(lane, seq, value) of everything published, marked durable at once."""
    out: list[tuple[int, int, Any]] = []
    while True:
        d = c.consume(batch)
        for i, rec in enumerate(RECORD.iter_unpack(d.records)):
            out.append((d.lane_of(i), rec[0], decode_value(rec[4], rec[5], rec[7])))
        c.mark_durable(d.next_seq)
        if d.count == 0:
            return out


def _consumer(path: Path, lanes: int = 4, capacity: int = 64) -> Consumer:
    c = Consumer.create_or_open(path, lanes=lanes, capacity=capacity)
    c.begin()
    return c


# --------------------------------------------------------------------------- #
# Header validation
# --------------------------------------------------------------------------- #


def test_create_then_reopen_keeps_identity_and_size(ring_path: Path) -> None:
    with _consumer(ring_path, lanes=3, capacity=128) as c:
        ring_id = c.ring_id
        assert (c.lanes, c.capacity) == (3, 128)
    assert ring_path.stat().st_mode & 0o777 == 0o600
    with Consumer.create_or_open(ring_path, lanes=3, capacity=128) as again:
        assert again.ring_id == ring_id != 0


def test_the_configured_mode_is_applied_whatever_the_umask(ring_path: Path) -> None:
    # systemd/README.md: under UMask=0077 a ring for producers in knhkd's
    # group is created 0660 because knhkd applies [ring] mode exactly.
    code = (
        "import os, sys; from knhkd.hotpath.ring import Consumer; os.umask(0o077); "
        "Consumer.create_or_open(sys.argv[1], lanes=1, capacity=64, mode=0o660).close()"
    )
    subprocess.run([sys.executable, "-c", code, str(ring_path)], check=True, timeout=60)
    assert ring_path.stat().st_mode & 0o777 == 0o660


def test_a_version_mismatch_is_refused_naming_found_and_expected(
    ring_path: Path, c_producer: Path
) -> None:
    _consumer(ring_path).close()
    write_bytes(ring_path, VERSION_OFFSET, struct.pack("=I", 2))
    for opener in (Producer, Reader, Consumer):
        with pytest.raises(RingMismatch) as info:
            opener(ring_path)
        assert (info.value.field, info.value.found, info.value.expected) == ("version", 2, 1)
        assert "header version 2" in str(info.value) and "version 1" in str(info.value)
    with pytest.raises(RingMismatch, match="version 2"):
        Consumer.create_or_open(ring_path, lanes=4, capacity=64)
    # A C producer is told the same, by field.
    res = subprocess.run(
        [str(c_producer), str(ring_path), "1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 2
    assert "version mismatch (version: found 2, expected 1)" in res.stderr


def test_not_a_ring_and_a_truncated_ring_are_refused(ring_path: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_bytes(b"x" * 8192)
    with pytest.raises(RingMismatch, match="not a knhk ring"):
        Reader(other)
    _consumer(ring_path).close()
    with ring_path.open("r+b") as fh:
        fh.truncate(ring_path.stat().st_size - 64)
    with pytest.raises(RingMismatch) as info:
        Reader(ring_path)
    assert info.value.field == "file_size"
    with pytest.raises(RingNotFound, match="is knhkd running"):
        Producer(tmp_path / "absent.ring")


def test_a_ring_of_another_size_than_configured_is_refused(ring_path: Path) -> None:
    _consumer(ring_path, lanes=4, capacity=64).close()
    with pytest.raises(RingMismatch) as info:
        Consumer.create_or_open(ring_path, lanes=4, capacity=128)
    assert (info.value.field, info.value.found, info.value.expected) == ("capacity", 64, 128)
    assert "[ring] capacity is 128" in str(info.value)


# --------------------------------------------------------------------------- #
# Records
# --------------------------------------------------------------------------- #

_ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_floats = st.floats(allow_nan=False, allow_infinity=False)
_values = st.one_of(
    st.none(),
    _ints,
    _floats,
    st.lists(_ints, max_size=5),
    st.lists(_floats, max_size=5),
    st.text(max_size=10),
)


@settings(max_examples=200, deadline=None)
@given(value=_values, event=st.integers(0, 0xFFFF), sector=st.sampled_from(SECTORS))
def test_every_value_kind_round_trips_through_the_ring(
    tmp_path_factory: pytest.TempPathFactory, value: Any, event: int, sector: str
) -> None:
    path = tmp_path_factory.mktemp("rt") / "r.ring"
    with _consumer(path, lanes=1) as c, Producer(path) as p:
        p.append(SECTOR_CODES[sector], event, value)  # type: ignore[index]
        clock = tsc.TickClock(tsc.TickRate(2_000_000_000, "override"))
        d = c.consume(8)
        got = RingCodec({"7": "named.seven"}).batch(d.records, d.count, clock)
    assert not got.rejected
    (obs,) = got.inputs()
    expected = [float(v) for v in value] if isinstance(value, list) and any(
        isinstance(v, float) for v in value
    ) else value  # fmt: skip
    assert obs.value == expected and obs.sector == sector
    assert obs.event_type == ("named.seven" if event == 7 else f"ring.{event}")
    assert obs.event_time is not None  # stamped by append


@pytest.mark.parametrize(
    ("value", "reason"),
    [(True, "value"), (math.nan, "nonfinite"), ([1, 2, 3, 4, 5, 6], "len"), ("é" * 21, "len"),
     ({"a": 1}, "value"), (2**63, "value")],
)  # fmt: skip
def test_values_without_a_ring_encoding_are_refused(value: Any, reason: str) -> None:
    with pytest.raises(InvalidRecord) as info:
        encode_value(value)
    assert info.value.reason == reason


def test_the_decoder_refuses_invalid_records_one_by_one() -> None:
    good = pack_record(GENERIC, 3, 1.5, 123)
    nan = RECORD.pack(0, 1, GENERIC, 1, 2, 1, 0, struct.pack("=d", math.nan))
    bad_utf8 = RECORD.pack(0, 1, GENERIC, 1, 3, 2, 0, b"\xff\xfe")
    records = [
        good,
        pack_record(0, 1, 1),  # sector 0: a zeroed record
        RECORD.pack(0, 1, GENERIC, 1, 9, 0, 0, b""),  # unknown kind
        RECORD.pack(0, 1, GENERIC, 1, 5, 6, 0, b""),  # I64_ARRAY with len 6
        RECORD.pack(0, 1, GENERIC, 1, 0, 0, 1, b""),  # reserved flags
        nan,
        bad_utf8,
        RECORD.pack(0, 2**63, GENERIC, 1, 0, 0, 0, b""),  # a stamp from the far future
        good,
    ]
    clock = tsc.TickClock(tsc.TickRate(1_000_000_000, "override"))
    out = _batch(b"".join(records), clock)
    assert [r.reason for r in out.rejected] == [
        "sector", "kind", "len", "flags", "nonfinite", "utf8",
    ]  # fmt: skip
    assert [r.index for r in out.rejected] == [1, 2, 3, 4, 5, 6]
    items = out.inputs()
    assert [o.value for o in items] == [1.5, None, 1.5]
    # An implausible stamp keeps the record, without an event time.
    assert items[0].event_time is not None and items[1].event_time is None


def test_decoded_event_times_are_the_clocks_to_the_microsecond() -> None:
    clock = tsc.TickClock(tsc.TickRate(2_445_000_000, "override"))
    now = ticks_now()
    stamps = [now, now + 1, now + 2, now + 1000, now + 1001, now + 2_445_000, 0, now + 7]
    records = b"".join(pack_record(GENERIC, 1, 1, s) for s in stamps)
    got = [o.event_time for o in _batch(records, clock).inputs()]
    assert got == [clock.to_datetime(s) if s else None for s in stamps]


def test_a_handle_tells_when_its_path_names_another_ring(ring_path: Path) -> None:
    with _consumer(ring_path, lanes=1) as c, Producer(ring_path) as p, Reader(ring_path) as r:
        assert not p.stale() and not r.stale() and not c.stale()
        ring_path.unlink()  # removed: e.g. a tmpfs cleaned under a running daemon
        assert p.stale() and r.stale() and c.stale()
        with _consumer(ring_path, lanes=1) as fresh:  # a new ring at the same path
            assert p.stale() and not fresh.stale()
            with Producer(ring_path) as again:
                assert not again.stale()


def _batch(records: bytes, clock: tsc.TickClock) -> RingBatch:
    return RingCodec({}).batch(records, len(records) // RECORD.size, clock)


# --------------------------------------------------------------------------- #
# Appending, draining, back-pressure
# --------------------------------------------------------------------------- #


def test_wrap_around_keeps_order_and_content(ring_path: Path) -> None:
    seen: list[int] = []
    with _consumer(ring_path, lanes=1, capacity=64) as c, Producer(ring_path) as p:
        n = 0
        for lap in range(40):  # 40 batches of 1..61 records: ~19 laps of the lane
            k = 1 + (lap * 37) % 61
            assert p.append_batch([(GENERIC, 1, n + j) for j in range(k)]).appended == k
            n += k
            seen += [v for _, _, v in _drain(c)]
        assert p.durable() == p.head() == n
    assert seen == list(range(n)) and n > 64 * 10


def test_a_full_lane_refuses_counts_and_overwrites_nothing(ring_path: Path) -> None:
    with _consumer(ring_path, lanes=1, capacity=64) as c, Producer(ring_path) as p:
        assert p.append_batch([(GENERIC, 1, i) for i in range(60)]).appended == 60
        res = p.append_batch([(GENERIC, 1, 60 + i) for i in range(10)])
        assert res == (60, 4)  # 4 fit; 6 refused
        with pytest.raises(RingFull):
            p.append(GENERIC, 1, -1)
        assert c.lane_stats()[0].full_count == 7
        # Read but not durable: still no room (a crash now must lose nothing).
        d = c.consume(1000)
        assert d.count == 64
        with pytest.raises(RingFull):
            p.append(GENERIC, 1, -1)
        values = [decode_value(r[4], r[5], r[7]) for r in RECORD.iter_unpack(d.records)]
        assert values == list(range(64))
        c.mark_durable(d.next_seq)
        assert p.durable() == 64
        assert p.append(GENERIC, 1, 64) == 64
        assert [v for _, _, v in _drain(c)] == [64]


def test_lanes_are_exclusive_and_freed_by_close_and_by_death(
    ring_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    c = _consumer(ring_path, lanes=2)
    a = Producer(ring_path)
    b = Producer(ring_path)
    assert {a.lane, b.lane} == {0, 1}
    with pytest.raises(RingBusy, match="all 2 lanes"):
        Producer(ring_path)
    b.close()
    with Producer(ring_path) as again:
        assert again.lane == 1
    a.close()
    # A process holding a lane dies by SIGKILL: the kernel frees its lane.
    holder = spawn_producer(ring_path, tag=9, forever=True)
    procs.append(holder)
    assert holder.stdout is not None and holder.stdout.readline().startswith("lane ")
    other = Producer(ring_path)
    with pytest.raises(RingBusy):
        Producer(ring_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    with Producer(ring_path) as freed:
        assert freed.lane != other.lane
    other.close()
    c.close()


def test_one_consumer_per_ring(ring_path: Path) -> None:
    with _consumer(ring_path), pytest.raises(RingBusy, match="already has a consumer"):
        Consumer(ring_path)


def test_concurrent_producer_processes_each_arrive_complete_and_in_order(
    ring_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    c = _consumer(ring_path, lanes=4, capacity=256)
    counts = {1: 3000, 2: 2000, 3: 2500}
    procs += [spawn_producer(ring_path, tag, count=n) for tag, n in counts.items()]
    got: dict[int, list[int]] = {tag: [] for tag in counts}
    deadline = time.monotonic() + 30
    while any(p.poll() is None for p in procs) or sum(map(len, got.values())) < sum(
        counts.values()
    ):
        assert time.monotonic() < deadline, "producers did not finish"
        for _, _, v in _drain(c, 512):
            assert well_formed(v), v
            got[v[0]].append(v[1])
        time.sleep(0.001)
    for tag, n in counts.items():
        assert got[tag] == list(range(n)), f"producer {tag}: records missing or out of order"
    assert all(p.returncode == 0 for p in procs)
    c.close()


# --------------------------------------------------------------------------- #
# Crashes: producers killed mid-write
# --------------------------------------------------------------------------- #


def test_producers_killed_mid_write_never_yield_a_torn_record(
    ring_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    """SIGKILL producers hammering the ring at arbitrary points; every record read
    is whole, and each producer's records are a gap-free prefix of what it wrote."""
    c = _consumer(ring_path, lanes=2, capacity=128)
    got: dict[int, list[int]] = {}

    def drain() -> None:
        for _, _, v in _drain(c, 256):
            assert well_formed(v), f"torn record {v}"
            got.setdefault(v[0], []).append(v[1])

    for rnd in range(12):
        p = spawn_producer(ring_path, tag=100 + rnd, batch=1 + rnd * 5, forever=True)
        procs.append(p)
        assert p.stdout is not None and p.stdout.readline().startswith("lane ")
        stop = time.monotonic() + 0.05 + 0.02 * (rnd % 5)
        while time.monotonic() < stop:
            drain()
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
        drain()
    drain()
    assert len(got) == 12
    for tag, seqs in got.items():
        assert seqs == list(range(len(seqs))), f"producer {tag}: gap or repeat"
    stats = c.lane_stats()
    assert sum(s.corrupt_count for s in stats) == 0
    assert all(s.durable == s.head for s in stats)
    c.close()


def test_a_slot_written_but_not_published_is_never_read(ring_path: Path) -> None:
    """The state a producer killed between writing a slot and storing the head leaves."""
    c = _consumer(ring_path, lanes=1, capacity=64)
    with Producer(ring_path) as p:
        p.append(GENERIC, 1, 1)
        head = p.head()
    half = pack_record(GENERIC, 1, payload(7, 7))[:40]
    write_bytes(ring_path, slot_offset(1, 64, 0, head), half)
    assert [v for _, _, v in _drain(c)] == [1]
    with Producer(ring_path) as q:  # the next owner of the lane overwrites it whole
        assert q.head() == head
        q.append(GENERIC, 1, 2)
    assert [v for _, _, v in _drain(c)] == [2]
    c.close()


def test_a_slot_with_a_foreign_sequence_is_skipped_and_counted(ring_path: Path) -> None:
    c = _consumer(ring_path, lanes=1, capacity=64)
    with Producer(ring_path) as p:
        p.append_batch([(GENERIC, 1, i) for i in range(3)])
    write_bytes(ring_path, slot_offset(1, 64, 0, 1), struct.pack("=Q", 99))
    assert [v for _, _, v in _drain(c)] == [0, 2]
    assert c.lane_stats()[0].corrupt_count == 1
    c.close()


# --------------------------------------------------------------------------- #
# Snapshot descriptor
# --------------------------------------------------------------------------- #

_READER = """
import sys, hashlib
from knhkd.hotpath.ring import Reader
r = Reader(sys.argv[1])
seen = 0
while seen < 20000:
    d = r.snapshot()
    if d is None:
        continue
    want = hashlib.sha256(str(d.version).encode()).hexdigest()
    assert d.snapshot_id == want and d.promoted_at_ns == d.version * 1000, d
    seen += 1
print("consistent", seen)
"""


def test_the_snapshot_descriptor_is_never_read_torn(
    ring_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    import hashlib

    c = _consumer(ring_path)
    with Reader(ring_path) as r:
        assert r.snapshot() is None
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", _READER, str(ring_path)],
            cwd=str(REPO),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    procs += readers
    v = 0
    deadline = time.monotonic() + 30
    while any(p.poll() is None for p in readers):
        assert time.monotonic() < deadline
        v += 1
        c.publish_snapshot(hashlib.sha256(str(v).encode()).hexdigest(), v, v * 1000)
    for p in readers:
        out, err = p.communicate()
        assert p.returncode == 0, err
        assert out.startswith("consistent")
    with Producer(ring_path) as prod:
        d = prod.snapshot()
        assert d is not None and d.version == v
        assert abs(d.published_at_ns - time.time_ns()) < 60 * 10**9
    c.close()


def test_a_writer_killed_mid_update_is_reported_then_repaired(ring_path: Path) -> None:
    c = _consumer(ring_path)
    c.publish_snapshot("11" * 32, 1, 1000)
    seq = read_u64(ring_path, SNAPSHOT_OFFSET)
    write_bytes(ring_path, SNAPSHOT_OFFSET, struct.pack("=Q", seq + 1))  # odd: mid-update
    with Reader(ring_path) as r:
        with pytest.raises(RingBusy, match="mid-update"):
            r.snapshot()
        c.publish_snapshot("22" * 32, 2, 2000)  # the restarted writer repairs it
        d = r.snapshot()
        assert d is not None and (d.snapshot_id, d.version) == ("22" * 32, 2)
    c.close()


# --------------------------------------------------------------------------- #
# Ticks and samples
# --------------------------------------------------------------------------- #


def test_producers_publish_tick_samples_for_appends_and_snapshot_reads(ring_path: Path) -> None:
    c = _consumer(ring_path, lanes=1, capacity=4096)
    c.publish_snapshot("33" * 32, 0, 1)
    with Producer(ring_path) as p:
        p.append(GENERIC, 1, 1)  # the first call of a handle is sampled
        for _ in range(1030):
            p.snapshot()
        p.append_batch([(GENERIC, 1, i) for i in range(100)])
    samples = c.take_samples()
    ops = [s.op for s in samples]
    assert ops[0] == OP_APPEND and OP_SNAPSHOT_READ in ops
    assert all(s.count >= 1 for s in samples)
    assert c.take_samples() == []  # taken once
    c.close()


def test_tick_rate_detection_and_clock(tmp_path: Path) -> None:
    fake = tmp_path / "tsc_freq_khz"
    fake.write_text("2596000\n")
    assert tsc.detect(sysfs=fake) in (
        tsc.TickRate(2_596_000_000, "sysfs"),
        tsc.TickRate(tsc.detect().hz, "exact"),
    )
    assert tsc.detect(123) == tsc.TickRate(123, "override")
    rate = tsc.detect(sysfs=tmp_path / "absent")
    assert rate.hz > 1_000_000
    clock = tsc.TickClock(rate)
    # A stamp taken now converts to (about) now; one from before 1970 to nothing.
    now = clock.to_datetime(ticks_now())
    assert now is not None and abs((now - datetime.now(UTC)).total_seconds()) < 5.0
    assert clock.to_datetime(ticks_now() - rate.hz * 10**10) is None


def test_the_drain_exports_samples_and_keeps_block_timed_ones(ring_path: Path) -> None:
    from knhkd.config import build
    from knhkd.loop.ring_drain import RingDrain
    from knhkd.telemetry.metrics import Metrics

    metrics = Metrics()
    c = _consumer(ring_path, lanes=1, capacity=4096)
    drain = RingDrain(lambda: build({}), c, None, None, metrics)  # type: ignore[arg-type]
    assert drain.append_ticks_p99() is None
    with Producer(ring_path) as p:
        p.append(GENERIC, 1, 1)  # sequence 0: sampled, but one record is below resolution
        p.append_batch([(GENERIC, 1, i) for i in range(2000)])  # holds 1024: sampled
    drain._export_samples()
    count = metrics.registry.get_sample_value(
        "knhk_observation_append_ticks_count", {"op": "append"}
    )
    assert count == 2
    assert len(drain.recent_append_ticks) == 1 and drain.append_ticks_p99() is not None
    c.close()
