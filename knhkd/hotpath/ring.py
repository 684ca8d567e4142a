"""Python handles on the shared-memory observation ring (``native/``, via cffi).

Three roles, as in ``knhk_ring.h``:
- ``Producer``: claims one lane; appends one record or a batch per C call
  (a Python→C call costs ~80 ns, so batch: PLATFORM_NOTES); reads the snapshot
  descriptor; tells which of its records are durable.
- ``Consumer``: knhkd's side; one per ring. Drains records in batches, marks
  them durable after the commit that holds them, publishes the snapshot
  descriptor, reads lane statistics and the producers' timing samples.
- ``Reader``: read-only; the snapshot descriptor and statistics.

Guarantees:
- A ring whose header this build cannot read (magic, version, record size,
  layout) or whose lanes/capacity differ from what the consumer was configured
  with is refused with ``RingMismatch``, naming the field, the value found and
  the value expected. Nothing is ever reinterpreted or silently re-created.
- A full lane is explicit back-pressure: ``append`` raises ``RingFull``;
  ``append_batch`` appends what fits and reports how many (``AppendResult``).
  Nothing is overwritten.
- The C library copies records in and out: no Python object refers into the
  shared mapping except ``Drained.records``, a view of a private buffer.

Must never: be used from two threads at once per handle (one handle per thread),
or across ``fork``; import anything above layer 2.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple, Self

from knhkd.hotpath._ring_cffi import ffi, lib
from knhkd.hotpath.records import RECORD_SIZE, pack_into, pack_many, pack_record

RING_VERSION: Final[int] = int(lib.KNHK_RING_VERSION)
MAX_LANES: Final[int] = int(lib.KNHK_MAX_LANES)
MIN_CAPACITY: Final[int] = int(lib.KNHK_MIN_CAPACITY)
MAX_CAPACITY: Final[int] = int(lib.KNHK_MAX_CAPACITY)
SAMPLE_PERIOD: Final[int] = int(lib.KNHK_SAMPLE_PERIOD)

OP_APPEND: Final[int] = int(lib.KNHK_OP_APPEND)
OP_SNAPSHOT_READ: Final[int] = int(lib.KNHK_OP_SNAPSHOT_READ)


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #


class RingError(Exception):
    """The ring could not be used; ``code`` is the C library's ``knhk_code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class RingNotFound(RingError):
    """No ring file at the path (is knhkd running with ``[ring] enabled``?)."""


class RingMismatch(RingError):
    """The ring's header is not what this build or configuration expects."""

    def __init__(self, code: int, message: str, field: str, found: int, expected: int) -> None:
        super().__init__(code, message)
        self.field = field
        self.found = found
        self.expected = expected


class RingBusy(RingError):
    """Every lane is held by another producer, or the ring already has a consumer."""


class RingFull(RingError):
    """The producer's lane is full: knhkd has not made enough records durable yet."""


def _status_error(path: str, st: Any) -> RingError:
    code = int(st.code)
    field = ffi.string(st.field).decode() if st.field != ffi.NULL else ""
    found, expected = int(st.found), int(st.expected)
    if code == lib.KNHK_ESYS:
        err = int(st.sys_errno)
        if field == "open" and err == errno.ENOENT:
            return RingNotFound(
                code, f"no ring at {path} (is knhkd running with [ring] enabled, on this path?)"
            )
        return RingError(code, f"ring {path}: {field} failed: {os.strerror(err)}")
    if code == lib.KNHK_ENOTRING:
        return RingMismatch(
            code,
            f"{path} is not a knhk ring (magic {found:#018x}, expected {expected:#018x})",
            field,
            found,
            expected,
        )
    if code == lib.KNHK_EVERSION:
        return RingMismatch(
            code,
            f"ring {path} has header version {found}, but this build reads version {expected}: "
            "drain it with the knhkd that created it, then remove it so a new one is created",
            field,
            found,
            expected,
        )
    if code == lib.KNHK_ELAYOUT:
        return RingMismatch(
            code,
            f"ring {path}: header field {field} is {found}, expected {expected} "
            "(a damaged file, or one written by an incompatible build)",
            field,
            found,
            expected,
        )
    if code == lib.KNHK_EBUSY:
        if field == "consumer":
            return RingBusy(code, f"ring {path} already has a consumer (another knhkd?)")
        return RingBusy(code, f"ring {path}: all {found} lanes are held by other producers")
    if code == lib.KNHK_EEXIST:
        return RingError(code, f"ring {path} already exists")
    return RingError(code, f"ring {path}: {ffi.string(lib.knhk_strerror(code)).decode()} "
                     f"({field} {found})")  # fmt: skip


def _check(code: int, what: str) -> None:
    if code < 0:
        raise RingError(code, f"{what}: {ffi.string(lib.knhk_strerror(code)).decode()}")


# --------------------------------------------------------------------------- #
# Values
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class SnapshotDescriptor:
    """The 64-byte current-snapshot descriptor, as read from the ring."""

    snapshot_id: str  # 64 hex digits: the SHA-256 snapshot id
    version: int
    promoted_at_ns: int
    published_at_ns: int


@dataclass(frozen=True)
class LaneStats:
    lane: int
    head: int
    consumed: int
    durable: int
    full_count: int
    corrupt_count: int
    owner_pid: int
    claims: int

    @property
    def backlog(self) -> int:
        """Records appended but not yet durable."""
        return self.head - self.durable


@dataclass(frozen=True)
class Sample:
    lane: int
    op: int  # OP_APPEND or OP_SNAPSHOT_READ
    ticks: int  # of the whole sampled call
    count: int  # records it appended (1 for a snapshot read)


class AppendResult(NamedTuple):
    first_seq: int  # lane sequence of the first record appended
    appended: int  # records appended; the rest were refused (lane full)


class RingObservation(NamedTuple):
    """One record to append: codes, the value, and the tick stamp (0: stamp now)."""

    sector: int
    event: int
    value: Any = None
    tsc: int = 0


# --------------------------------------------------------------------------- #
# Handles
# --------------------------------------------------------------------------- #


class _Handle:
    _role: int = -1

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        st = ffi.new("knhk_status *")
        ptr = lib.knhk_ring_open(os.fsencode(self.path), self._role, st)
        if ptr == ffi.NULL:
            raise _status_error(self.path, st)
        self._ptr: Any = ptr
        self.lanes = int(lib.knhk_ring_lanes(ptr))
        self.capacity = int(lib.knhk_ring_capacity(ptr))
        self.ring_id = int(lib.knhk_ring_id(ptr))
        self._snap = ffi.new("knhk_snapshot *")

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def _p(self) -> Any:
        if self._ptr is None:
            raise RingError(int(lib.KNHK_EINVAL), f"ring {self.path}: handle is closed")
        return self._ptr

    def close(self) -> None:
        """Unmap the ring and release this handle's lane or consumer lock."""
        if self._ptr is not None:
            lib.knhk_ring_close(self._ptr)
            self._ptr = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Release the lock even when a caller forgets close(); the process
        # ending releases it too.
        if getattr(self, "_ptr", None) is not None:
            self.close()

    def tsc_hz(self) -> int:
        """The tick frequency knhkd measured and stored (0 until it has)."""
        return int(lib.knhk_ring_tsc_hz(self._p()))

    def stale(self) -> bool:
        """True when the path no longer names the file this handle mapped
        (removed, or replaced by a new ring): reopen to reach the live ring.
        Two system calls; for when durable stops advancing, not per append."""
        rc = int(lib.knhk_ring_stale(self._p()))
        if rc < 0:
            raise RingError(rc, f"ring {self.path}: cannot tell whether it is stale: "
                            f"{os.strerror(ffi.errno)}")  # fmt: skip
        return rc == 1

    def snapshot(self) -> SnapshotDescriptor | None:
        """The current-snapshot descriptor, or None before knhkd published one."""
        rc = lib.knhk_snapshot_read(self._p(), self._snap)
        if rc == lib.KNHK_EEMPTY:
            return None
        if rc == lib.KNHK_EBUSY:
            raise RingBusy(rc, f"ring {self.path}: the snapshot descriptor stays mid-update")
        _check(rc, "snapshot read")
        s = self._snap
        return SnapshotDescriptor(
            snapshot_id=bytes(ffi.buffer(s.id, 32)).hex(),
            version=int(s.version),
            promoted_at_ns=int(s.promoted_at_ns),
            published_at_ns=int(s.published_at_ns),
        )

    def lane_stats(self) -> list[LaneStats]:
        out = ffi.new("knhk_lane_stats *")
        stats = []
        for lane in range(self.lanes):
            _check(lib.knhk_lane_stats_get(self._p(), lane, out), "lane stats")
            stats.append(
                LaneStats(
                    lane=lane,
                    head=int(out.head),
                    consumed=int(out.consumed),
                    durable=int(out.durable),
                    full_count=int(out.full_count),
                    corrupt_count=int(out.corrupt_count),
                    owner_pid=int(out.owner_pid),
                    claims=int(out.claims),
                )
            )
        return stats


class Reader(_Handle):
    """Read-only: the snapshot descriptor and statistics."""

    _role = int(lib.KNHK_ROLE_READER)


class Producer(_Handle):
    """Appends to one lane of the ring (claimed at open, released at close)."""

    _role = int(lib.KNHK_ROLE_PRODUCER)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self.lane = int(lib.knhk_ring_lane(self._ptr))
        self._one = bytearray(RECORD_SIZE)
        self._one_ptr = ffi.from_buffer("knhk_record *", self._one)
        self._buf = bytearray()
        self._buf_ptr: Any = None
        self._first = ffi.new("uint64_t *")

    def append(self, sector: int, event: int, value: Any = None, tsc: int = 0) -> int:
        """Append one record; its lane sequence number. ``RingFull`` when full."""
        pack_into(self._one, 0, sector, event, value, tsc)
        rc = int(lib.knhk_append(self._p(), self._one_ptr))
        if rc == lib.KNHK_EFULL:
            raise RingFull(rc, f"ring {self.path}: lane {self.lane} is full")
        _check(rc, "append")
        return rc

    def _room(self, n: int) -> Any:
        if len(self._buf) < n * RECORD_SIZE:
            self._buf = bytearray(max(n, 64) * RECORD_SIZE)
            self._buf_ptr = ffi.from_buffer("knhk_record[]", self._buf)
        return self._buf_ptr

    def append_batch(self, records: Sequence[RingObservation | tuple[Any, ...]]) -> AppendResult:
        """Append ``records`` in order with one C call.

        Each record is ``(sector, event, value[, tsc])``. Fewer appended than
        given means the lane filled: ``records[result.appended:]`` were refused.
        ``InvalidRecord`` (nothing appended) when a value has no ring encoding.
        """
        n = len(records)
        ptr = self._room(n)
        pack_many(self._buf, records)
        return self._append_ptr(ptr, n)

    def append_packed(self, data: bytes | bytearray | memoryview) -> AppendResult:
        """Append records already packed (``records.pack_record``), one C call."""
        if len(data) % RECORD_SIZE:
            raise ValueError(f"{len(data)} bytes is not a whole number of 64-byte records")
        n = len(data) // RECORD_SIZE
        if n == 0:
            return AppendResult(int(lib.knhk_head(self._p())), 0)
        return self._append_ptr(ffi.from_buffer("knhk_record[]", data), n)

    def _append_ptr(self, ptr: Any, n: int) -> AppendResult:
        got = int(lib.knhk_append_batch(self._p(), ptr, n, self._first))
        _check(got, "append")
        return AppendResult(int(self._first[0]), got)

    def durable(self) -> int:
        """Records of this lane with a sequence below this are durable in knhkd."""
        return int(lib.knhk_durable(self._p()))

    def head(self) -> int:
        """The sequence the next append gets."""
        return int(lib.knhk_head(self._p()))


@dataclass(frozen=True)
class Drained:
    """Records taken by one ``Consumer.consume`` call.

    ``records`` holds ``count`` packed records and is overwritten by the next
    call: decode it before consuming again. ``next_seq[lane]`` is the position
    to store with the commit of these records and then to mark durable.
    """

    count: int
    records: memoryview
    next_seq: list[int]
    _lanes: Any

    def lane_of(self, i: int) -> int:
        return int(self._lanes[i])


class Consumer(_Handle):
    """knhkd's handle: one per ring, enforced by a lock the kernel drops on exit."""

    _role = int(lib.KNHK_ROLE_CONSUMER)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self._next = ffi.new("uint64_t[]", self.lanes)
        self._out: Any = None
        self._out_lanes: Any = None
        self._out_max = 0
        self._samples = ffi.new("knhk_sample[]", 8 * self.lanes)

    @classmethod
    def create_or_open(
        cls, path: str | os.PathLike[str], *, lanes: int, capacity: int, mode: int = 0o600
    ) -> Consumer:
        """Open the ring at ``path``, creating it when absent, and check that its
        lanes and capacity are the configured ones."""
        p = str(path)
        if not os.path.exists(p):
            Path(p).parent.mkdir(parents=True, exist_ok=True)
            st = ffi.new("knhk_status *")
            rc = lib.knhk_ring_create(os.fsencode(p), lanes, capacity, mode, st)
            if rc not in (lib.KNHK_OK, lib.KNHK_EEXIST):  # EEXIST: created meanwhile
                raise _status_error(p, st)
        consumer = cls(p)
        for name, found, want in (
            ("lanes", consumer.lanes, lanes),
            ("capacity", consumer.capacity, capacity),
        ):
            if found != want:
                consumer.close()
                raise RingMismatch(
                    int(lib.KNHK_ELAYOUT),
                    f"ring {p} has {name} {found}, but [ring] {name} is {want}: set it to "
                    f"{found}, or remove the file once drained (every lane's durable cursor "
                    "at its head) so that it is created anew",
                    name,
                    found,
                    want,
                )
        return consumer

    def set_tsc_hz(self, hz: int) -> None:
        _check(lib.knhk_ring_set_tsc_hz(self._p(), hz), "set tsc_hz")

    def begin(self, start: Sequence[int] | None = None) -> None:
        """Resume draining at ``start[lane]`` (None: at each lane's durable cursor).

        Each start must lie within [durable, head] of its lane.
        """
        if start is not None:
            if len(start) != self.lanes:
                raise ValueError(f"{len(start)} start positions for {self.lanes} lanes")
            arg: Any = ffi.new("uint64_t[]", list(start))
        else:
            arg = ffi.NULL
        rc = lib.knhk_consumer_begin(self._p(), arg)
        if rc == lib.KNHK_EINVAL:
            raise RingError(rc, f"ring {self.path}: a start position is outside [durable, head]")
        _check(rc, "begin")

    def consume(self, max_records: int) -> Drained:
        if max_records > self._out_max:
            self._out = ffi.new("knhk_record[]", max_records)
            self._out_lanes = ffi.new("uint32_t[]", max_records)
            self._out_max = max_records
        n = int(lib.knhk_consume(self._p(), self._out, self._out_lanes, max_records, self._next))
        _check(n, "consume")
        view = memoryview(ffi.buffer(self._out, n * RECORD_SIZE))
        return Drained(n, view, list(self._next), self._out_lanes)

    def mark_durable(self, next_seq: Sequence[int]) -> None:
        """After the commit holding the records before ``next_seq``: advance durable."""
        rc = lib.knhk_mark_durable(self._p(), ffi.new("uint64_t[]", list(next_seq)))
        if rc == lib.KNHK_EINVAL:
            raise RingError(rc, f"ring {self.path}: durable past what was consumed")
        _check(rc, "mark durable")

    def publish_snapshot(self, snapshot_id: str, version: int, promoted_at_ns: int) -> None:
        """Write the current-snapshot descriptor (seqlock; producers read it)."""
        raw = bytes.fromhex(snapshot_id)
        if len(raw) != 32:
            raise ValueError(f"snapshot id {snapshot_id!r} is not a SHA-256 in hex")
        snap = ffi.new("knhk_snapshot *")
        snap.version = version
        snap.promoted_at_ns = promoted_at_ns
        ffi.memmove(snap.id, raw, 32)
        _check(lib.knhk_snapshot_publish(self._p(), snap), "snapshot publish")

    def take_samples(self) -> list[Sample]:
        n = int(lib.knhk_samples_take(self._p(), self._samples, 8 * self.lanes))
        _check(n, "samples")
        s = self._samples
        return [Sample(int(s[i].lane), int(s[i].op), int(s[i].ticks), int(s[i].count))
                for i in range(n)]  # fmt: skip


def pack_batch(records: Iterable[RingObservation | tuple[Any, ...]]) -> bytes:
    """Pack records for ``Producer.append_packed`` (or another process)."""
    return b"".join(pack_record(r[0], r[1], r[2], r[3] if len(r) > 3 else 0) for r in records)


def ticks_now() -> int:
    """The current tick count (RDTSC on x86-64)."""
    return int(lib.knhk_ticks_now())


def ticks_source() -> str:
    return str(ffi.string(lib.knhk_ticks_source()).decode())


def floor_ticks(blocks: int) -> list[float]:
    """This machine's hot-path floor: ticks per bare 64-byte store, one
    figure per timed block of 64 (native/src/knhk_codec.h, knhk_floor_ticks;
    the floor bench/ring.py measures). Blocks the calling thread: call it off
    the event loop."""
    out = ffi.new("double[]", blocks)
    if lib.knhk_floor_ticks(blocks, out) != 0:
        raise MemoryError("knhk_floor_ticks: no buffer")
    return list(out)
