"""Typed accessors for the databases and ``meta`` keys of store/schema.py.

``store.tables`` (built once per open store) has one ``Table`` per database and
one ``MetaSlot`` per ``meta`` key. Every method takes the caller's
``lmdb.Transaction``: an accessor never begins, commits or holds one.

Guarantees:
- Keys and values are encoded with the codec the schema declares, so a record
  read back is the one written, and every record is laid out as before the
  accessors existed.
- The ``*_raw`` methods store and return the exact bytes (receipts are hashed as
  stored; the C codec hands over records it already encoded).
- An accessor is one call deep: the database handle is resolved when the store
  opens, and nothing is copied or decoded that the caller did not ask for
  (``put_appending`` hands its iterable to py-lmdb's ``putmulti`` as is).

Transactions must be begun with ``buffers=False`` (``Store.reader`` and the
writer's are), so that what LMDB returns is ``bytes``: the accessors neither
copy nor check it.

Must never: open a transaction; name a database or a ``meta`` key not declared
in store/schema.py; import anything above ``model``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import lmdb

from knhkd.store import schema
from knhkd.store.schema import MetaSpec, TableSpec

K = TypeVar("K")
V = TypeVar("V")

_META_KEYS = frozenset(schema.META_KEYS)
# The attribute of ``Tables`` that holds each database of schema.TABLES.
_TABLE_ATTRS = (
    "observations",
    "patterns",
    "proposals",
    "proposal_deltas",
    "validations",
    "snapshots",
    "receipts",
    "tree",
    "checkpoints",
    "keys",
    "relaxations",
    "cycles",
    "meta",
    "observation_leaves",
    "scrub",
)


class Table(Generic[K, V]):
    """One database: keys of type ``K``, values of type ``V``."""

    __slots__ = ("_db", "_dec", "_enc", "_key", "_key_of", "_open", "_seal", "_unkey", "name")

    def __init__(self, spec: TableSpec[K, V], dbs: Mapping[str, Any]) -> None:
        self.name = spec.name
        self._db = dbs[spec.name]
        self._key = spec.key.encode
        self._unkey = spec.key.decode
        self._enc = spec.value.encode
        self._dec = spec.value.decode
        self._key_of = spec.key_of
        self._seal: Callable[[bytes], bytes] | None = None
        self._open: Callable[[bytes], bytes] | None = None

    def seal_with(self, seal: Callable[[bytes], bytes], open_: Callable[[bytes], bytes]) -> None:
        """Encryption at rest: values are sealed as they are encoded (``put``,
        ``add``, ``put_appending``) and opened as they are decoded. The
        ``*_raw`` and ``*_encoded`` methods keep the stored (sealed) bytes:
        ``open_raw`` opens one."""
        enc, dec = self._enc, self._dec
        self._enc = lambda value: seal(enc(value))
        self._dec = lambda raw: dec(open_(raw))
        self._seal, self._open = seal, open_

    def open_raw(self, raw: bytes) -> bytes:
        """A stored value's plaintext bytes (itself when sealing is off)."""
        return raw if self._open is None else self._open(raw)

    def get(self, txn: lmdb.Transaction, key: K) -> V | None:
        raw: Any = txn.get(self._key(key), db=self._db)
        return None if raw is None else self._dec(raw)

    def get_raw(self, txn: lmdb.Transaction, key: K) -> bytes | None:
        raw: Any = txn.get(self._key(key), db=self._db)
        return raw  # type: ignore[no-any-return]

    def decode(self, raw: bytes) -> V:
        """A stored value as its type (raises msgspec's errors): for readers
        that take records one at a time so a damaged one is named or skipped,
        not the iteration stopped (fsck, the analyzer's rebuild)."""
        return self._dec(raw)

    def probe(self, txn: lmdb.Transaction) -> None:
        """Read the first and the last record: LMDB walks from the database's
        root page down both edges, so a damaged page on the way raises
        ``lmdb.Error`` (the start-up check's cheap structural look)."""
        cursor: Any = txn.cursor(db=self._db)
        if cursor.first():
            cursor.last()

    def put(self, txn: lmdb.Transaction, key: K, value: V, *, overwrite: bool = True) -> bool:
        """False when ``overwrite`` is off and the key exists (nothing written)."""
        return bool(txn.put(self._key(key), self._enc(value), db=self._db, overwrite=overwrite))

    def put_raw(
        self, txn: lmdb.Transaction, key: K, value: bytes, *, overwrite: bool = True
    ) -> bool:
        return bool(txn.put(self._key(key), value, db=self._db, overwrite=overwrite))

    def clear(self, txn: lmdb.Transaction) -> int:
        """Delete every record; returns how many there were."""
        n = self.count(txn)
        txn.drop(self._db, delete=False)
        return n

    def add(self, txn: lmdb.Transaction, value: V, *, overwrite: bool = True) -> bool:
        """Put ``value`` under the key it names (the schema's ``key_of``)."""
        if self._key_of is None:
            raise TypeError(f"database {self.name!r} is not keyed by its values; use put")
        return self.put(txn, self._key_of(value), value, overwrite=overwrite)

    def put_appending(self, txn: lmdb.Transaction, records: Iterable[tuple[bytes, Any]]) -> int:
        """Store pre-encoded ``(key, value)`` pairs whose keys all sort after the
        last stored key, in order, with one call into py-lmdb. Returns how many
        were consumed. Sealed (``seal_with``) on the way."""
        seal = self._seal
        if seal is not None:
            records = ((key, seal(value)) for key, value in records)
        consumed, _ = txn.cursor(db=self._db).putmulti(records, append=True)
        return int(consumed)

    def put_many_raw(self, txn: lmdb.Transaction, records: Iterable[tuple[bytes, bytes]]) -> int:
        """Store encoded ``(key, value)`` pairs in any order, overwriting (a
        restore applying a backup's segment). Returns how many were stored."""
        consumed, _ = txn.cursor(db=self._db).putmulti(records)
        return int(consumed)

    def items_encoded(
        self, txn: lmdb.Transaction, *, start: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Keys and values exactly as stored, from the first key at or after
        the encoded ``start`` (a backup copies records without decoding them)."""
        cursor: Any = txn.cursor(db=self._db)
        found = cursor.first() if start is None else cursor.set_range(start)
        if found:
            yield from cursor

    def delete(self, txn: lmdb.Transaction, key: K) -> bool:
        return bool(txn.delete(self._key(key), db=self._db))

    def delete_from(self, txn: lmdb.Transaction, start: K) -> int:
        """Delete every record whose key is at or after ``start`` (a restore
        cutting the append-only databases at a point). Returns how many."""
        cursor: Any = txn.cursor(db=self._db)
        n = 0
        if cursor.set_range(self._key(start)):
            while cursor.delete():
                n += 1
        return n

    def delete_range(self, txn: lmdb.Transaction, start: K, end: K) -> int:
        """Delete every record whose key is in ``[start, end)`` (retention
        removing archived observations, a bounded range per transaction)."""
        cursor: Any = txn.cursor(db=self._db)
        stop = self._key(end)
        n = 0
        if cursor.set_range(self._key(start)):
            while cursor.key() < stop and cursor.delete():
                n += 1
        return n

    def items(self, txn: lmdb.Transaction, *, start: K | None = None) -> Iterator[tuple[K, V]]:
        """In key order, from the first key at or after ``start``."""
        dec = self._dec
        for key, raw in self.items_raw(txn, start=start):
            yield key, dec(raw)

    def items_raw(
        self, txn: lmdb.Transaction, *, start: K | None = None
    ) -> Iterator[tuple[K, bytes]]:
        cursor: Any = txn.cursor(db=self._db)
        if start is None:
            if not cursor.first():
                return
        elif not cursor.set_range(self._key(start)):
            return
        unkey = self._unkey
        for key, raw in cursor:
            yield unkey(key), raw

    def values(self, txn: lmdb.Transaction) -> Iterator[V]:
        dec = self._dec
        cursor: Any = txn.cursor(db=self._db)
        for _, raw in cursor:
            yield dec(raw)

    def items_reversed(self, txn: lmdb.Transaction) -> Iterator[tuple[K, V]]:
        """In reverse key order, from the last key."""
        cursor: Any = txn.cursor(db=self._db)
        if not cursor.last():
            return
        unkey, dec = self._unkey, self._dec
        for key, raw in cursor.iterprev():
            yield unkey(key), dec(raw)

    def items_reversed_raw(self, txn: lmdb.Transaction) -> Iterator[tuple[K, bytes]]:
        """``items_reversed`` undecoded: for a reader that decodes each record
        itself (and survives one that does not decode)."""
        cursor: Any = txn.cursor(db=self._db)
        if not cursor.last():
            return
        unkey = self._unkey
        for key, raw in cursor.iterprev():
            yield unkey(key), raw

    def first_from(self, txn: lmdb.Transaction, start: K) -> tuple[K, V] | None:
        """The first record whose key is at or after ``start``."""
        return next(self.items(txn, start=start), None)

    def last(self, txn: lmdb.Transaction) -> tuple[K, V] | None:
        cursor: Any = txn.cursor(db=self._db)
        if not cursor.last():
            return None
        return self._unkey(cursor.key()), self._dec(cursor.value())

    def count(self, txn: lmdb.Transaction) -> int:
        return int(txn.stat(self._db)["entries"])


class MetaSlot(Generic[V]):
    """One key of the ``meta`` database."""

    __slots__ = ("_db", "_dec", "_enc", "key")

    def __init__(self, spec: MetaSpec[V], db: Any) -> None:
        self.key = spec.key
        self._db = db
        self._enc = spec.value.encode
        self._dec = spec.value.decode

    def get(self, txn: lmdb.Transaction) -> V | None:
        raw: Any = txn.get(self.key, db=self._db)
        return None if raw is None else self._dec(raw)

    def get_raw(self, txn: lmdb.Transaction) -> bytes | None:
        raw: Any = txn.get(self.key, db=self._db)
        return raw  # type: ignore[no-any-return]

    def decode(self, raw: bytes) -> V:
        return self._dec(raw)

    def put(self, txn: lmdb.Transaction, value: V) -> None:
        txn.put(self.key, self._enc(value), db=self._db)

    def put_raw(self, txn: lmdb.Transaction, value: bytes) -> None:
        txn.put(self.key, value, db=self._db)

    def entry(self, value: V) -> tuple[bytes, bytes]:
        """``(key, encoded value)``, to be written later by ``Tables.put_meta``
        in the transaction that commits what the value describes."""
        return self.key, self._enc(value)


class Tables:
    """Every database and ``meta`` key of one open store."""

    def __init__(self, dbs: Mapping[str, Any]) -> None:
        # Each accessor's key and value types are those of its spec in schema.py.
        s = schema
        self.observations = Table(s.OBSERVATIONS, dbs)
        self.patterns = Table(s.PATTERNS, dbs)
        self.proposals = Table(s.PROPOSALS, dbs)
        self.proposal_deltas = Table(s.PROPOSAL_DELTAS, dbs)
        self.validations = Table(s.VALIDATIONS, dbs)
        self.snapshots = Table(s.SNAPSHOTS, dbs)
        self.receipts = Table(s.RECEIPTS, dbs)
        self.tree = Table(s.MERKLE, dbs)
        self.checkpoints = Table(s.CHECKPOINTS, dbs)
        self.keys = Table(s.KEYS, dbs)
        self.relaxations = Table(s.RELAXATIONS, dbs)
        self.cycles = Table(s.CYCLES, dbs)
        self.meta = Table(s.META, dbs)
        self.observation_leaves = Table(s.OBSERVATION_LEAVES, dbs)
        self.scrub = Table(s.SCRUB, dbs)

        meta = dbs[s.META.name]
        self.schema_version = MetaSlot(s.SCHEMA_VERSION_SLOT, meta)
        self.observations_next = MetaSlot(s.OBS_NEXT, meta)
        self.receipt_head = MetaSlot(s.RECEIPT_HEAD, meta)
        self.log_origin = MetaSlot(s.ORIGIN, meta)
        self.tree_size = MetaSlot(s.MERKLE_SIZE, meta)
        self.keys_current = MetaSlot(s.KEYS_CURRENT, meta)
        self.snapshot_current = MetaSlot(s.SNAPSHOT_CURRENT, meta)
        self.ring_cursor = MetaSlot(s.RING_CURSOR, meta)
        self.salted_from = MetaSlot(s.SALTED_FROM, meta)
        self.retained_from = MetaSlot(s.RETAINED_FROM, meta)
        self.retention_receipts_from = MetaSlot(s.RETENTION_RECEIPTS_FROM, meta)
        self.storage_key_check = MetaSlot(s.STORAGE_KEY_CHECK, meta)
        self.tick_baseline = MetaSlot(s.TICK_BASELINE, meta)
        # By set name, as governance names them in receipts.
        self.governance_digests: Mapping[str, MetaSlot[str]] = {
            "doctrines": MetaSlot(s.DOCTRINES_DIGEST, meta),
            "guards": MetaSlot(s.GUARDS_DIGEST, meta),
        }
        # Every database, in the schema's order, and every meta slot: for the
        # checks that must cover them all (fsck, the start-up check).
        self.all: tuple[Table[Any, Any], ...] = tuple(getattr(self, attr) for attr in _TABLE_ATTRS)
        # The same by database name (what a backup's segment is keyed by).
        self.by_name: Mapping[str, Table[Any, Any]] = {t.name: t for t in self.all}
        # Every key the schema declares for ``meta`` (some never written).
        self.meta_keys = _META_KEYS
        self.meta_slots: tuple[MetaSlot[Any], ...] = (
            self.schema_version,
            self.observations_next,
            self.receipt_head,
            self.log_origin,
            self.tree_size,
            self.keys_current,
            self.snapshot_current,
            self.ring_cursor,
            *self.governance_digests.values(),
            self.salted_from,
            self.retained_from,
            self.retention_receipts_from,
            self.storage_key_check,
            self.tick_baseline,
        )

    def shred_observation(self, txn: lmdb.Transaction, seq: int, erased: Any) -> bool:
        """Crypto-shredding of observation ``seq`` in ``txn`` (loop/erasure.py):
        its record replaced by ``erased`` (``model.erased``), its leaf digest
        kept and its salt destroyed. False, with nothing written, when it has
        no leaf digest (it cannot be erased without breaking its receipt)."""
        leaf = self.observation_leaves.get_raw(txn, seq)
        if leaf is None:
            return False
        self.observations.put(txn, seq, erased)
        self.observation_leaves.put_raw(txn, seq, leaf[: schema.LEAF_DIGEST_BYTES])
        return True

    def put_meta(self, txn: lmdb.Transaction, entries: Mapping[bytes, bytes]) -> None:
        """Write ``MetaSlot.entry`` results (keys of store/schema.py only)."""
        for key, value in entries.items():
            if key not in _META_KEYS:
                raise KeyError(f"{key!r} is not a meta key of the schema")
            self.meta.put_raw(txn, key, value)
