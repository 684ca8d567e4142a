"""The RFC 6962 Merkle tree over the receipt log, kept in LMDB.

Leaf ``i`` is receipt ``i``: its leaf hash is ``SHA-256(0x00 || stored
record)`` (the canonical encoding of body and signature, receipts/canonical.py),
so the tree commits to signatures as well as contents.

Guarantees:
- ``append`` runs in the transaction that stores the receipt: the tree and the
  log never diverge. It stores the leaf and every aligned perfect subtree the
  leaf completes: O(log n) work and writes per append, amortised O(1).
- Any root, inclusion, consistency or range proof up to the current size is
  computed from stored perfect subtrees, O(log n) reads (O(log² n) at worst).

Must never: rewrite a stored node; append out of order.
"""

from __future__ import annotations

import lmdb

from knhkd.receipts import merkle
from knhkd.store.env import Store


class TreeError(Exception):
    """The stored tree is missing a node or out of step with the log."""


class MerkleTree:
    def __init__(self, store: Store) -> None:
        self._nodes = store.tables.tree
        self._size = store.tables.tree_size

    def size(self, txn: lmdb.Transaction) -> int:
        return self._size.get(txn) or 0

    def append(self, txn: lmdb.Transaction, index: int, leaf: bytes) -> None:
        self.append_many(txn, index, [leaf])

    def append_many(self, txn: lmdb.Transaction, start: int, leaves: list[bytes]) -> None:
        """Leaves ``start, start+1, ...``; ``start`` must be the current size."""
        size = self.size(txn)
        if start != size:
            raise TreeError(f"leaf {start} appended to a tree of size {size}")
        # Nodes made in this batch: their left siblings are usually among them.
        made: dict[tuple[int, int], bytes] = {}
        put = self._nodes.put_raw
        for offset, leaf in enumerate(leaves):
            h, level, i = leaf, 0, start + offset
            made[(0, i)] = h
            put(txn, (0, i), h, overwrite=False)
            while i & 1:
                left = made.get((level, i - 1)) or self._node(txn, level, i - 1)
                h = merkle.node_hash(left, h)
                level, i = level + 1, i >> 1
                made[(level, i)] = h
                put(txn, (level, i), h, overwrite=False)
        if leaves:
            self._size.put(txn, size + len(leaves))

    def _node(self, txn: lmdb.Transaction, level: int, index: int) -> bytes:
        raw = self._nodes.get_raw(txn, (level, index))
        if raw is None:
            raise TreeError(f"tree node (level {level}, index {index}) is missing")
        return bytes(raw)

    def perfect(self, txn: lmdb.Transaction) -> merkle.SubtreeHash:
        def get(start: int, end: int) -> bytes:
            level = (end - start).bit_length() - 1
            return self._node(txn, level, start >> level)

        return get

    def _check(self, txn: lmdb.Transaction, size: int) -> None:
        have = self.size(txn)
        if not 0 <= size <= have:
            raise merkle.ProofError(f"tree size {size} is beyond the log's {have}")

    def root(self, txn: lmdb.Transaction, size: int | None = None) -> bytes:
        size = self.size(txn) if size is None else size
        self._check(txn, size)
        return merkle.mth(self.perfect(txn), 0, size)

    def inclusion(self, txn: lmdb.Transaction, index: int, size: int) -> list[bytes]:
        self._check(txn, size)
        return merkle.inclusion_path(self.perfect(txn), index, size)

    def consistency(self, txn: lmdb.Transaction, size1: int, size2: int) -> list[bytes]:
        self._check(txn, size2)
        return merkle.consistency_proof(self.perfect(txn), size1, size2)

    def range_proof(self, txn: lmdb.Transaction, start: int, end: int, size: int) -> list[bytes]:
        self._check(txn, size)
        return merkle.range_proof(self.perfect(txn), start, end, size)
