"""fsck: re-derive everything the log claims from what is stored, and name
the first inconsistency with its location.

Checks, in order (``errors`` keeps that order, capped at ``MAX_ERRORS``):
  0. structure — every one of the 15 databases of store/schema.py: each key
     and record decodes as its type (and a record keyed by its own id sits
     under that id); ``meta`` holds only the schema's keys, each decoding;
  1. keyring — every entry's id matches its key; the current key is in it;
     with a data directory, ``keys/public.json`` lists no key the store
     lacks;
  2. receipts — canonical form, seq = key, signature by a key valid at the
     receipt's time, ``prev_hash`` chain, time order, stored head;
  3. tree — size = receipts; every leaf = SHA-256(0x00 || record); every
     interior node recomputed from its children; no node missing or extra;
  4. checkpoints — signed by a key of the keyring, the log's origin, and the
     root of the stored tree at their size;
  5. observations — each batch receipt's count and SHA-256 over its sector's
     observations in its range: over their leaf digests (``leaves_sha256``,
     schema v2), each of which is recomputed from the salt and the stored
     record, or is an erased observation's (no salt, the record anonymised:
     loop/erasure.py); over the records themselves (``records_sha256``,
     schema v1); every v2 observation has its leaf, and no leaf is stray;
     the observation counter;
  6. snapshots — each id is the SHA-256 of its canonical N-Triples; the
     current snapshot and every parent exist;
  7. references — a proposal's parent snapshot, a validation's proposal and
     a ``proposal_deltas`` entry's proposal exist;
  8. with a data directory, the store against its anchor (receipts/
     integrity.py: the start-up check), by the keys of ``keys/public.json``
     and of the store.

Structural damage (``lmdb.CorruptedError``, ``lmdb.PageNotFoundError``, any
``lmdb.Error``, a record that does not decode) is a finding naming the check
and database it stopped: each check runs in its own read transaction (LMDB
refuses further reads in one that met a damaged page), so the others still run.

Works read-only on a live or a stopped daemon's store.
Must never: write to the store, or trust a stored hash without recomputing it;
raise on damage instead of reporting it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import msgspec

from knhkd.crypto.keys import KeyFileError, Verifier
from knhkd.knowledge.rdf import content_id
from knhkd.model import FsckReport, Observation, SnapshotRecord, is_erased
from knhkd.receipts import canonical, integrity, merkle, tlog_checkpoint
from knhkd.receipts.checkpoints import origin_of
from knhkd.receipts.keyring import current_key_id, read_keyring
from knhkd.receipts.log import iter_raw, read_head
from knhkd.receipts.tlog_checkpoint import CheckpointError
from knhkd.receipts.tree import MerkleTree, TreeError
from knhkd.receipts.verify import verify_chain
from knhkd.store import anchor
from knhkd.store.env import SchemaVersionError, Store, StoreDamaged, StoreError, open_store
from knhkd.store.schema import LEAF_DIGEST_BYTES, LEAF_SALT_BYTES, TABLES

MAX_ERRORS = 100
DB_NAMES_IN_ORDER = tuple(t.name for t in TABLES)
_obs_decoder = msgspec.msgpack.Decoder(Observation)
_snap_decoder = msgspec.msgpack.Decoder(SnapshotRecord)


class _Findings:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.checked: dict[str, int] = {}

    def add(self, where: str, what: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(f"{where}: {what}")

    def count(self, name: str, n: int) -> None:
        self.checked[name] = self.checked.get(name, 0) + n


# What damaged pages and records raise while they are read.
_DAMAGE = (lmdb.Error, msgspec.MsgspecError, ValueError, UnicodeDecodeError, IndexError)


# How many checks ``progress`` hears of at most: each database's scan, the
# seven checks of the store and the anchor.
FSCK_STEPS = len(DB_NAMES_IN_ORDER) + 8


def fsck(
    store: Store, data_dir: Path | None = None, progress: Callable[[str], None] | None = None
) -> FsckReport:
    """Check ``store``; with ``data_dir`` also its exported keyring and anchor.
    ``progress(name)`` is called as each check starts (at most FSCK_STEPS)."""
    found = _Findings()

    @contextmanager
    def check(name: str) -> Iterator[lmdb.Transaction]:
        if progress is not None:
            progress(name)
        # A fresh transaction per check: one that met a damaged page is dead.
        try:
            with store.reader() as txn:
                yield txn
        except _DAMAGE as exc:
            found.add(name, f"structural damage: {type(exc).__name__}: {exc}")

    _records(store, found, check)
    verifier: Verifier | None = None
    with check("keys") as txn:
        verifier = _keyring(store, txn, found)
    if verifier is not None:
        with check("receipts") as txn:
            _receipts(store, txn, verifier, found)
    leaves = 0
    with check("merkle") as txn:
        leaves = _tree(store, txn, found)
    if verifier is not None:
        with check("checkpoints") as txn:
            _checkpoints(store, txn, verifier, leaves, found)
    with check("observations") as txn:
        _observations(store, txn, found)
    with check("snapshots") as txn:
        _snapshots(store, txn, found)
    with check("references") as txn:
        _references(store, txn, found)
    if data_dir is not None:
        _data_dir(store, data_dir, verifier, found, check)
    return FsckReport(ok=not found.errors, checked=found.checked, errors=found.errors)


Check = Callable[[str], Any]


def _records(store: Store, found: _Findings, check: Check) -> None:
    """Every record of every database decodes as its type, under its own key."""
    t = store.tables
    # The value's own id, where a database is keyed by it.
    own_key: dict[str, Callable[[Any], Any]] = {
        "observations": lambda o: o.seq,
        "patterns": lambda p: (p.detected_at_ns, p.id),
        "proposals": lambda p: p.id,
        "snapshots": lambda r: r.meta.snapshot_id,
        "keys": lambda e: e.key_id,
        "relaxations": lambda r: r.id,
        "cycles": lambda c: c.id,
        "validations": lambda v: v.proposal_id,
    }
    slots = {slot.key: slot for slot in t.meta_slots}
    for table in t.all:
        n = 0
        # Its own transaction: a damaged page ends this database's scan only.
        with check(table.name) as tx:
            for key, raw in table.items_raw(tx):
                n += 1
                where = f"{table.name}/{_show(key)}"
                if table is t.meta:
                    slot = slots.get(key)
                    if slot is not None:
                        _decoded(slot.decode, raw, where, found)
                    elif key not in t.meta_keys:
                        found.add(where, "not a meta key of the schema")
                    continue
                value = _decoded(table.decode, raw, where, found)
                of = own_key.get(table.name)
                if value is not None and of is not None and of(value) != key:
                    found.add(where, f"holds the record of {_show(of(value))}")
        found.count(f"{table.name} records", n)


def _decoded(decode: Callable[[bytes], Any], raw: bytes, where: str, found: _Findings) -> Any:
    try:
        return decode(raw)
    except (msgspec.MsgspecError, ValueError, UnicodeDecodeError) as exc:
        found.add(where, f"does not decode: {exc}")
        return None


def _show(key: Any) -> str:
    if isinstance(key, bytes):
        return key.decode(errors="replace")
    if isinstance(key, str):
        return key[:16]
    return str(key)


def _references(store: Store, txn: lmdb.Transaction, found: _Findings) -> None:
    """Cheap cross-references: what a record names is stored."""
    t = store.tables

    def has(table: Any, key: str) -> bool:
        return table.get_raw(txn, key) is not None

    for pid, raw in t.proposals.items_raw(txn):
        try:
            parent = t.proposals.decode(raw).parent_snapshot_id
        except (msgspec.MsgspecError, ValueError):
            continue  # reported with the records
        if not has(t.snapshots, parent):
            found.add(f"proposals/{pid[:16]}", f"parent snapshot {parent[:16]} is missing")
    for pid, _ in t.validations.items_raw(txn):
        if not has(t.proposals, pid):
            found.add(f"validations/{pid[:16]}", "validates a proposal that is not stored")
    for key, raw in t.proposal_deltas.items_raw(txn):
        try:
            pid = raw.decode()
        except UnicodeDecodeError:
            found.add(f"proposal_deltas/{key.hex()[:16]}", "not a proposal id")
            continue
        if not has(t.proposals, pid):
            found.add(f"proposal_deltas/{key.hex()[:16]}", f"names missing proposal {pid[:16]}")


def _data_dir(
    store: Store, data_dir: Path, verifier: Verifier | None, found: _Findings, check: Check
) -> None:
    """``keys/public.json`` against the store's keyring; the store against its anchor."""
    exported: dict[str, bytes] = {}
    path = data_dir / "keys" / "public.json"
    try:
        exported = Verifier.from_json(path.read_bytes()).public_keys()
    except FileNotFoundError:
        pass
    except (OSError, KeyFileError) as exc:
        found.add("keys/public.json", str(exc))
    stored = {} if verifier is None else verifier.public_keys()
    for key_id in sorted(set(exported) - set(stored)):
        found.add("keys/public.json", f"lists key {key_id}, which the store's keyring lacks")
    for key_id in sorted(set(exported) & set(stored)):
        if exported[key_id] != stored[key_id]:
            found.add("keys/public.json", f"key {key_id} differs from the store's")
    try:
        note = anchor.read(anchor.path_in(data_dir))
    except anchor.AnchorError as exc:
        found.add("anchor", str(exc))
        return
    if note is None:
        return
    with check("anchor"):
        for finding in integrity.against_anchor(store, note, {**stored, **exported}):
            found.add("anchor", finding)
    found.count("anchor", 1)


def _keyring(store: Store, txn: lmdb.Transaction, found: _Findings) -> Verifier | None:
    try:
        ring = read_keyring(store, txn)
        verifier = Verifier(ring)
    except (KeyFileError, msgspec.MsgspecError, ValueError) as exc:
        found.add("keys", str(exc))
        return None
    found.count("keys", len(ring.keys))
    current = current_key_id(store, txn)
    if current is not None and current not in {k.key_id for k in ring.keys}:
        found.add("keys", f"current key {current} is not in the keyring")
    return verifier


def _receipts(store: Store, txn: lmdb.Transaction, verifier: Verifier, found: _Findings) -> None:
    head = read_head(store, txn)
    report = verify_chain(iter_raw(store, txn), verifier, expected_head=(head.next_seq, head.hash))
    found.count("receipts", report.total_count)
    bad = sorted(
        [(r, "signature or record damaged") for r in report.signature_failures]
        + [(r, "chain break") for r in report.chain_breaks]
        + [(r, "earlier than its predecessor") for r in report.retrocausation_violations]
    )
    for rid, what in bad:
        found.add(f"receipts/{rid}", what)


def _tree(store: Store, txn: lmdb.Transaction, found: _Findings) -> int:
    size = store.tables.tree_size.get(txn) or 0
    receipts = read_head(store, txn).next_seq
    if size != receipts:
        found.add("merkle/size", f"tree has {size} leaves, the log {receipts} receipts")
    nodes_db = store.tables.tree
    for seq, record in iter_raw(store, txn):
        stored = nodes_db.get_raw(txn, (0, seq))
        if stored is None or stored != merkle.leaf_hash(record):
            found.add(f"merkle/leaf {seq}", "does not hash the stored receipt")
    nodes = 0
    for (level, index), value in nodes_db.items_raw(txn):
        nodes += 1
        if len(value) != merkle.HASH_SIZE or (index + 1) << level > size:
            found.add(f"merkle/node ({level}, {index})", "outside the tree or malformed")
            continue
        if level == 0:
            continue
        left = nodes_db.get_raw(txn, (level - 1, 2 * index))
        right = nodes_db.get_raw(txn, (level - 1, 2 * index + 1))
        if left is None or right is None:
            found.add(f"merkle/node ({level}, {index})", "a child is missing")
        elif merkle.node_hash(left, right) != value:
            found.add(f"merkle/node ({level}, {index})", "does not hash its children")
    expected = sum(size >> level for level in range(size.bit_length() + 1))
    if nodes != expected:
        found.add("merkle", f"{nodes} nodes stored, a tree of {size} leaves has {expected}")
    found.count("tree nodes", nodes)
    return size


def _checkpoints(
    store: Store, txn: lmdb.Transaction, verifier: Verifier, size: int, found: _Findings
) -> None:
    tree = MerkleTree(store)
    origin = origin_of(store, txn)
    n = 0
    for key, value in store.tables.checkpoints.items_raw(txn):
        n += 1
        where = f"checkpoints/{key}"
        try:
            cp = tlog_checkpoint.verify(value.decode(), verifier.public_keys(), origin=origin)
        except (CheckpointError, UnicodeDecodeError) as exc:
            found.add(where, str(exc))
            continue
        if cp.size != key:
            found.add(where, f"note is for size {cp.size}")
        elif cp.size > size:
            found.add(where, f"size {cp.size} is beyond the tree's {size}")
        else:
            try:
                root = tree.root(txn, cp.size)
            except (TreeError, merkle.ProofError) as exc:  # reported with the tree
                found.add(where, f"cannot recompute the root: {exc}")
                continue
            if root != cp.root:
                found.add(where, "signed root is not the stored tree's root")
    found.count("checkpoints", n)


def _observations(store: Store, txn: lmdb.Transaction, found: _Findings) -> None:
    observations = store.tables.observations
    covered = 0
    for seq, raw in iter_raw(store, txn):
        try:
            body = canonical.decode_record(raw).body
        except (msgspec.MsgspecError, ValueError):
            continue  # reported with the receipts
        if body.kind != "observation_batch_committed":
            continue
        salted = "leaves_sha256" in body.inputs
        try:
            first, last = int(body.inputs["first_seq"]), int(body.inputs["last_seq"])
            count = int(body.inputs["count"])
            want = body.inputs["leaves_sha256" if salted else "records_sha256"]
        except (KeyError, ValueError):
            found.add(f"receipts/{canonical.receipt_id(seq)}", "batch receipt lacks its inputs")
            continue
        digest, n = hashlib.sha256(), 0
        for obs_seq in range(first, last + 1):
            rec = observations.get_raw(txn, obs_seq)
            if rec is None:
                found.add(f"observations/{obs_seq}", "missing")
                continue
            try:
                obs = _obs_decoder.decode(rec)
            except (msgspec.MsgspecError, ValueError):
                found.add(f"observations/{obs_seq}", "not an observation record")
                continue
            if obs.sector != body.sector:
                continue
            n += 1
            if not salted:
                digest.update(rec)
                continue
            leaf = _leaf(store, txn, obs_seq, obs, rec, found)
            if leaf is not None:
                digest.update(leaf)
        if n != count or digest.hexdigest() != want:
            found.add(
                f"observations/{first}..{last}",
                f"records of sector {body.sector} do not match receipt {canonical.receipt_id(seq)}",
            )
        covered += n
    next_seq = store.tables.observations_next.get(txn)
    stored = observations.count(txn)
    if next_seq is not None and next_seq != stored:
        found.add("observations", f"counter says {next_seq}, {stored} are stored")
    if covered != stored:
        found.add("observations", f"{stored} stored, {covered} covered by batch receipts")
    salted_from = store.tables.salted_from.get(txn)
    if salted_from is None:
        # Schema v1 (before `knhkd migrate`): nothing is salted; from v2 on
        # without the mark (a store created at v2 or later): everything.
        version = store.tables.schema_version.get(txn)
        salted_from = stored if version is not None and version < 2 else 0
    leaves = store.tables.observation_leaves.count(txn)
    if leaves != max(stored - salted_from, 0):
        found.add(
            "observation_leaves",
            f"{leaves} leaves for the {max(stored - salted_from, 0)} observations "
            f"from seq {salted_from} (schema v2)",
        )
    if store.tables.scrub.count(txn):
        found.add("scrub", "holds records between transactions")
    found.count("observations", stored)


def _leaf(
    store: Store, txn: lmdb.Transaction, seq: int, obs: Observation, rec: bytes, found: _Findings
) -> bytes | None:
    """The leaf digest of observation ``seq``, checked against its record."""
    leaf = store.tables.observation_leaves.get_raw(txn, seq)
    where = f"observation_leaves/{seq}"
    if leaf is None:
        found.add(where, "missing")
        return None
    digest, salt = leaf[:LEAF_DIGEST_BYTES], leaf[LEAF_DIGEST_BYTES:]
    if len(leaf) == LEAF_DIGEST_BYTES:
        if not is_erased(obs):
            found.add(where, "the salt is gone but the observation is not erased")
    elif len(salt) != LEAF_SALT_BYTES:
        found.add(where, f"{len(leaf)} bytes, not a digest and a salt")
    elif hashlib.sha256(salt + rec).digest() != digest:
        found.add(f"observations/{seq}", "does not hash to its leaf digest")
    return digest


def _snapshots(store: Store, txn: lmdb.Transaction, found: _Findings) -> None:
    ids: dict[str, str | None] = {}
    for sid, raw in store.tables.snapshots.items_raw(txn):
        try:
            rec = _snap_decoder.decode(raw)
        except (msgspec.MsgspecError, ValueError):
            found.add(f"snapshots/{sid[:16]}", "not a snapshot record")
            continue
        if rec.meta.snapshot_id != sid or content_id(rec.ntriples) != sid:
            found.add(f"snapshots/{sid[:16]}", "id is not the hash of its content")
        ids[sid] = rec.meta.parent_id
    for sid, parent in ids.items():
        if parent is not None and parent not in ids:
            found.add(f"snapshots/{sid[:16]}", f"parent {parent[:16]} is missing")
    current = store.tables.snapshot_current.get(txn)
    if current is not None and current not in ids:
        found.add("snapshots/current", "points at a missing snapshot")
    found.count("snapshots", len(ids))


# --------------------------------------------------------------------------- #
# In a child process: LMDB aborts on some damaged pages
# --------------------------------------------------------------------------- #


def fsck_data_dir(
    data_dir: Path,
    progress: Callable[[str], None] | None = None,
    *,
    older_schema: bool = False,
) -> FsckReport:
    """fsck of ``data_dir``'s store, run in a forked child: LMDB checks some
    damage only with ``assert`` (a flipped page flag aborts the process), so
    a child that dies by a signal is itself a finding, and each database is
    then scanned in a child of its own to name the ones that abort.
    Raises ``StoreError`` when there is no store to check. ``progress`` is
    called in the child (fsck's), whose fd 2 is /dev/null. ``older_schema``:
    a store of an older schema version is checked at its version (a restored
    pre-migration backup) instead of refused; nothing is written either way."""
    report = _in_child(lambda: _open_and_fsck(data_dir, progress, older_schema))
    if isinstance(report, FsckReport):
        return report
    if isinstance(report, _NoStore):
        raise StoreError(report.message)
    errors = [f"lmdb: {report}: a page is damaged beyond what LMDB reports as an error"]
    for name in DB_NAMES_IN_ORDER:
        outcome = _in_child(lambda name=name: _scan_one(data_dir, name))  # type: ignore[misc]
        if outcome is not None:
            errors.append(f"{name}: {outcome}")
    return FsckReport(ok=False, checked={}, errors=errors)


class _NoStore(msgspec.Struct):
    """No store to check (exit 2), as the child saw it."""

    message: str


def _open_and_fsck(
    data_dir: Path, progress: Callable[[str], None] | None = None, older_schema: bool = False
) -> FsckReport | _NoStore:
    try:
        store = open_store(data_dir, readonly=True, exclusive=False, migrating=older_schema)
    except SchemaVersionError as exc:
        if exc.found is not None:
            return _NoStore(str(exc))  # another schema: not ours to judge
        return FsckReport(ok=False, checked={}, errors=[f"lmdb: {exc}"])
    except StoreDamaged as exc:
        return FsckReport(ok=False, checked={}, errors=[f"lmdb: {exc}"])
    except StoreError as exc:
        return _NoStore(str(exc))
    try:
        return fsck(store, data_dir, progress)
    except (lmdb.Error, RuntimeError) as exc:
        # Each check reports its own damage; this is damage met outside them.
        return FsckReport(ok=False, checked={}, errors=[f"lmdb: {type(exc).__name__}: {exc}"])
    finally:
        store.close()


def _scan_one(data_dir: Path, name: str) -> str | None:
    """What reading every record of database ``name`` meets, if anything."""
    try:
        store = open_store(data_dir, readonly=True, exclusive=False)
    except StoreError as exc:
        return str(exc)
    try:
        table = next(t for t in store.tables.all if t.name == name)
        with store.reader() as txn:
            for _ in table.items_raw(txn):
                pass
    except lmdb.Error as exc:
        return f"structural damage: {type(exc).__name__}: {exc}"
    finally:
        store.close()
    return None


_T = TypeVar("_T")


def _in_child(body: Callable[[], _T]) -> _T | str:
    """``body()`` in a forked child, its result pickled back; a string naming
    the signal or status when the child died without answering."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(read_fd)
            # LMDB's assertion message is not ours to print: the parent names it.
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
            with os.fdopen(write_fd, "wb") as out:
                pickle.dump(body(), out)
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as inp:
        data = inp.read()
    _, status = os.waitpid(pid, 0)
    if data and os.waitstatus_to_exitcode(status) == 0:
        return pickle.loads(data)  # type: ignore[no-any-return]
    if os.WIFSIGNALED(status):
        return f"reading it killed the reader (signal {signal.Signals(os.WTERMSIG(status)).name})"
    return f"the reader failed (exit status {os.waitstatus_to_exitcode(status)})"
