"""The on-disk schema, in one place: every LMDB database, how its keys are
encoded, what its values are, every key of ``meta``, and ``SCHEMA_VERSION``.

Guarantees:
- This module is the only place a database name or a ``meta`` key is spelled;
  store/tables.py binds these declarations to an open environment and every
  other module reads and writes through those accessors
  (tests/unit/test_store_schema.py fails on a name spelled anywhere else).
- Each codec reproduces byte for byte the encoding knhkd has always written:
  an existing data directory opens and verifies unchanged.
- Value types are the msgspec Structs of knhkd/model.py, or raw bytes where
  the exact stored bytes are what is hashed (receipts, Merkle nodes).

Must never: change a name, a key layout or a value encoding without raising
``SCHEMA_VERSION`` and adding the step that migrates the previous version
(datadir/migrate.py: a store of an older version is refused at start and
migrated by ``knhkd migrate``; a newer one is always refused: store/env.py);
import anything above ``model``; perform I/O.

Versions:
  1. the first schema.
  2. ``observation_leaves`` (each observation's salted digest and its salt:
     batch receipts commit to digests, so content can be erased),
     ``observations.salted_from`` and the empty ``scrub`` database.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

from knhkd.model import (
    CycleReport,
    DetectedPattern,
    Observation,
    Proposal,
    PublicKeyEntry,
    ReceiptHead,
    Relaxation,
    RingCursor,
    SnapshotRecord,
    TickBaseline,
    ValidationReport,
)
from knhkd.store.ids import key_seq, seq_key

SCHEMA_VERSION = 2

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Codec(Generic[T]):
    """How a key or value of one type is laid out in LMDB."""

    encode: Callable[[T], bytes]
    decode: Callable[[bytes], T]
    layout: str


# --------------------------------------------------------------------------- #
# Key codecs
# --------------------------------------------------------------------------- #

# Big-endian so that LMDB's byte order is numeric order (cursor ranges, last()).
U64: Codec[int] = Codec(seq_key, key_seq, "8-byte big-endian unsigned integer")
# ``replace``: only fsck decodes these keys, and it must be able to name a
# damaged one rather than stop on it.
UTF8_KEY: Codec[str] = Codec(str.encode, lambda raw: raw.decode(errors="replace"), "UTF-8 text")
OPAQUE: Codec[bytes] = Codec(bytes, bytes, "bytes built by the caller")


def _pattern_key(key: tuple[int, str]) -> bytes:
    return key[0].to_bytes(8, "big") + key[1].encode()


def _unpattern_key(raw: bytes) -> tuple[int, str]:
    return int.from_bytes(raw[:8], "big"), raw[8:].decode(errors="replace")


# Detection time first: the database iterates oldest to newest.
PATTERN_KEY: Codec[tuple[int, str]] = Codec(
    _pattern_key, _unpattern_key, "8-byte big-endian detected_at_ns, then the UTF-8 pattern id"
)


def _node_key(key: tuple[int, int]) -> bytes:
    level, index = key
    return bytes([level]) + index.to_bytes(8, "big")


def _unnode_key(raw: bytes) -> tuple[int, int]:
    return raw[0], int.from_bytes(raw[1:], "big")


NODE_KEY: Codec[tuple[int, int]] = Codec(
    _node_key, _unnode_key, "1-byte level, then 8-byte big-endian index"
)

# --------------------------------------------------------------------------- #
# Value codecs
# --------------------------------------------------------------------------- #

_encoder = msgspec.msgpack.Encoder()


def msgpack_of(kind: type[T]) -> Codec[T]:
    """A model.py Struct as MessagePack (msgspec's default encoder)."""
    return Codec(_encoder.encode, msgspec.msgpack.Decoder(kind).decode, f"msgpack {kind.__name__}")


RAW: Codec[bytes] = Codec(bytes, bytes, "raw bytes, stored and returned exactly")
TEXT: Codec[str] = Codec(str.encode, bytes.decode, "UTF-8 text")
DECIMAL: Codec[int] = Codec(lambda n: str(n).encode(), int, "ASCII decimal integer")

# --------------------------------------------------------------------------- #
# Databases
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, slots=True)
class TableSpec(Generic[K, V]):
    name: str
    key: Codec[K]
    value: Codec[V]
    # The key a value is stored under, where the value names it.
    key_of: Callable[[V], K] | None = None


OBSERVATIONS = TableSpec("observations", U64, msgpack_of(Observation), lambda o: o.seq)
PATTERNS = TableSpec(
    "patterns", PATTERN_KEY, msgpack_of(DetectedPattern), lambda p: (p.detected_at_ns, p.id)
)
PROPOSALS = TableSpec("proposals", UTF8_KEY, msgpack_of(Proposal), lambda p: p.id)
# (parent snapshot id, delta id) -> proposal id: the planner does not propose
# the same change against the same snapshot twice. The key is plan's
# ``change_key``: the store does not know how a change is identified.
PROPOSAL_DELTAS = TableSpec("proposal_deltas", OPAQUE, TEXT)
# By proposal id.
VALIDATIONS = TableSpec("validations", UTF8_KEY, msgpack_of(ValidationReport))
SNAPSHOTS = TableSpec(
    "snapshots", UTF8_KEY, msgpack_of(SnapshotRecord), lambda r: r.meta.snapshot_id
)
# seq -> the canonical record (receipts/canonical.py), hashed as stored.
RECEIPTS = TableSpec("receipts", U64, RAW)
# Merkle tree nodes over the receipts: (level, index) -> SHA-256.
MERKLE = TableSpec("merkle", NODE_KEY, RAW)
# Signed checkpoints (C2SP tlog-checkpoint notes) by tree size.
CHECKPOINTS = TableSpec("checkpoints", U64, TEXT)
# The public keyring: key id -> PublicKeyEntry (with its validity window).
KEYS = TableSpec("keys", UTF8_KEY, msgpack_of(PublicKeyEntry), lambda e: e.key_id)
# Guard relaxation records by relaxation id (governance/relaxation.py).
RELAXATIONS = TableSpec("relaxations", UTF8_KEY, msgpack_of(Relaxation), lambda r: r.id)
CYCLES = TableSpec("cycles", UTF8_KEY, msgpack_of(CycleReport), lambda c: c.id)
META = TableSpec("meta", OPAQUE, RAW)
# v2. seq -> SHA-256(salt || stored record) (32 bytes) followed by the 16-byte
# salt; an erased observation keeps the digest alone (its salt is destroyed:
# the digest then reveals nothing of the content it committed to).
OBSERVATION_LEAVES = TableSpec("observation_leaves", U64, RAW)
LEAF_DIGEST_BYTES = 32
LEAF_SALT_BYTES = 16
# v2. Always empty between transactions: filler written over freed pages and
# deleted again, so erased content does not linger in the file (store/scrub.py).
SCRUB = TableSpec("scrub", U64, RAW)

# In creation order (the order of the original DB_NAMES).
TABLES: tuple[TableSpec[Any, Any], ...] = (
    OBSERVATIONS,
    PATTERNS,
    PROPOSALS,
    PROPOSAL_DELTAS,
    VALIDATIONS,
    SNAPSHOTS,
    RECEIPTS,
    MERKLE,
    CHECKPOINTS,
    KEYS,
    RELAXATIONS,
    CYCLES,
    META,
    OBSERVATION_LEAVES,
    SCRUB,
)
DB_NAMES = tuple(t.name for t in TABLES)

# --------------------------------------------------------------------------- #
# Keys of ``meta``
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, slots=True)
class MetaSpec(Generic[V]):
    key: bytes
    value: Codec[V]


# Compared as bytes by store/env.py, so that a damaged value is reported, not parsed.
SCHEMA_VERSION_SLOT = MetaSpec(b"schema_version", DECIMAL)
# The next observation sequence number (= observations stored).
OBS_NEXT = MetaSpec(b"observations.next_seq", DECIMAL)
RECEIPT_HEAD = MetaSpec(b"receipts.head", msgpack_of(ReceiptHead))
# The log's name in its checkpoints, fixed at first start.
ORIGIN = MetaSpec(b"receipts.origin", TEXT)
MERKLE_SIZE = MetaSpec(b"merkle.size", DECIMAL)
KEYS_CURRENT = MetaSpec(b"keys.current", TEXT)
SNAPSHOT_CURRENT = MetaSpec(b"snapshots.current", TEXT)
# model.RingCursor: where the ring drain resumes; written in the transaction
# that commits the ring records it covers (exactly-once across crashes).
RING_CURSOR = MetaSpec(b"ring.cursor", msgpack_of(RingCursor))
# The digest of the doctrine and guard sets last receipted as in force.
DOCTRINES_DIGEST = MetaSpec(b"governance.doctrines_digest", TEXT)
GUARDS_DIGEST = MetaSpec(b"governance.guards_digest", TEXT)

# v2. The first observation sequence number whose batch receipt commits to
# salted digests (``leaves_sha256``); those before it (schema v1) commit to
# their content (``records_sha256``). Absent: 0.
SALTED_FROM = MetaSpec(b"observations.salted_from", DECIMAL)

# The first observation sequence number still stored: every one before it
# was archived and deleted by retention (loop/retention.py), and the batch
# receipts that committed to them cover nothing stored. Absent: 0. A key
# added to v2 without a migration: absent means nothing was deleted.
RETAINED_FROM = MetaSpec(b"observations.retained_from", DECIMAL)
# The first receipt sequence number retention has not yet looked past: batch
# receipts before it cover only archived observations. Absent: 0.
RETENTION_RECEIPTS_FROM = MetaSpec(b"retention.receipts_from", DECIMAL)

# Encryption at rest (crypto/sealing.py): a token sealed under the storage
# key at the first start with one, so a wrong or missing key is refused
# before any record is read. Absent: observations were never sealed.
STORAGE_KEY_CHECK = MetaSpec(b"storage.key_check", RAW)

# model.TickBaseline: Q5's baseline, written in the transaction that makes
# its snapshot current (loop/knowledge_state.py). A key added to v2 without
# a migration: absent means none was taken (the daemon then takes its first
# figures since start-up).
TICK_BASELINE = MetaSpec(b"figures.tick_baseline", msgpack_of(TickBaseline))

# Declared by the first schema and never written; reserved so that no other
# record takes the name.
META_SNAPSHOT_HISTORY = b"snapshots.history"

META_KEYS: tuple[bytes, ...] = (
    *(
        spec.key
        for spec in (
            SCHEMA_VERSION_SLOT,
            OBS_NEXT,
            RECEIPT_HEAD,
            ORIGIN,
            MERKLE_SIZE,
            KEYS_CURRENT,
            SNAPSHOT_CURRENT,
            RING_CURSOR,
            DOCTRINES_DIGEST,
            GUARDS_DIGEST,
            SALTED_FROM,
            RETAINED_FROM,
            RETENTION_RECEIPTS_FROM,
            STORAGE_KEY_CHECK,
            TICK_BASELINE,
        )
    ),
    META_SNAPSHOT_HISTORY,
)

# The names store/env.py has always exported.
META_SCHEMA = SCHEMA_VERSION_SLOT.key
META_OBS_NEXT = OBS_NEXT.key
META_RECEIPT_HEAD = RECEIPT_HEAD.key
META_SNAPSHOT_CURRENT = SNAPSHOT_CURRENT.key
META_RING_CURSOR = RING_CURSOR.key
