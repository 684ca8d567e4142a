"""Backups without a daemon: reading a backup directory (a set of chains of
a base and its incrementals), checking its files, restoring a data directory
from it (to its end, or to an earlier receipt: point-in-time restore), and
backing up a stopped daemon's data directory (``backup_data_dir``, the
pre-migration backup).

Guarantees:
- A restore never writes into a directory a daemon holds (its
  ``knhkd.lock`` is taken for the whole restore) nor into a non-empty one
  unless ``force``; with ``force`` only the store, the anchor and the
  restore marker are replaced.
- Every file of every backup used, and of every later one (read for its
  erasures), is checked against its manifest's size and SHA-256 before
  anything is written.
- A point the backups do not cover is refused: a receipt at or beyond the
  chosen chain's last backup, a time after the last backup was taken or
  before the first receipt.
- Point-in-time restore to receipt S keeps receipts 0..S, their tree nodes
  and checkpoints, and the observations their batch receipts commit to. The
  mutable state (current snapshot, proposals, keys, governance digests...) is
  that of the backup covering S, so S is accepted only when every receipt
  after it in that backup is of a kind that changes no mutable state
  (``TAIL_KINDS``); patterns those receipts record are removed with them.
  A refused point names the admissible ones around it.
- An erasure is never undone by a restore: observations the restored point
  holds that an ``observations_erased`` receipt of any later backup in the
  directory erased are erased again in the restored store (the receipt that
  did is named in the ``restored`` receipt), or the restore is refused (a
  sealed record without the storage key). An erasure after the last backup
  is recorded in no backup: the README says so.
- The restored directory has the anchor of its latest checkpoint and a
  marker (``restored.json``) from which the daemon's first receipt records
  the restore (loop/backup.py).
- A backup of an older schema version (the pre-migration backup ``knhkd
  migrate`` takes) is restored as it is, at its version: the daemon refuses
  it until ``knhkd migrate`` has run (``Restored.schema_version`` says so).
  A newer one, or a chain that mixes versions, is refused before anything is
  written.

Must never: leave a store fsck would reject; copy a secret key unless the
operator names it.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import msgspec

from knhkd.crypto import sealing
from knhkd.model import BackupManifest, ReceiptHead, erased, is_erased
from knhkd.receipts import backup as rb
from knhkd.receipts import canonical, tlog_checkpoint
from knhkd.receipts.backup import BackupError
from knhkd.store import anchor, schema
from knhkd.store.env import MB, SCHEMA_VERSION, Store, StoreError, open_store, receipts_in_file
from knhkd.store.ids import BadId, seq_of

MARKER = "restored.json"
# Where the store is rebuilt before it is renamed to ``lmdb``.
STAGING = ".restoring"
# Receipts that change nothing but the append-only data and derived counters:
# a restore may cut them off without touching the mutable state.
TAIL_KINDS = frozenset({"observation_batch_committed", "audit", "backup_taken", "pattern_detected"})


class Restored(msgspec.Struct):
    """``restored.json``: what the restored daemon's first receipt records."""

    backup_id: str
    base_id: str
    # Receipts kept: 0 .. tree_size - 1.
    tree_size: int
    last_receipt_ns: int
    observations: int
    point: str  # "end", "receipt N" or "at <ns>"
    # Below this release's: restored as it was; ``knhkd migrate`` comes next.
    schema_version: int = SCHEMA_VERSION
    # Erased again (``_erase_again``): the observations, and the receipts of
    # later backups that had erased them.
    erased_again: list[str] = []
    erasures_reapplied: list[str] = []


@dataclass(frozen=True)
class Point:
    receipt: int | None = None
    at_ns: int | None = None

    def describe(self) -> str:
        if self.receipt is not None:
            return f"receipt {self.receipt}"
        if self.at_ns is not None:
            return f"at {self.at_ns}"
        return "end"


def load_backups(root: Path) -> list[BackupManifest]:
    """Every complete backup under ``root``, oldest first."""
    if not root.is_dir():
        raise BackupError(f"{root}: no such backup directory")
    found = []
    for d in sorted(root.iterdir()):
        path = d / rb.MANIFEST
        if d.name.startswith(".") or not path.is_file():
            continue
        m = rb.decode_manifest(path.read_bytes(), path)
        if m.id != d.name:
            raise BackupError(f"{path}: manifest names backup {m.id}")
        found.append(m)
    if not found:
        raise BackupError(f"{root}: no backup in this directory")
    return found


def chain_of(backups: list[BackupManifest], last: BackupManifest) -> list[BackupManifest]:
    """Base .. ``last`` by parent links."""
    by_id = {m.id: m for m in backups}
    chain = [last]
    while chain[-1].parent_id is not None:
        parent = by_id.get(chain[-1].parent_id)
        if parent is None:
            raise BackupError(f"{chain[-1].id}: its parent {chain[-1].parent_id} is missing")
        chain.append(parent)
    chain.reverse()
    if chain[0].kind != "base":
        raise BackupError(f"{chain[0].id}: a chain must start with a base")
    return chain


def check_files(root: Path, m: BackupManifest) -> list[str]:
    """What does not match the manifest (empty when every file does)."""
    problems = []
    for f in m.files:
        path = root / m.id / f.name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{m.id}/{f.name}: missing")
            continue
        if size != f.size:
            problems.append(f"{m.id}/{f.name}: {size} bytes, the manifest says {f.size}")
        elif rb.sha256_file(path) != f.sha256:
            problems.append(f"{m.id}/{f.name}: SHA-256 differs from the manifest's")
    return problems


def _covering(backups: list[BackupManifest], point: Point) -> BackupManifest:
    latest = backups[-1]
    if point.receipt is not None:
        if point.receipt < 0:
            raise BackupError("a receipt number is at least 0")
        for m in backups:
            if m.tree_size > point.receipt:
                return m
        raise BackupError(
            f"receipt {point.receipt} is not covered: the last backup holds receipts "
            f"0..{latest.tree_size - 1}"
        )
    if point.at_ns is not None:
        if point.at_ns > latest.created_ns:
            raise BackupError("that time is after the last backup was taken: not covered")
        for m in backups:
            if m.last_receipt_ns >= point.at_ns:
                return m
        return latest
    return latest


@contextlib.contextmanager
def _locked_target(data_dir: Path, force: bool) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = data_dir / "knhkd.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError(f"{data_dir} is in use by a running knhkd") from None
        others = [p.name for p in data_dir.iterdir() if p.name != "knhkd.lock"]
        if others and not force:
            raise BackupError(f"{data_dir} is not empty (use --force to replace its store)")
        _clear(data_dir)
        try:
            yield
        except BaseException:
            # A refused point, damage met while applying, a full disk: leave
            # no half-restored store a daemon could start on.
            _clear(data_dir)
            raise
    finally:
        os.close(fd)


def _clear(data_dir: Path) -> None:
    for name in ("lmdb", STAGING, anchor.FILENAME, MARKER):
        path = data_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def restore(
    root: Path,
    data_dir: Path,
    point: Point = Point(),
    *,
    force: bool = False,
    signing_key: Path | None = None,
    storage_key: bytes | None = None,
) -> Restored:
    """Rebuild ``data_dir`` from the backups under ``root`` as of ``point``.
    ``storage_key`` opens sealed observations, which a restore must rewrite
    only to erase them again (``_erase_again``)."""
    backups = load_backups(root)
    covering = _covering(backups, point)
    chain = chain_of(backups, covering)
    problems = [p for m in chain for p in check_files(root, m)]
    if problems:
        raise BackupError(f"backup damaged: {problems[0]}")
    newer = backups[backups.index(covering) + 1 :]
    problems = [p for m in newer for p in check_files(root, m)]
    if problems:
        raise BackupError(
            f"backup damaged: {problems[0]}; a later backup is read for the erasures it "
            f"records (move it out of {root} to restore without them)"
        )
    later = _erased_later(root, newer, covering.tree_size)
    version = schema_of(chain)
    with _locked_target(data_dir, force):
        # Built aside and renamed into place last: until then the directory
        # has no store a daemon would start on.
        staging = data_dir / STAGING
        (staging / "lmdb").mkdir(parents=True, mode=0o700)
        base = chain[0]
        shutil.copyfile(root / base.id / rb.DATA_FILE, staging / "lmdb" / "data.mdb")
        size = (staging / "lmdb" / "data.mdb").stat().st_size
        map_size = max(1024 * MB, 2 * size)
        # The lock is ours already (taken above): the store does not take it
        # again. An older schema is opened as `knhkd migrate` opens it (the
        # databases this release adds are created empty; no version written).
        store = open_store(
            staging,
            map_size=map_size,
            create=False,
            exclusive=False,
            migrating=version < SCHEMA_VERSION,
        )
        try:
            for m in chain[1:]:
                _apply(store, rb.read_segment(root / m.id, [f.name for f in m.files]))
            result = _truncate(store, covering, base, point)
            result.schema_version = version
            _erase_again(store, later, result, storage_key)
            with store.reader() as txn:
                last = store.tables.checkpoints.last(txn)
            # Segments and the cut rewrote records in place (erased forms
            # included: an erasure after the base): LMDB keeps the old pages,
            # content intact, on its free list. A compact copy holds live
            # pages only, so nothing erased or cut survives in the file.
            compacted = staging / "compact"
            compacted.mkdir(mode=0o700)
            store.env.copy(str(compacted), compact=True)
        finally:
            store.close()
        os.replace(compacted / "data.mdb", staging / "lmdb" / "data.mdb")
        compacted.rmdir()
        keys = data_dir / "keys"
        keys.mkdir(mode=0o700, exist_ok=True)
        shutil.copyfile(root / covering.id / rb.KEYRING_FILE, keys / "public.json")
        if signing_key is not None:
            target = keys / "signing.key"
            shutil.copyfile(signing_key, target)
            os.chmod(target, 0o600)
        (data_dir / MARKER).write_bytes(msgspec.json.encode(result))
        if last is not None:
            anchor.write(anchor.path_in(data_dir), last[1])
        os.replace(staging / "lmdb", data_dir / "lmdb")
        staging.rmdir()
    return result


def _erased_later(root: Path, later: list[BackupManifest], since: int) -> dict[int, str]:
    """The observations (by sequence number) that an ``observations_erased``
    receipt at or after receipt ``since`` in one of the ``later`` backups
    erased, each with the id of the first such receipt.

    Every later backup is read, whatever its chain: an erasure any of them
    records is one a restore from this directory must not undo."""
    found: dict[int, str] = {}
    kind = b"observations_erased"
    for m in later:
        for seq, raw in _receipts_of(root, m, since):
            # A byte test first: the kind is in every receipt's plain msgpack.
            if kind not in raw:
                continue
            try:
                body = _kind_and_body(raw)
                if body.kind == "observations_erased":
                    for obs_id in body.subject_ids:
                        found.setdefault(seq_of(obs_id), canonical.receipt_id(seq))
            except (msgspec.MsgspecError, BadId) as exc:
                raise BackupError(f"backup {m.id}: receipt {seq} does not read: {exc}") from None
    return found


def _receipts_of(root: Path, m: BackupManifest, since: int) -> Iterator[tuple[int, bytes]]:
    """Receipts ``since`` onwards that backup ``m`` holds itself: an
    incremental's segment, or a base's store (opened read-only, in place)."""
    if m.parent_id is not None:
        for chunk in rb.read_segment(root / m.id, [f.name for f in m.files]):
            if chunk.table == schema.RECEIPTS.name:
                for key, raw in chunk.rows:
                    seq = int.from_bytes(key, "big")
                    if seq >= since:
                        yield seq, bytes(raw)
        return
    try:
        yield from receipts_in_file(root / m.id / rb.DATA_FILE, since)
    except StoreError as exc:
        raise BackupError(str(exc)) from None


def _erase_again(
    store: Store, later: dict[int, str], result: Restored, storage_key: bytes | None
) -> None:
    """Erase again, in the restored store, the observations it holds that a
    later backup records as erased (``_erased_later``), as loop/erasure.py
    did: the record reduced to ``model.erased``, the salt destroyed, the leaf
    digest kept (so every receipt and checkpoint still verifies). Each erased
    record names the ``restored`` receipt, which the restored daemon appends
    before any other (loop/backup.py) and which names these observations and
    the erasures re-applied. The caller compacts the store afterwards, so no
    freed page keeps an earlier copy."""
    if not later:
        return
    t = store.tables
    if storage_key is not None:
        sealer = sealing.Sealer(storage_key)
        t.observations.seal_with(sealer.seal, sealer.open)
    by = canonical.receipt_id(result.tree_size)
    done: list[str] = []
    sources: set[str] = set()
    with store.env.begin(write=True) as txn:
        for seq in sorted(later):
            raw = t.observations.get_raw(txn, seq)
            if raw is None:
                continue  # after the point, or deleted by retention
            if storage_key is None and sealing.is_sealed(raw):
                raise BackupError(
                    f"observation {seq} was erased after this point (receipt {later[seq]}) and "
                    "is sealed at rest: give --storage-key so that the restore erases it again"
                )
            try:
                obs = t.observations.get(txn, seq)
            except sealing.SealError as exc:
                raise BackupError(f"observation {seq}: {exc}") from None
            if obs is None or is_erased(obs):
                continue
            if not t.shred_observation(txn, seq, erased(obs, by)):
                raise BackupError(f"observation {obs.id} has no leaf digest: cannot erase it again")
            done.append(obs.id)
            sources.add(later[seq])
    result.erased_again = done
    result.erasures_reapplied = sorted(sources)


def schema_of(chain: list[BackupManifest]) -> int:
    """The schema version of a chain of backups; ``BackupError`` if this
    release cannot restore it (newer, or versions mixed)."""
    versions = sorted({m.schema_version for m in chain})
    if len(versions) > 1:
        raise BackupError(
            f"backup {chain[-1].id} mixes schema versions {versions}: restore the chain of "
            "one version (a migration starts a new base)"
        )
    [version] = versions
    if version > SCHEMA_VERSION:
        raise BackupError(
            f"backup {chain[-1].id} is of schema version {version}, newer than this knhkd's "
            f"{SCHEMA_VERSION}: restore it with the knhkd that wrote it"
        )
    return version


# Chunks applied per write transaction: LMDB holds a transaction's dirty
# pages in memory until it commits, and the store being rebuilt is staging
# that nothing reads (a failure removes it whole), so a segment need not be
# one transaction.
CHUNKS_PER_TXN = 16


def _apply(store: Store, chunks: Iterable[rb.SegmentChunk]) -> None:
    tables = store.tables.by_name
    cleared: set[str] = set()
    left = iter(chunks)
    more = True
    while more:
        more = False
        with store.env.begin(write=True) as txn:
            for chunk in itertools.islice(left, CHUNKS_PER_TXN):
                more = True
                name = chunk.table
                if name not in tables:
                    raise BackupError(f"the segment names no database of this schema: {name!r}")
                if name in rb.MUTABLE and name not in cleared:
                    # Copied whole in each incremental: its first chunk replaces it.
                    tables[name].clear(txn)
                    cleared.add(name)
                tables[name].put_many_raw(txn, chunk.rows)
    with store.env.begin(write=True) as txn:
        # Retention after the parent deleted observations an incremental
        # cannot name: the segment's ``meta`` says up to where.
        below = store.tables.retained_from.get(txn) or 0
        if below:
            store.tables.observations.delete_range(txn, 0, below)
            store.tables.observation_leaves.delete_range(txn, 0, below)


def _truncate(
    store: Store, covering: BackupManifest, base: BackupManifest, point: Point
) -> Restored:
    t = store.tables
    with store.env.begin(write=True, buffers=False) as txn:
        size = t.tree_size.get(txn) or 0
        keep = _point_seq(store, txn, size, point) + 1
        obs_next = t.observations_next.get(txn) or 0
        if keep < size:
            obs_next = _cut(store, txn, keep, size)
        head = t.receipt_head.get(txn)
        last_ns = head.timestamp_ns if head is not None else 0
    return Restored(covering.id, base.id, keep, last_ns, obs_next, point.describe())


def _kind_and_body(raw: bytes) -> Any:
    return canonical.decode_record(raw).body


def _point_seq(store: Store, txn: lmdb.Transaction, size: int, point: Point) -> int:
    """The last receipt kept (``size - 1`` for the end)."""
    if point.receipt is not None:
        if not _admissible(store, txn, point.receipt, size):
            raise BackupError(_refusal(store, txn, point.receipt, size))
        return point.receipt
    if point.at_ns is None:
        return size - 1
    seq = -1
    for s, raw in store.tables.receipts.items_raw(txn):
        if _kind_and_body(raw).timestamp_ns > point.at_ns:
            break
        seq = s
    if seq < 0:
        raise BackupError("that time is before the first receipt: not covered")
    while seq >= 0 and not _admissible(store, txn, seq, size):
        seq -= 1
    if seq < 0:
        raise BackupError("no admissible point at or before that time")
    return seq


def _tail(store: Store, txn: lmdb.Transaction, seq: int) -> Iterator[tuple[int, Any]]:
    for s, raw in store.tables.receipts.items_raw(txn, start=seq + 1):
        yield s, _kind_and_body(raw)


def _admissible(store: Store, txn: lmdb.Transaction, seq: int, size: int) -> bool:
    if seq == size - 1:
        return True
    floor = _obs_keep(store, txn, seq)
    for _, body in _tail(store, txn, seq):
        if body.kind not in TAIL_KINDS:
            return False
        if body.kind == "observation_batch_committed" and int(body.inputs["first_seq"]) < floor:
            return False  # one batch receipted per sector: cut in its middle
    return True


def _refusal(store: Store, txn: lmdb.Transaction, seq: int, size: int) -> str:
    blocking = next(
        (f"{b.kind} (receipt {s})" for s, b in _tail(store, txn, seq) if b.kind not in TAIL_KINDS),
        "a batch receipted in parts",
    )
    below = next(
        (s for s in range(seq - 1, max(-1, seq - 1000), -1) if _admissible(store, txn, s, size)),
        None,
    )
    return (
        f"receipt {seq} is not a restorable point: {blocking} follows it before the next "
        f"backup; admissible: {'' if below is None else f'{below} (earlier), '}"
        f"{size - 1} (the backup's end)"
    )


def _obs_keep(store: Store, txn: lmdb.Transaction, seq: int) -> int:
    """Observations committed by receipts 0..seq (the counter after them)."""
    receipts = store.tables.receipts
    for s in range(seq, -1, -1):
        raw = receipts.get_raw(txn, s)
        if raw is None:
            break
        body = _kind_and_body(raw)
        if body.kind == "observation_batch_committed":
            return int(body.inputs["last_seq"]) + 1
    return 0


def _cut(store: Store, txn: lmdb.Transaction, keep: int, size: int) -> int:
    """Drop receipts ``keep``.. and everything only they account for."""
    t = store.tables
    obs_keep = _obs_keep(store, txn, keep - 1)
    gone_patterns = {
        sid
        for _, b in _tail(store, txn, keep - 1)
        if b.kind == "pattern_detected"
        for sid in b.subject_ids
    }
    t.receipts.delete_from(txn, keep)
    t.checkpoints.delete_from(txn, keep + 1)
    t.observations.delete_from(txn, obs_keep)
    t.observation_leaves.delete_from(txn, obs_keep)
    # Every node that covers a cut leaf (none is needed by the kept tree).
    for node in [k for k, _ in t.tree.items_raw(txn) if (k[1] + 1) << k[0] > keep]:
        t.tree.delete(txn, node)
    for pattern in [k for k, p in t.patterns.items(txn) if p.id in gone_patterns]:
        t.patterns.delete(txn, pattern)
    last_hash, last_ns = rb.receipt_hash_at(store, txn, keep - 1)
    t.receipt_head.put(txn, ReceiptHead(keep, last_hash, last_ns))
    t.tree_size.put(txn, keep)
    t.observations_next.put(txn, obs_keep)
    # The ring the cursor points into is not part of a backup.
    t.meta.delete(txn, t.ring_cursor.key)
    return obs_keep


def backup_data_dir(
    data_dir: Path, out_root: Path, *, migrating: bool = False, lock_fd: int | None = None
) -> BackupManifest:
    """A base backup of a stopped daemon's data directory under
    ``out_root/<id>/``: what ``knhkd migrate`` takes before migrating.

    The directory's lock is taken for the copy, or ``lock_fd`` is that lock,
    already held (the store closes it: pass a ``dup`` to keep holding it).
    ``migrating``: the store may be of an older schema version; it is opened
    as the migration opens it and the manifest names its version."""
    try:
        store = open_store(data_dir, create=False, migrating=migrating, lock_fd=lock_fd)
    except StoreError as exc:
        raise BackupError(str(exc)) from None
    try:
        return rb.take(store, out_root, "base")
    finally:
        store.close()


def verify_consistency(
    m: BackupManifest, live_note: str, proof: list[bytes], keys: dict[str, bytes]
) -> str:
    """That the live log's checkpoint extends the backup's; raises BackupError."""
    from knhkd.receipts import merkle

    try:
        mine = tlog_checkpoint.verify(m.checkpoint, keys)
        live = tlog_checkpoint.verify(live_note, keys)
    except tlog_checkpoint.CheckpointError as exc:
        raise BackupError(f"checkpoint: {exc}") from None
    if mine.origin != live.origin:
        raise BackupError(f"the backup is of log {mine.origin!r}, the live log is {live.origin!r}")
    if not merkle.verify_consistency(mine.size, live.size, proof, mine.root, live.root):
        raise BackupError(
            f"the live log (size {live.size}) does not extend the backup's checkpoint "
            f"(size {mine.size}): a different history"
        )
    return f"consistent with the live log's checkpoint of size {live.size}"
