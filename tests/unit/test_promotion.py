"""knhkd.execute.promotion: genesis, promotion and rollback rules."""

from __future__ import annotations

import pytest

from knhkd.execute.promotion import (
    PromotionError,
    RollbackRefused,
    genesis,
    promote,
    rollback_target,
)
from knhkd.knowledge.rdf import (
    KnowledgeError,
    apply_delta,
    canonical_ntriples,
    content_id,
    graph_from_ntriples,
)
from knhkd.model import Delta, ProposalIn, Triple
from knhkd.plan.proposals import make_proposal

NOW = 1_700_000_000_000_000_000
BASE = '<urn:ex:a> <urn:ex:p> "1" .\n_:b <urn:ex:p> <urn:ex:a> .\n'
ADD = Triple("<urn:ex:a>", "<urn:ex:p>", '"2"')


def _proposal(parent_id: str, delta: Delta = Delta(add=[ADD])):  # noqa: B008
    return make_proposal(ProposalIn(sector="generic", description="t", delta=delta), parent_id, NOW)


def test_genesis() -> None:
    g = graph_from_ntriples(BASE)
    rec = genesis(g, NOW)
    assert rec.meta.version == 0 and rec.meta.parent_id is None and rec.meta.proposal_id is None
    assert rec.ntriples == canonical_ntriples(g)
    assert rec.meta.snapshot_id == content_id(rec.ntriples)
    assert rec.meta.triple_count == 2 and rec.meta.promoted_at_ns == NOW
    # Same content, any blank-node labels: the same genesis id.
    assert (
        genesis(graph_from_ntriples(BASE.replace("_:b", "_:zz")), NOW + 1).meta.snapshot_id
        == rec.meta.snapshot_id
    )


def test_promote_links_to_the_current_snapshot() -> None:
    g = graph_from_ntriples(BASE)
    current = genesis(g, NOW).meta
    proposal = _proposal(current.snapshot_id)
    rec = promote(current, proposal, apply_delta(g, proposal.delta), NOW + 5)
    assert rec.meta.parent_id == current.snapshot_id
    assert rec.meta.version == 1 and rec.meta.proposal_id == proposal.id
    assert rec.meta.snapshot_id == content_id(rec.ntriples) != current.snapshot_id
    assert rec.meta.triple_count == 3 and rec.meta.promoted_at_ns == NOW + 5
    assert rollback_target(rec.meta) == current.snapshot_id


def test_promote_refuses_a_stale_parent() -> None:
    g = graph_from_ntriples(BASE)
    current = genesis(g, NOW).meta
    stale = _proposal("0" * 64)
    with pytest.raises(PromotionError, match="not the current"):
        promote(current, stale, apply_delta(g, stale.delta), NOW)


def test_promote_refuses_a_no_op() -> None:
    g = graph_from_ntriples(BASE)
    current = genesis(g, NOW).meta
    same = Triple("<urn:ex:a>", "<urn:ex:p>", '"1"')
    noop = _proposal(current.snapshot_id, Delta(remove=[same], add=[same]))
    with pytest.raises(PromotionError, match="changes nothing"):
        promote(current, noop, apply_delta(g, noop.delta), NOW)


def test_promote_refuses_going_back_in_time() -> None:
    g = graph_from_ntriples(BASE)
    current = genesis(g, NOW).meta
    proposal = _proposal(current.snapshot_id)
    with pytest.raises(PromotionError, match="before"):
        promote(current, proposal, apply_delta(g, proposal.delta), NOW - 1)


def test_genesis_cannot_roll_back() -> None:
    current = genesis(graph_from_ntriples(BASE), NOW).meta
    with pytest.raises(RollbackRefused):
        rollback_target(current)
    assert issubclass(RollbackRefused, KnowledgeError)
    assert issubclass(PromotionError, KnowledgeError)
