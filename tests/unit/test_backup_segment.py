"""``segment.frames`` (receipts/backup.py) read back whole, and every kind of
damage a frame can carry refused with where it is (real files)."""

from __future__ import annotations

import struct
from pathlib import Path

import msgspec
import pytest

from knhkd.receipts import backup as rb


def _write(path: Path, tables: dict[str, list[tuple[bytes, bytes]]]) -> None:
    with path.open("wb") as fh:
        out = rb._SegmentWriter(fh)
        for name, rows in tables.items():
            out.table(name, rows)


def test_rows_come_back_in_chunks_in_order(tmp_path: Path) -> None:
    rows = [(i.to_bytes(8, "big"), b"v%d" % i) for i in range(rb.CHUNK_ROWS * 2 + 5)]
    _write(tmp_path / rb.SEGMENT_FRAMES, {"observations": rows, "meta": [], "receipts": []})
    chunks = list(rb.read_segment(tmp_path, [rb.SEGMENT_FRAMES]))
    assert [(c.table, len(c.rows)) for c in chunks] == [
        ("observations", rb.CHUNK_ROWS),
        ("observations", rb.CHUNK_ROWS),
        ("observations", 5),
        ("meta", 0),  # a MUTABLE database is named even empty: its restore clears it
    ]
    assert [r for c in chunks for r in c.rows] == rows


def test_a_chunk_closes_at_its_byte_bound(tmp_path: Path) -> None:
    big = b"x" * (rb.CHUNK_BYTES // 2)
    _write(tmp_path / rb.SEGMENT_FRAMES, {"observations": [(b"%08d" % i, big) for i in range(5)]})
    sizes = [len(c.rows) for c in rb.read_segment(tmp_path, [rb.SEGMENT_FRAMES])]
    assert sizes == [2, 2, 1]


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda d: d[:2], "cut off in the frame at byte 0"),
        (lambda d: d[:-3], "cut off in the frame at byte 0"),
        (lambda d: struct.pack(">I", rb.MAX_FRAME_BYTES + 1) + d[4:], "damaged"),
        (lambda d: struct.pack(">I", 3) + b"\xc1\xc1\xc1", "not a segment frame at byte 0"),
        (lambda d: d + struct.pack(">I", 2) + msgspec.msgpack.encode([1]), "at byte"),
    ],
)
def test_damage_is_refused_with_where(tmp_path: Path, damage: object, says: str) -> None:
    _write(tmp_path / rb.SEGMENT_FRAMES, {"receipts": [(b"k", b"v")]})
    path = tmp_path / rb.SEGMENT_FRAMES
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(rb.BackupError, match=says):
        list(rb.read_segment(tmp_path, [rb.SEGMENT_FRAMES]))


def test_an_earlier_releases_segment_is_read(tmp_path: Path) -> None:
    rows = [(b"\0" * 8, b"a"), (b"\0" * 7 + b"\1", b"b")]
    segment = rb.Segment({"observations": rows, "meta": []})
    (tmp_path / rb.SEGMENT_FILE).write_bytes(msgspec.msgpack.encode(segment))
    chunks = list(rb.read_segment(tmp_path, [rb.SEGMENT_FILE, rb.KEYRING_FILE]))
    assert [(c.table, c.rows) for c in chunks] == [("observations", rows), ("meta", [])]
    (tmp_path / rb.SEGMENT_FILE).write_bytes(b"\xc1")
    with pytest.raises(rb.BackupError, match="not a backup segment"):
        list(rb.read_segment(tmp_path, [rb.SEGMENT_FILE]))
