"""fsck: re-derive everything the log claims from what is stored, and name
the first inconsistency with its location.

Checks, in order (``errors`` keeps that order, capped at ``MAX_ERRORS``):
  1. keyring — every entry's id matches its key; the current key is in it;
  2. receipts — canonical form, seq = key, signature by a key valid at the
     receipt's time, ``prev_hash`` chain, time order, stored head;
  3. tree — size = receipts; every leaf = SHA-256(0x00 || record); every
     interior node recomputed from its children; no node missing or extra;
  4. checkpoints — signed by a key of the keyring, the log's origin, and the
     root of the stored tree at their size;
  5. observations — each batch receipt's count and SHA-256 over the stored
     records of its sector and range; the observation counter;
  6. snapshots — each id is the SHA-256 of its canonical N-Triples; the
     current snapshot and every parent exist.

Works read-only on a live or a stopped daemon's store.
Must never: write to the store, or trust a stored hash without recomputing it.
"""

from __future__ import annotations

import hashlib

import lmdb
import msgspec

from knhkd.crypto.keys import KeyFileError, Verifier
from knhkd.knowledge.rdf import content_id
from knhkd.model import FsckReport, Observation, SnapshotRecord
from knhkd.receipts import canonical, merkle, tlog_checkpoint
from knhkd.receipts.checkpoints import origin_of
from knhkd.receipts.keyring import current_key_id, read_keyring
from knhkd.receipts.log import iter_raw, read_head
from knhkd.receipts.tlog_checkpoint import CheckpointError
from knhkd.receipts.tree import MerkleTree, TreeError
from knhkd.receipts.verify import verify_chain
from knhkd.store.env import Store

MAX_ERRORS = 100
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


def fsck(store: Store) -> FsckReport:
    found = _Findings()
    with store.reader() as txn:
        verifier = _keyring(store, txn, found)
        if verifier is not None:
            _receipts(store, txn, verifier, found)
        leaves = _tree(store, txn, found)
        if verifier is not None:
            _checkpoints(store, txn, verifier, leaves, found)
        _observations(store, txn, found)
        _snapshots(store, txn, found)
    return FsckReport(ok=not found.errors, checked=found.checked, errors=found.errors)


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
        try:
            first, last = int(body.inputs["first_seq"]), int(body.inputs["last_seq"])
            count, want = int(body.inputs["count"]), body.inputs["records_sha256"]
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
                sector = _obs_decoder.decode(rec).sector
            except (msgspec.MsgspecError, ValueError):
                found.add(f"observations/{obs_seq}", "not an observation record")
                continue
            if sector == body.sector:
                digest.update(rec)
                n += 1
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
    found.count("observations", stored)


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
