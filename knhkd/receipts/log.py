"""The append-only receipt log, written inside the state change it records.

Guarantees:
- ``append`` runs inside a write transaction (on the writer thread) and puts
  the receipt and the new chain head in that same transaction: a receipt is
  durable exactly when the state it records is.
- Sequence numbers are contiguous from 0; ``prev_hash`` names the previous
  receipt's hash (receipts/canonical.py); a receipt's time is never before its
  predecessor's (the clock is clamped forward, never the receipt moved back).
- The head is read from the transaction, never cached: an aborted transaction
  leaves no trace in the chain.
- Each receipt becomes leaf ``seq`` of the Merkle tree (receipts/tree.py) in
  the same transaction.

Must never: overwrite or delete a stored receipt.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import lmdb
import msgspec

from knhkd.crypto.keys import Signer, Verifier
from knhkd.model import (
    ChainVerification,
    Outcome,
    ReceiptBody,
    ReceiptKind,
    ReceiptView,
    SignedReceipt,
)
from knhkd.receipts import canonical, merkle
from knhkd.receipts.tree import MerkleTree
from knhkd.receipts.verify import verify_chain
from knhkd.store.env import META_RECEIPT_HEAD, Store
from knhkd.store.ids import key_seq, seq_key


class ReceiptLogError(Exception):
    """The log could not be appended to (it would have been overwritten)."""


class Head(msgspec.Struct, array_like=True):
    """The chain head as stored in ``meta``: what the next receipt links to."""

    next_seq: int
    hash: str
    timestamp_ns: int


_head_decoder = msgspec.msgpack.Decoder(Head)


def read_head(store: Store, txn: lmdb.Transaction) -> Head:
    raw = txn.get(META_RECEIPT_HEAD, db=store.db("meta"))
    if raw is None:
        return Head(0, canonical.GENESIS_PREV, 0)
    return _head_decoder.decode(raw)


@dataclass(frozen=True)
class Draft:
    """A decision to be receipted; the log fills in sequence, time, chain, key."""

    kind: ReceiptKind
    outcome: Outcome
    subject_ids: list[str] = field(default_factory=list)
    sector: str = ""
    inputs: dict[str, str] = field(default_factory=dict)


META_KEYS_CURRENT = b"keys.current"


class ReceiptLog:
    """Appends receipts; signs each with the key current *in the transaction*.

    The current key id is read from ``meta`` in the transaction (so a key
    rotation and the receipts after it can share one transaction, and an
    aborted rotation changes nothing); the secret keys it may need are
    registered with ``add_signer``.
    """

    def __init__(self, store: Store, signer: Signer, clock_ns: Callable[[], int]) -> None:
        self._store = store
        self._signers = {signer.key_id: signer}
        self._default = signer.key_id
        self._clock_ns = clock_ns
        self._db = store.db("receipts")
        self._meta = store.db("meta")
        self.tree = MerkleTree(store)

    def add_signer(self, signer: Signer) -> None:
        self._signers[signer.key_id] = signer

    def current_key_id(self, txn: lmdb.Transaction) -> str:
        raw = txn.get(META_KEYS_CURRENT, db=self._meta)
        return bytes(raw).decode() if raw is not None else self._default

    def signer(self, txn: lmdb.Transaction) -> Signer:
        key_id = self.current_key_id(txn)
        try:
            return self._signers[key_id]
        except KeyError:
            raise ReceiptLogError(f"no secret key for the current key {key_id}") from None

    def head(self, txn: lmdb.Transaction) -> Head:
        return read_head(self._store, txn)

    def append(self, txn: lmdb.Transaction, draft: Draft) -> SignedReceipt:
        head = self.head(txn)
        signer = self.signer(txn)
        body = ReceiptBody(
            format=canonical.FORMAT,
            seq=head.next_seq,
            kind=draft.kind,
            subject_ids=list(draft.subject_ids),
            outcome=draft.outcome,
            sector=draft.sector,
            timestamp_ns=max(self._clock_ns(), head.timestamp_ns),
            prev_hash=head.hash,
            key_id=signer.key_id,
            inputs=dict(draft.inputs),
        )
        signed = SignedReceipt(body=body, signature=signer.sign(canonical.signed_bytes(body)))
        record = canonical.encode_record(signed)
        if not txn.put(seq_key(body.seq), record, db=self._db, overwrite=False):
            raise ReceiptLogError(f"receipt {body.seq} already exists")
        self.tree.append(txn, body.seq, merkle.leaf_hash(record))
        new_head = Head(body.seq + 1, canonical.receipt_hash(body), body.timestamp_ns)
        txn.put(META_RECEIPT_HEAD, msgspec.msgpack.encode(new_head), db=self._meta)
        return signed

    def backfill_tree(self, txn: lmdb.Transaction) -> int:
        """Add the receipts the tree lacks (a store written before the tree
        existed). Returns how many leaves were added."""
        size = self.tree.size(txn)
        added = 0
        for seq, record in iter_raw(self._store, txn, after=size - 1):
            self.tree.append(txn, seq, merkle.leaf_hash(record))
            added += 1
        return added


def view(signed: SignedReceipt) -> ReceiptView:
    return ReceiptView(
        id=canonical.receipt_id(signed.body.seq),
        hash=canonical.receipt_hash(signed.body),
        body=signed.body,
        signature=base64.b64encode(signed.signature).decode(),
    )


def iter_raw(
    store: Store, txn: lmdb.Transaction, *, after: int = -1
) -> Iterator[tuple[int, bytes]]:
    """(seq, stored bytes) in sequence order, starting after ``after``."""
    cursor = txn.cursor(db=store.db("receipts"))
    if not cursor.set_range(seq_key(after + 1)):
        return
    for key, value in cursor:
        yield key_seq(bytes(key)), bytes(value)


def verify_store(store: Store, verifier: Verifier) -> ChainVerification:
    """Verify the whole stored chain, and that the stored head matches its tail."""
    with store.reader() as txn:
        head = read_head(store, txn)
        return verify_chain(
            iter_raw(store, txn), verifier, expected_head=(head.next_seq, head.hash)
        )
