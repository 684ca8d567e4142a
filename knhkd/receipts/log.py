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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import lmdb

from knhkd.crypto.keys import Signer, Verifier
from knhkd.model import (
    ChainVerification,
    Outcome,
    ReceiptBody,
    ReceiptHead,
    ReceiptKind,
    ReceiptView,
    SignedReceipt,
)
from knhkd.receipts import canonical, merkle
from knhkd.receipts.tree import MerkleTree
from knhkd.receipts.verify import verify_chain
from knhkd.store.env import Store
from knhkd.telemetry.tracing import start_span


class ReceiptLogError(Exception):
    """The log could not be appended to (it would have been overwritten)."""


# The chain head as stored in ``meta``: what the next receipt links to.
Head = ReceiptHead


def read_head(store: Store, txn: lmdb.Transaction) -> Head:
    head = store.tables.receipt_head.get(txn)
    return Head(0, canonical.GENESIS_PREV, 0) if head is None else head


@dataclass(frozen=True)
class Draft:
    """A decision to be receipted; the log fills in sequence, time, chain, key."""

    kind: ReceiptKind
    outcome: Outcome
    subject_ids: list[str] = field(default_factory=list)
    sector: str = ""
    inputs: dict[str, str] = field(default_factory=dict)


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
        self._receipts = store.tables.receipts
        self._head = store.tables.receipt_head
        self._keys_current = store.tables.keys_current
        self.tree = MerkleTree(store)

    def add_signer(self, signer: Signer) -> None:
        self._signers[signer.key_id] = signer

    def current_key_id(self, txn: lmdb.Transaction) -> str:
        key_id = self._keys_current.get(txn)
        return self._default if key_id is None else key_id

    def signer(self, txn: lmdb.Transaction) -> Signer:
        key_id = self.current_key_id(txn)
        try:
            return self._signers[key_id]
        except KeyError:
            raise ReceiptLogError(f"no secret key for the current key {key_id}") from None

    def head(self, txn: lmdb.Transaction) -> Head:
        return read_head(self._store, txn)

    def append(self, txn: lmdb.Transaction, draft: Draft) -> SignedReceipt:
        return self.append_many(txn, [draft])[0]

    def append_many(self, txn: lmdb.Transaction, drafts: Sequence[Draft]) -> list[SignedReceipt]:
        """Append ``drafts`` in order. The chain links bodies, not signatures,
        so all bodies are built first and then signed together on all cores."""
        if not drafts:
            return []
        # One span per receipt, children of the submitter's span (the writer
        # runs a job in its submitter's trace context: loop/writer.py).
        spans = [
            start_span(
                "knhk.receipt.generate",
                {"kind": d.kind, "outcome": d.outcome.status}
                | ({"sector": d.sector} if d.sector else {}),
            )
            for d in drafts
        ]
        try:
            return self._append_many(txn, drafts)
        finally:
            for s in spans:
                s.end()

    def _append_many(self, txn: lmdb.Transaction, drafts: Sequence[Draft]) -> list[SignedReceipt]:
        head = self.head(txn)
        signer = self.signer(txn)
        seq, prev, ts = head.next_seq, head.hash, head.timestamp_ns
        bodies: list[ReceiptBody] = []
        messages: list[bytes] = []
        for draft in drafts:
            ts = max(self._clock_ns(), ts)
            body = ReceiptBody(
                format=canonical.FORMAT,
                seq=seq,
                kind=draft.kind,
                subject_ids=list(draft.subject_ids),
                outcome=draft.outcome,
                sector=draft.sector,
                timestamp_ns=ts,
                prev_hash=prev,
                key_id=signer.key_id,
                inputs=dict(draft.inputs),
            )
            message = canonical.signed_bytes(body)
            bodies.append(body)
            messages.append(message)
            prev = canonical.hash_of(message)
            seq += 1
        out: list[SignedReceipt] = []
        leaves: list[bytes] = []
        for body, signature in zip(bodies, signer.sign_many(messages), strict=True):
            signed = SignedReceipt(body=body, signature=signature)
            record = canonical.encode_record(signed)
            if not self._receipts.put_raw(txn, body.seq, record, overwrite=False):
                raise ReceiptLogError(f"receipt {body.seq} already exists")
            out.append(signed)
            leaves.append(merkle.leaf_hash(record))
        self.tree.append_many(txn, head.next_seq, leaves)
        self._head.put(txn, Head(seq, prev, ts))
        return out

    def backfill_tree(self, txn: lmdb.Transaction) -> int:
        """Add the receipts the tree lacks (a store written before the tree
        existed). Returns how many leaves were added."""
        size = self.tree.size(txn)
        leaves = [merkle.leaf_hash(r) for _, r in iter_raw(self._store, txn, after=size - 1)]
        self.tree.append_many(txn, size, leaves)
        return len(leaves)


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
    return store.tables.receipts.items_raw(txn, start=after + 1)


Records = Iterable[tuple[int, bytes]]


def verify_store(
    store: Store, verifier: Verifier, watch: Callable[[Records, int], Records] | None = None
) -> ChainVerification:
    """Verify the whole stored chain, and that the stored head matches its tail.
    ``watch(records, count)`` may wrap the records as they are read (knhkctl
    counts them on a progress bar); it must yield them unchanged."""
    with store.reader() as txn:
        head = read_head(store, txn)
        records: Records = iter_raw(store, txn)
        if watch is not None:
            records = watch(records, head.next_seq)
        return verify_chain(records, verifier, expected_head=(head.next_seq, head.hash))
