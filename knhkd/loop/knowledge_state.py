"""The knowledge the loop works against: the current snapshot, resident.

Guarantees:
- At start the current snapshot is loaded from LMDB; on a fresh store the
  genesis snapshot (version 0) is built from ``knowledge.ontology_dir`` and
  promoted with a receipt, in one transaction.
- ``promote_job`` and ``rollback_job`` run on the writer thread and re-check,
  inside the transaction, that the snapshot they start from is still current:
  a promotion's parent is the current snapshot and its version parent + 1.
- A snapshot is never its own ancestor (invariant Q1): a promotion whose
  content equals the current snapshot or one of its ancestors is refused.
- ``KnowledgeState`` is replaced, never mutated in place, so a reader holding
  the old one sees a consistent snapshot, graph and schema.

Must never: move the current pointer outside a receipted transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb
from rdflib import Graph

from knhkd.errors import Conflict
from knhkd.execute.promotion import RollbackRefused, genesis
from knhkd.knowledge.rdf import (
    content_id,
    graph_from_ntriples,
    load_ontology,
    sector_schema,
)
from knhkd.knowledge.shacl import Shapes
from knhkd.model import Outcome, SignedReceipt, Snapshot, SnapshotRecord, TickBaseline
from knhkd.receipts.log import Draft, ReceiptLog
from knhkd.store.env import Store
from knhkd.store.writer import Job

log = logging.getLogger(__name__)


class SnapshotConflict(Conflict):
    """The snapshot a transition started from is no longer current, or the
    transition would break a snapshot invariant."""

    problem = "snapshot-conflict"
    title = "Snapshot conflict"


@dataclass(frozen=True)
class KnowledgeState:
    current: Snapshot
    graph: Graph
    shapes: Shapes
    schema: dict[str, frozenset[str]]


def state_of(record: SnapshotRecord, shapes: Shapes) -> KnowledgeState:
    graph = graph_from_ntriples(record.ntriples)
    return KnowledgeState(record.meta, graph, shapes, sector_schema(graph))


# --------------------------------------------------------------------------- #
# Reads (any thread; short read transactions)
# --------------------------------------------------------------------------- #


def read_record(store: Store, txn: lmdb.Transaction, snapshot_id: str) -> SnapshotRecord | None:
    return store.tables.snapshots.get(txn, snapshot_id)


def current_id(store: Store, txn: lmdb.Transaction) -> str | None:
    return store.tables.snapshot_current.get(txn)


def iter_snapshots(store: Store, txn: lmdb.Transaction) -> Iterator[Snapshot]:
    """Every snapshot not soft-deleted by retention (loop/retention.py)."""
    for record in store.tables.snapshots.values(txn):
        if record.retired_at_ns is None:
            yield record.meta


def _ancestry(store: Store, txn: lmdb.Transaction, start: str | None) -> Iterator[str]:
    seen: set[str] = set()
    while start is not None and start not in seen:
        seen.add(start)
        yield start
        rec = read_record(store, txn, start)
        start = None if rec is None else rec.meta.parent_id


# --------------------------------------------------------------------------- #
# Writer-thread jobs
# --------------------------------------------------------------------------- #


def _receipt(kind: str, record: SnapshotRecord, detail: str, principal: str = "") -> Draft:
    meta = record.meta
    inputs = {"snapshot_id": meta.snapshot_id, "version": str(meta.version)}
    if principal:
        inputs["principal"] = principal
    if meta.parent_id:
        inputs["parent_id"] = meta.parent_id
    if meta.proposal_id:
        inputs["proposal_id"] = meta.proposal_id
    subjects = [meta.snapshot_id] + ([meta.proposal_id] if meta.proposal_id else [])
    return Draft(
        kind=kind,  # type: ignore[arg-type]
        outcome=Outcome("approved", detail),
        subject_ids=subjects,
        inputs=inputs,
    )


def install_job(
    store: Store,
    receipts: ReceiptLog,
    record: SnapshotRecord,
    *,
    expect_current: str | None,
    principal: str = "",
    baseline: TickBaseline | None = None,
) -> Job[SignedReceipt]:
    """Return a job that makes ``record`` current, as a promotion from
    ``expect_current``; its receipt names ``principal`` (who asked) if given.
    ``baseline``: Q5's, taken for this change, stored with it."""

    def job(txn: lmdb.Transaction) -> SignedReceipt:
        current = current_id(store, txn)
        if current != expect_current:
            raise SnapshotConflict(
                f"current snapshot is {current}, not {expect_current}: the proposal is stale"
            )
        new_id = record.meta.snapshot_id
        if record.meta.parent_id is None and receipts.head(txn).next_seq > 0:
            # A genesis is the first receipt of its log: never a second history
            # begun in a store that has lost its current snapshot.
            raise SnapshotConflict(
                f"refusing a genesis in a log of {receipts.head(txn).next_seq} receipts"
            )
        if new_id in set(_ancestry(store, txn, current)):
            raise SnapshotConflict(
                f"snapshot {new_id[:16]} is already current or an ancestor of it "
                "(Q1: a snapshot is never its own ancestor)"
            )
        store.tables.snapshots.put(txn, new_id, record)
        store.tables.snapshot_current.put(txn, new_id)
        _store_baseline(store, txn, baseline, new_id)
        detail = "genesis" if record.meta.parent_id is None else "promoted"
        return receipts.append(txn, _receipt("snapshot_promoted", record, detail, principal))

    return job


def _store_baseline(
    store: Store, txn: lmdb.Transaction, baseline: TickBaseline | None, made_current: str
) -> None:
    if baseline is None:
        return  # not measured now: the stored one stays in force
    if baseline.snapshot_id != made_current:
        raise SnapshotConflict(
            f"a Q5 baseline taken for {baseline.snapshot_id[:16]} cannot be stored with "
            f"{made_current[:16]} becoming current"
        )
    store.tables.tick_baseline.put(txn, baseline)


def rollback_job(
    store: Store,
    receipts: ReceiptLog,
    *,
    expect_current: str,
    principal: str = "",
    baseline: TickBaseline | None = None,
) -> Job[tuple[SnapshotRecord, SignedReceipt]]:
    """Return a job that makes the current snapshot's parent current again;
    its receipt names ``principal`` (who asked) if given. ``baseline``: Q5's,
    taken for the parent becoming current, stored with it."""

    def job(txn: lmdb.Transaction) -> tuple[SnapshotRecord, SignedReceipt]:
        current = current_id(store, txn)
        if current != expect_current or current is None:
            raise SnapshotConflict(f"current snapshot is {current}, not {expect_current}")
        rec = read_record(store, txn, current)
        if rec is None:
            raise SnapshotConflict(f"current snapshot {current} is missing from the store")
        if rec.meta.parent_id is None:
            raise RollbackRefused("the genesis snapshot has no parent to roll back to")
        parent = read_record(store, txn, rec.meta.parent_id)
        if parent is None:
            raise SnapshotConflict(f"parent snapshot {rec.meta.parent_id} is missing")
        store.tables.snapshot_current.put(txn, rec.meta.parent_id)
        _store_baseline(store, txn, baseline, rec.meta.parent_id)
        signed = receipts.append(
            txn,
            Draft(
                kind="snapshot_rolled_back",
                outcome=Outcome("approved", f"rolled back from version {rec.meta.version}"),
                subject_ids=[rec.meta.parent_id, current],
                inputs={
                    "from_snapshot_id": current,
                    "to_snapshot_id": rec.meta.parent_id,
                    "to_version": str(parent.meta.version),
                    **({"principal": principal} if principal else {}),
                },
            ),
        )
        return parent, signed

    return job


def load_current(store: Store) -> SnapshotRecord | None:
    with store.reader() as txn:
        cid = current_id(store, txn)
        return None if cid is None else read_record(store, txn, cid)


def build_genesis(ontology_dir: Path, now_ns: int) -> SnapshotRecord:
    graph = load_ontology(ontology_dir)
    record = genesis(graph, now_ns)
    # The record's id must be the content address of its own text.
    assert record.meta.snapshot_id == content_id(record.ntriples)
    return record
