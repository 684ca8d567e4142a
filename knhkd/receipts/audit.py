"""The audit trail read back: receipts of kind ``audit`` as entries.

Audit records are receipts (model.py ``AuditRecord``, loop/auditor.py), so
the chain, the Merkle tree, checkpoints and offline verification cover them
with the code every receipt goes through; this module only selects and
spells them out for ``knhkctl audit list`` and names them in a verification.

Must never: decide whether a record verifies (receipts/verify.py does).
"""

from __future__ import annotations

from collections.abc import Iterator

import lmdb
import msgspec

from knhkd.model import AuditEntry, SignedReceipt
from knhkd.receipts import canonical
from knhkd.receipts.log import iter_raw
from knhkd.store.env import Store

KIND = "audit"
_FIELDS = ("event", "principal", "route", "decision", "reason", "peer")


def entry_of(signed: SignedReceipt) -> AuditEntry:
    body = signed.body
    inputs = body.inputs
    try:
        count = int(inputs.get("count", "1"))
    except ValueError:
        count = 1
    return AuditEntry(
        id=canonical.receipt_id(body.seq),
        seq=body.seq,
        timestamp_ns=body.timestamp_ns,
        **{name: inputs.get(name, "") for name in _FIELDS},
        count=count,
        detail={k.removeprefix("detail."): v for k, v in inputs.items() if k.startswith("detail.")},
    )


def entries(
    store: Store,
    txn: lmdb.Transaction,
    *,
    since_ns: int = 0,
    principal: str | None = None,
    after: int = -1,
) -> Iterator[AuditEntry]:
    """Audit entries in sequence order (a scan of the log: the trail is
    read rarely; receipts that do not decode are skipped here and reported
    by verification)."""
    for _, raw in iter_raw(store, txn, after=after):
        try:
            signed = canonical.decode_record(raw)
        except (msgspec.MsgspecError, ValueError):
            continue
        if signed.body.kind != KIND or signed.body.timestamp_ns < since_ns:
            continue
        entry = entry_of(signed)
        if principal is not None and entry.principal != principal:
            continue
        yield entry


def audit_seqs(store: Store, txn: lmdb.Transaction, seqs: set[int]) -> set[int]:
    """Which of ``seqs`` hold an audit receipt (damaged ones are judged by
    the bytes: the kind's tag is still in the record)."""
    out: set[int] = set()
    tag = msgspec.msgpack.encode(KIND)
    for seq in seqs:
        raw = store.tables.receipts.get_raw(txn, seq)
        if raw is None:
            continue
        try:
            if canonical.decode_record(raw).body.kind == KIND:
                out.add(seq)
        except (msgspec.MsgspecError, ValueError):
            if tag in raw:
                out.add(seq)
    return out
