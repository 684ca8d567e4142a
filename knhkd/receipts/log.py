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
from knhkd.receipts import canonical
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


class ReceiptLog:
    def __init__(self, store: Store, signer: Signer, clock_ns: Callable[[], int]) -> None:
        self._store = store
        self._signer = signer
        self._clock_ns = clock_ns
        self._db = store.db("receipts")
        self._meta = store.db("meta")

    @property
    def signer(self) -> Signer:
        return self._signer

    def head(self, txn: lmdb.Transaction) -> Head:
        return read_head(self._store, txn)

    def append(self, txn: lmdb.Transaction, draft: Draft) -> SignedReceipt:
        head = self.head(txn)
        body = ReceiptBody(
            format=canonical.FORMAT,
            seq=head.next_seq,
            kind=draft.kind,
            subject_ids=list(draft.subject_ids),
            outcome=draft.outcome,
            sector=draft.sector,
            timestamp_ns=max(self._clock_ns(), head.timestamp_ns),
            prev_hash=head.hash,
            key_id=self._signer.key_id,
            inputs=dict(draft.inputs),
        )
        signed = SignedReceipt(body=body, signature=self._signer.sign(canonical.signed_bytes(body)))
        if not txn.put(
            seq_key(body.seq), canonical.encode_record(signed), db=self._db, overwrite=False
        ):
            raise ReceiptLogError(f"receipt {body.seq} already exists")
        new_head = Head(body.seq + 1, canonical.receipt_hash(body), body.timestamp_ns)
        txn.put(META_RECEIPT_HEAD, msgspec.msgpack.encode(new_head), db=self._meta)
        return signed


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
