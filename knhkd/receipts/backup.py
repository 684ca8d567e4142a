"""Taking a backup of an open store: a base (a compact LMDB copy) or an
incremental (the append-only records since the parent, and the mutable state
whole), each with a manifest naming the signed checkpoint it covers.

Shared by the daemon (loop/backup.py, over the admin socket and on schedule)
and by tools that work on a stopped daemon's data directory
(datadir/backup.py: ``backup_data_dir``, the pre-migration backup).

Guarantees:
- One read transaction per backup: the copy (py-lmdb ``Environment.copy``
  with ``compact=True`` and that transaction) or the segment, and the
  manifest's checkpoint, tree size and observation counter all describe the
  same committed state. Writers keep committing meanwhile (LMDB readers never
  block the writer).
- The covered checkpoint is the latest signed one in that transaction: every
  receipt it signs, and every observation those receipts commit to, is in
  the backup.
- Files are written into a temporary directory beside the target and renamed
  into place with the manifest last, so a backup directory that has a
  ``manifest.json`` is complete; the manifest lists each file's size and
  SHA-256.
- An incremental's segment holds, for the append-only databases (``APPEND``),
  every record from the parent's high-water mark on, and for every other
  database (``MUTABLE``) all its records: applying base + segments in order
  rebuilds the store as of the last one.
- A segment is written and read a chunk at a time (``segment.frames``:
  length-prefixed ``SegmentChunk`` frames of at most ``CHUNK_ROWS`` rows or
  about ``CHUNK_BYTES``): taking or restoring one holds a chunk in memory, not
  the segment (an hour at 1,000 observations/s is ~3.6 M records; built
  whole, 1 M of them took 0.9 GB of the daemon's RSS). Incrementals of
  earlier releases (``segment.msgpack``, one ``Segment``) are still read.

Must never: hold the read transaction across an await (callers run it in a
worker thread); write into the store; back up a secret key.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import lmdb
import msgspec

from knhkd.model import BackupFile, BackupKind, BackupManifest
from knhkd.receipts import canonical, keyring, merkle, tlog_checkpoint
from knhkd.receipts.log import read_head
from knhkd.receipts.tree import MerkleTree
from knhkd.store.env import Store
from knhkd.store.ids import seq_of
from knhkd.store.schema import SCHEMA_VERSION

FORMAT = "knhkd-backup-v1"
MANIFEST = "manifest.json"
DATA_FILE = "data.mdb"
SEGMENT_FRAMES = "segment.frames"
# An incremental's segment as earlier releases wrote it: one ``Segment``.
SEGMENT_FILE = "segment.msgpack"
KEYRING_FILE = "public.json"
# A chunk of a segment: at most this many rows, and it is closed once its
# values pass this many bytes.
CHUNK_ROWS = 4096
CHUNK_BYTES = 4 * 1024 * 1024
_FRAME_HEAD = struct.Struct(">I")
# A frame is at most about CHUNK_BYTES, or one row when a single value is
# larger (a big snapshot); a length past this is damage (the manifest's
# SHA-256 has then usually said so already), not a reason to allocate it.
MAX_FRAME_BYTES = 1 << 30

# Databases that only ever grow at their end, and how a record's key says
# where it stands: (receipts, observations) high-water marks of the parent.
APPEND = ("receipts", "merkle", "checkpoints", "observations", "observation_leaves")
# Everything else is copied whole in each incremental (small: knowledge,
# proposals, governance, keys, meta...).
MUTABLE = (
    "patterns",
    "proposals",
    "proposal_deltas",
    "validations",
    "snapshots",
    "keys",
    "relaxations",
    "cycles",
    "meta",
)


class BackupError(Exception):
    """A backup could not be taken or read; the message says why."""


class Segment(msgspec.Struct):
    """``segment.msgpack`` (earlier releases): database name -> raw (key,
    value) records."""

    tables: dict[str, list[tuple[bytes, bytes]]]


class SegmentChunk(msgspec.Struct, array_like=True):
    """One frame of ``segment.frames``: rows of one database, applied in
    order. Every ``MUTABLE`` database has at least one chunk (empty when it
    has no rows), and is cleared at its first."""

    table: str
    rows: list[tuple[bytes, bytes]]


_manifest_decoder = msgspec.json.Decoder(BackupManifest)
_segment_decoder = msgspec.msgpack.Decoder(Segment)
_chunk_decoder = msgspec.msgpack.Decoder(SegmentChunk)
_chunk_encoder = msgspec.msgpack.Encoder()


def encode_manifest(m: BackupManifest) -> bytes:
    return msgspec.json.format(msgspec.json.encode(m), indent=2) + b"\n"


def decode_manifest(data: bytes, where: Path) -> BackupManifest:
    try:
        m = _manifest_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BackupError(f"{where}: not a knhkd backup manifest: {exc}") from None
    if m.format != FORMAT:
        raise BackupError(f"{where}: unknown backup format {m.format!r}")
    return m


def read_segment(directory: Path, files: Iterable[str]) -> Iterator[SegmentChunk]:
    """The chunks of the incremental in ``directory`` (whose manifest lists
    ``files``), a chunk at a time; ``BackupError`` at the first damage."""
    if SEGMENT_FRAMES in files:
        yield from _frames(directory / SEGMENT_FRAMES)
        return
    # An earlier release's incremental: one message, read whole.
    path = directory / SEGMENT_FILE
    try:
        segment = _segment_decoder.decode(path.read_bytes())
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BackupError(f"{path}: not a backup segment: {exc}") from None
    for name, rows in segment.tables.items():
        yield SegmentChunk(name, rows)


def _frames(path: Path) -> Iterator[SegmentChunk]:
    with path.open("rb") as fh:
        at = 0
        while head := fh.read(_FRAME_HEAD.size):
            if len(head) < _FRAME_HEAD.size:
                raise BackupError(f"{path}: cut off in the frame at byte {at}")
            (size,) = _FRAME_HEAD.unpack(head)
            if size > MAX_FRAME_BYTES:
                raise BackupError(f"{path}: a frame of {size} bytes at byte {at}: damaged")
            body = fh.read(size)
            if len(body) < size:
                raise BackupError(f"{path}: cut off in the frame at byte {at}")
            try:
                yield _chunk_decoder.decode(body)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise BackupError(f"{path}: not a segment frame at byte {at}: {exc}") from None
            at += _FRAME_HEAD.size + size


class _SegmentWriter:
    """Rows in, framed chunks out to ``fh``."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh

    def table(self, name: str, rows: Iterable[tuple[bytes, bytes]]) -> None:
        """Every row of ``rows`` under ``name``; a ``MUTABLE`` database gets a
        chunk even when it has no rows (its restore clears it there)."""
        chunk: list[tuple[bytes, bytes]] = []
        size = 0
        wrote = False
        for key, value in rows:
            # Copied: a row may be a view into the read transaction's pages.
            chunk.append((bytes(key), bytes(value)))
            size += len(value)
            if len(chunk) >= CHUNK_ROWS or size >= CHUNK_BYTES:
                self._write(name, chunk)
                chunk, size, wrote = [], 0, True
        if chunk or (not wrote and name in MUTABLE):
            self._write(name, chunk)

    def _write(self, name: str, rows: list[tuple[bytes, bytes]]) -> None:
        body = _chunk_encoder.encode(SegmentChunk(name, rows))
        if len(body) > MAX_FRAME_BYTES:
            raise BackupError(f"a record of {name!r} is too large for a segment frame")
        self.fh.write(_FRAME_HEAD.pack(len(body)))
        self.fh.write(body)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _node_after(key: bytes, size: int) -> bool:
    """A tree node (1-byte level, 8-byte index) that covers a leaf at or after ``size``."""
    level, index = key[0], int.from_bytes(key[1:], "big")
    return (index + 1) << level > size


def _write_segment(
    store: Store, txn: lmdb.Transaction, parent: BackupManifest, out: _SegmentWriter
) -> None:
    t = store.tables.by_name
    erased: list[int] = []

    def receipts(rows: Iterable[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
        # An erasure since the parent rewrote older observations in place
        # (content and salt destroyed, loop/erasure.py): the segment carries
        # their erased forms, or base + segments would bring the content back.
        for key, value in rows:
            body = canonical.decode_record(bytes(value)).body
            if body.kind == "observations_erased":
                erased.extend(
                    seq
                    for seq in map(seq_of, body.subject_ids)
                    if seq < parent.observations_next  # newer ones are in the segment
                )
            yield key, value

    # A seek, not a scan: keys are big-endian, so the new records are at the end.
    out.table("receipts", receipts(t["receipts"].items_encoded(txn, start=_key(parent.tree_size))))
    for name, start in (
        # Checkpoints sign sizes that only grow; one equal to the parent's
        # tree size may have been signed after the parent's copy.
        ("checkpoints", parent.tree_size),
        ("observations", parent.observations_next),
        ("observation_leaves", parent.observations_next),
    ):
        out.table(name, t[name].items_encoded(txn, start=_key(start)))
    for name in ("observations", "observation_leaves"):
        rows = ((_key(seq), t[name].get_raw(txn, seq)) for seq in sorted(set(erased)))
        out.table(name, ((k, v) for k, v in rows if v is not None))

    def nodes() -> Iterator[tuple[bytes, bytes]]:
        # Tree nodes are ordered by level, then index: seek within each level.
        for level in range(64):
            first = bytes([level]) + (parent.tree_size >> level).to_bytes(8, "big")
            for key, value in t["merkle"].items_encoded(txn, start=first):
                if key[0] != level:
                    break
                if _node_after(key, parent.tree_size):
                    yield key, value

    out.table("merkle", nodes())
    for name in MUTABLE:
        out.table(name, t[name].items_encoded(txn))


def _key(seq: int) -> bytes:
    return seq.to_bytes(8, "big")


def _state(store: Store, txn: lmdb.Transaction) -> tuple[tlog_checkpoint.Checkpoint, int, int, int]:
    """(latest checkpoint, tree size, observations next, last receipt time)."""
    t = store.tables
    last = t.checkpoints.last(txn)
    if last is None:
        raise BackupError("the log has no signed checkpoint yet: nothing a backup could cover")
    cp = tlog_checkpoint.parse(last[1])[0]
    size = t.tree_size.get(txn) or 0
    head = read_head(store, txn)
    return cp, size, t.observations_next.get(txn) or 0, head.timestamp_ns


def take(
    store: Store,
    out_root: Path,
    kind: BackupKind,
    parent: BackupManifest | None = None,
    *,
    clock_ns: Callable[[], int] = time.time_ns,
) -> BackupManifest:
    """Write one backup under ``out_root/<id>``; blocking (run it in a thread)."""
    if kind == "incremental" and parent is None:
        raise BackupError("an incremental backup needs a parent")
    out_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    created = clock_ns()
    backup_id = f"{created:020d}-{kind}"
    final = out_root / backup_id
    tmp = out_root / f".{backup_id}.tmp"
    tmp.mkdir(mode=0o700)
    try:
        with store.reader() as txn:
            cp, size, obs_next, last_ns = _state(store, txn)
            # The store's own version: a pre-migration backup is of the older one.
            version = store.tables.schema_version.get(txn) or SCHEMA_VERSION
            origin = store.tables.log_origin.get(txn) or cp.origin
            ring = keyring.read_keyring(store, txn)
            if parent is None:
                # One transaction: the copy is the state this manifest names.
                store.env.copy(str(tmp), compact=True, txn=txn)
            else:
                if parent.origin != origin or parent.tree_size > size:
                    raise BackupError(f"{parent.id} is not a backup of this log")
                with (tmp / SEGMENT_FRAMES).open("wb") as fh:
                    _write_segment(store, txn, parent, _SegmentWriter(fh))
        (tmp / KEYRING_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(ring), indent=2))
        names = [DATA_FILE if parent is None else SEGMENT_FRAMES, KEYRING_FILE]
        files = [BackupFile(n, (tmp / n).stat().st_size, sha256_file(tmp / n)) for n in names]
        manifest = BackupManifest(
            format=FORMAT,
            id=backup_id,
            kind=kind,
            parent_id=None if parent is None else parent.id,
            schema_version=version,
            created_ns=created,
            origin=origin,
            checkpoint=cp.text,
            checkpoint_size=cp.size,
            tree_size=size,
            observations_next=obs_next,
            from_tree_size=0 if parent is None else parent.tree_size,
            from_observations=0 if parent is None else parent.observations_next,
            last_receipt_ns=last_ns,
            files=files,
        )
        for n in names:
            _fsync(tmp / n)
        (tmp / MANIFEST).write_bytes(encode_manifest(manifest))
        _fsync(tmp / MANIFEST)
        os.replace(tmp, final)
        _fsync(out_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


# Files and directories alike: open read-only, fsync, close.
_fsync = keyring._fsync_dir


def consistency_to_latest(store: Store, size: int) -> tuple[str, list[bytes]]:
    """The latest signed checkpoint and an RFC 9162 consistency proof from the
    tree of ``size`` leaves to it: what a backup of ``size`` is checked with."""
    with store.reader() as txn:
        last = store.tables.checkpoints.last(txn)
        if last is None:
            raise BackupError("the live log has no signed checkpoint")
        cp = tlog_checkpoint.parse(last[1])[0]
        if cp.size < size:
            raise BackupError(
                f"the live log's latest checkpoint ({cp.size}) is older than the backup's ({size})"
            )
        proof = merkle.consistency_proof(MerkleTree(store).perfect(txn), size, cp.size)
    return cp.text, proof


def receipt_hash_at(store: Store, txn: lmdb.Transaction, seq: int) -> tuple[str, int]:
    """(hash, time) of stored receipt ``seq``: the chain head after it."""
    raw = store.tables.receipts.get_raw(txn, seq)
    if raw is None:
        raise BackupError(f"receipt {seq} is not stored")
    body = canonical.decode_record(raw).body
    return canonical.receipt_hash(body), body.timestamp_ns
