"""Issuing and storing signed checkpoints of the receipt tree.

Guarantees:
- A checkpoint is issued inside a write transaction from the tree as
  committed in it, signed with the key current in it, and stored by tree size
  (``checkpoints``): ``size`` (8 bytes big-endian) → the signed note.
- The log never signs two checkpoints inconsistent with each other: before
  signing size n it verifies an RFC 9162 consistency proof from the latest
  checkpoint's size to n against both roots, and it never signs a size smaller
  than the latest (the same size is not signed twice).
- The origin is fixed at first start (``meta`` ``receipts.origin``) so a
  rotation does not change the log's name.

Must never: sign a root it has not just recomputed from the stored tree.
"""

from __future__ import annotations

import lmdb

from knhkd.receipts import merkle, tlog_checkpoint
from knhkd.receipts.log import ReceiptLog
from knhkd.receipts.tlog_checkpoint import Checkpoint, CheckpointError
from knhkd.store.env import Store
from knhkd.store.writer import Job


class InconsistentTree(Exception):
    """The tree no longer extends the last signed checkpoint: refuse to sign."""


def origin_of(store: Store, txn: lmdb.Transaction) -> str | None:
    return store.tables.log_origin.get(txn)


def set_origin_job(store: Store, origin: str) -> Job[str]:
    def job(txn: lmdb.Transaction) -> str:
        have = origin_of(store, txn)
        if have is not None:
            return have
        store.tables.log_origin.put(txn, origin)
        return origin

    return job


def latest(store: Store, txn: lmdb.Transaction) -> Checkpoint | None:
    last = store.tables.checkpoints.last(txn)
    return None if last is None else tlog_checkpoint.parse(last[1])[0]


def at_size(store: Store, txn: lmdb.Transaction, size: int) -> Checkpoint | None:
    note = store.tables.checkpoints.get(txn, size)
    return None if note is None else tlog_checkpoint.parse(note)[0]


def covering(store: Store, txn: lmdb.Transaction, size: int) -> Checkpoint | None:
    """The smallest stored checkpoint whose tree size is at least ``size``."""
    found = store.tables.checkpoints.first_from(txn, size)
    return None if found is None else tlog_checkpoint.parse(found[1])[0]


def iter_checkpoints(store: Store, txn: lmdb.Transaction) -> list[tuple[int, str]]:
    return list(store.tables.checkpoints.items(txn))


def issue_job(store: Store, log: ReceiptLog) -> Job[Checkpoint | None]:
    """Sign the tree as it stands in the transaction; None if nothing is new."""

    def job(txn: lmdb.Transaction) -> Checkpoint | None:
        origin = origin_of(store, txn)
        if origin is None:
            raise CheckpointError("the log has no origin yet")
        size = log.tree.size(txn)
        last = latest(store, txn)
        if size == 0 or (last is not None and last.size >= size):
            if last is not None and last.size > size:
                raise InconsistentTree(f"tree size {size} is below signed size {last.size}")
            return None
        root = log.tree.root(txn, size)
        if last is not None:
            proof = log.tree.consistency(txn, last.size, size)
            if not merkle.verify_consistency(last.size, size, proof, last.root, root):
                raise InconsistentTree(
                    f"tree of size {size} is not consistent with the checkpoint of size "
                    f"{last.size}; refusing to sign"
                )
        signed = tlog_checkpoint.sign(origin, size, root, log.signer(txn))
        store.tables.checkpoints.put(txn, size, signed)
        return Checkpoint(origin, size, root, signed)

    return job
