"""Snapshot transitions as pure functions: genesis, promotion, rollback target.

Guarantees:
- A snapshot's id is ``content_id(canonical_ntriples(graph))`` and its record
  carries exactly that canonical text, so the id can be re-derived from the
  record alone; ``triple_count`` is the number of canonical lines.
- Genesis is version 0 with no parent and no proposal.
- ``promote`` refuses (``PromotionError``) a proposal written against any
  snapshot but the current one, a result whose content equals the current
  snapshot (a no-op would make a snapshot its own parent), and a promotion time
  before the current snapshot's (nothing is ordered before its cause, Q1).
  Otherwise the new snapshot is version current + 1 with the current as parent.
- ``rollback_target`` names the parent, and refuses (``RollbackRefused``) at
  genesis.

What these functions cannot see, the caller must check inside the
transaction that moves the current pointer: that the snapshot is still
current, and that the new id is not an ancestor's (Q1).

Must never: read a clock, touch storage, or trust that ``result`` came from
applying the proposal's delta (the caller computes it; it is not re-derived).
"""

from __future__ import annotations

from rdflib import Graph

from knhkd.errors import Conflict
from knhkd.knowledge.rdf import KnowledgeError, canonical_ntriples, content_id
from knhkd.model import Proposal, Snapshot, SnapshotRecord


class PromotionError(KnowledgeError, Conflict):
    """A promotion the snapshot rules forbid."""

    problem = "snapshot-conflict"
    title = "Snapshot conflict"


class RollbackRefused(KnowledgeError, Conflict):
    """A rollback with nothing to roll back to."""

    problem = "rollback-refused"
    title = "Rollback refused"


def _record(g: Graph, *, parent: Snapshot | None, proposal_id: str | None,
            now_ns: int) -> SnapshotRecord:
    text = canonical_ntriples(g)
    meta = Snapshot(
        snapshot_id=content_id(text),
        parent_id=None if parent is None else parent.snapshot_id,
        version=0 if parent is None else parent.version + 1,
        promoted_at_ns=now_ns,
        triple_count=text.count("\n"),
        proposal_id=proposal_id,
    )
    return SnapshotRecord(meta=meta, ntriples=text)


def genesis(g: Graph, now_ns: int) -> SnapshotRecord:
    return _record(g, parent=None, proposal_id=None, now_ns=now_ns)


def promote(current: Snapshot, proposal: Proposal, result: Graph, now_ns: int) -> SnapshotRecord:
    if proposal.parent_snapshot_id != current.snapshot_id:
        raise PromotionError(
            f"proposal {proposal.id[:16]} was written against snapshot "
            f"{proposal.parent_snapshot_id[:16]}, not the current {current.snapshot_id[:16]}"
        )
    if now_ns < current.promoted_at_ns:
        raise PromotionError(
            f"promotion time {now_ns} is before the current snapshot's {current.promoted_at_ns}"
        )
    record = _record(result, parent=current, proposal_id=proposal.id, now_ns=now_ns)
    if record.meta.snapshot_id == current.snapshot_id:
        raise PromotionError(
            f"proposal {proposal.id[:16]} changes nothing: the result is the current snapshot"
        )
    return record


def rollback_target(current: Snapshot) -> str:
    if current.parent_id is None:
        raise RollbackRefused(f"snapshot {current.snapshot_id[:16]} is genesis: no parent")
    return current.parent_id
