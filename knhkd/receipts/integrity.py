"""The start-up integrity check: is this store the one the data directory's
published history says it is, and is it whole enough to write to?

LMDB can open an older or an empty state without an error (a bit flipped in
a meta page, an old copy of ``data.mdb`` restored): only something kept
outside the file can tell. That is the anchor (store/anchor.py): the latest
signed checkpoint, written after each checkpoint commits.

``check_store`` returns findings, each a precise sentence; none means the
store may take writes:
- structure: every named database answers a read (its root page is
  reachable), the chain head agrees with the receipts stored and with the
  Merkle tree's size, the current snapshot pointer resolves, and a store with
  receipts has a current snapshot;
- the anchor: signed, under the log's origin, by a key the caller trusts
  (kept outside LMDB: ``keys/public.json`` and the signing key in hand, not the
  store's own keyring, which is what is being judged); the store's tree has at
  least the anchor's size and its RFC 9162 root at that size is the anchor's
  root; the store's latest checkpoint is not older than the anchor and signs
  the stored tree's root at its size.

It is O(log n) in the log's size plus one read per database: it runs at every
start. ``knhkctl fsck`` (datadir/fsck.py) re-derives everything and runs the
same anchor comparison.

A data directory has held a chain when it has an anchor file (written right
after genesis and after every checkpoint), or when its store has receipts;
``has_held_chain`` says so, and the daemon never makes a new genesis there.

Must never: write to the store or the anchor; trust a stored hash or a key of
the store's keyring to vouch for the anchor.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import lmdb
import msgspec

from knhkd.receipts import merkle, tlog_checkpoint
from knhkd.receipts.checkpoints import latest, origin_of
from knhkd.receipts.log import read_head
from knhkd.receipts.tlog_checkpoint import Checkpoint, CheckpointError
from knhkd.receipts.tree import MerkleTree, TreeError
from knhkd.store import anchor
from knhkd.store.env import Store

# What a damaged record or page raises while it is read.
DAMAGE = (lmdb.Error, msgspec.MsgspecError, ValueError, UnicodeDecodeError)


def has_held_chain(store: Store, data_dir: Path) -> bool:
    """An anchor file exists (even unreadable), or the store holds receipts."""
    if anchor.path_in(data_dir).exists():
        return True
    try:
        with store.reader() as txn:
            return store.tables.receipts.count(txn) > 0
    except lmdb.Error:
        return True  # cannot tell: assume the worst, never a second genesis


def check_store(store: Store, data_dir: Path, trusted: Mapping[str, bytes]) -> list[str]:
    """Findings for ``store`` against the anchor in ``data_dir``; ``trusted``
    maps key id → raw ed25519 public key (keys/public.json and the signing
    key). An empty list: the store may take writes."""
    findings = structure(store)
    try:
        note = anchor.read(anchor.path_in(data_dir))
    except anchor.AnchorError as exc:
        return [*findings, str(exc)]
    if note is not None:
        findings += against_anchor(store, note, trusted)
    return findings


def structure(store: Store) -> list[str]:
    """The fast structural check (no record is decoded beyond the meta slots)."""
    findings: list[str] = []
    for table in store.tables.all:
        try:
            with store.reader() as txn:
                table.probe(txn)
        except lmdb.Error as exc:
            findings.append(f"database {table.name!r} is unreadable: {exc}")
    if findings:
        return findings
    t = store.tables
    try:
        with store.reader() as txn:
            head = read_head(store, txn)
            stored = t.receipts.count(txn)
            last = t.receipts.last(txn)
            tree_size = t.tree_size.get(txn) or 0
            current = t.snapshot_current.get(txn)
            resolves = current is not None and t.snapshots.get_raw(txn, current) is not None
            # Small, and read whole at start (the keyring export): decode it here.
            for _ in t.keys.values(txn):
                pass
    except DAMAGE as exc:
        return [f"the store's meta records or keyring are unreadable: {exc}"]
    if head.next_seq != stored or (last is not None and last[0] != stored - 1):
        findings.append(
            f"the receipt chain head says {head.next_seq} receipts, the store holds {stored}"
            + ("" if last is None else f" (the last is seq {last[0]})")
        )
    if tree_size != head.next_seq:
        findings.append(
            f"the Merkle tree has {tree_size} leaves, the receipt chain {head.next_seq} receipts"
        )
    if current is not None and not resolves:
        findings.append(f"the current snapshot {current[:16]} is not in the store")
    elif current is None and stored > 0:
        findings.append(f"the store has {stored} receipts but no current snapshot")
    return findings


def against_anchor(store: Store, note: str, trusted: Mapping[str, bytes]) -> list[str]:
    """Is the store at or ahead of the signed checkpoint ``note``?"""
    try:
        cp = tlog_checkpoint.verify(note, trusted)
    except CheckpointError as exc:
        return [f"the anchor is not a checkpoint signed by a known key: {exc}"]
    what = f"the anchor (a checkpoint of {cp.size} receipts signed by {cp.origin})"
    tree = MerkleTree(store)
    try:
        with store.reader() as txn:
            origin = origin_of(store, txn)
            size = tree.size(txn)
            if size < cp.size:
                return [
                    f"the store is behind {what}: its tree has {size} receipts "
                    "(rolled back or emptied)"
                ]
            if origin != cp.origin:
                return [f"the store's log is {origin!r}, not the origin of {what}"]
            if tree.root(txn, cp.size) != cp.root:
                return [f"the store's tree at size {cp.size} does not have the root of {what}"]
            return _latest_checkpoint(store, txn, tree, cp, size, what)
    except (TreeError, merkle.ProofError, *DAMAGE) as exc:
        return [f"the store's tree cannot be compared with {what}: {exc}"]


def _latest_checkpoint(
    store: Store,
    txn: lmdb.Transaction,
    tree: MerkleTree,
    anchored: Checkpoint,
    size: int,
    what: str,
) -> list[str]:
    try:
        last = latest(store, txn)
    except CheckpointError as exc:
        return [f"the store's latest checkpoint is malformed: {exc}"]
    if last is None or last.size < anchored.size:
        have = "none" if last is None else f"one of {last.size} receipts"
        return [f"the store's latest checkpoint is {have}, older than {what}"]
    if last.size > size or tree.root(txn, last.size) != last.root:
        return [f"the store's latest checkpoint ({last.size}) does not sign the stored tree"]
    return []
