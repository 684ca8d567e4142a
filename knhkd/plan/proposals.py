"""Proposals: the stored, content-addressed form of a ΔΣ.

Guarantees:
- ``make_proposal`` normalises what carries no meaning before hashing: the
  delta's triples are sorted and de-duplicated, signers sorted and
  de-duplicated, resources keyed in sorted order. The id is the SHA-256 (hex)
  of a canonical MessagePack encoding of every field except the creation time,
  so the same change against the same parent always has the same id.
- ``delta_id`` is the content address of a delta alone (normalised the same
  way): what receipts record as the ΔΣ hash, and what tells two proposals of
  the same change apart from two different changes.
- ``Proposal.can_rollback`` (``knowledge.vocabulary.can_rollback``) is false
  exactly when the delta removes a class or property declaration (``rdf:type``
  of ``rdfs:Class``, ``owl:Class``, ``rdf:Property``, ``owl:ObjectProperty``,
  ``owl:DatatypeProperty`` or ``owl:AnnotationProperty``); terms are compared
  as RDF terms, so an escaped spelling of ``rdf:type`` does not slip through.

Must never: raise on a malformed term (judging terms is validation stage 1's
job, and its verdict must be receipted), read a clock, or draw randomness.
"""

from __future__ import annotations

from typing import Any

from knhkd.knowledge.rdf import content_hash
from knhkd.knowledge.vocabulary import can_rollback
from knhkd.model import Delta, Proposal, ProposalIn

_PROPOSAL_DOMAIN = "knhkd/proposal/v1"
_DELTA_DOMAIN = "knhkd/delta/v1"

def normal_delta(delta: Delta) -> Delta:
    """The delta with its triples sorted and de-duplicated: same meaning, one spelling."""
    return Delta(remove=sorted(set(delta.remove)), add=sorted(set(delta.add)))


def _delta_record(delta: Delta) -> dict[str, Any]:
    return {"remove": delta.remove, "add": delta.add}


def delta_id(delta: Delta) -> str:
    return content_hash(_DELTA_DOMAIN, _delta_record(normal_delta(delta)))


def make_proposal(p: ProposalIn, parent_snapshot_id: str, now_ns: int) -> Proposal:
    """A stored proposal of ``p`` against ``parent_snapshot_id`` (which takes
    precedence over ``p.parent_snapshot_id``: the caller resolves "current")."""
    delta = normal_delta(p.delta)
    signers = sorted(set(p.signers))
    resources = dict(sorted(p.resources.items()))
    content = {
        "parent_snapshot_id": parent_snapshot_id,
        "sector": p.sector,
        "description": p.description,
        "reasoning": p.reasoning,
        "confidence": p.confidence,
        "estimated_ticks": p.estimated_ticks,
        "signers": signers,
        "resources": resources,
        "pattern_id": p.pattern_id,
        "delta": _delta_record(delta),
    }
    return Proposal(
        id=content_hash(_PROPOSAL_DOMAIN, content),
        parent_snapshot_id=parent_snapshot_id,
        sector=p.sector,
        description=p.description,
        reasoning=p.reasoning,
        confidence=p.confidence,
        estimated_ticks=p.estimated_ticks,
        signers=signers,
        resources=resources,
        delta=delta,
        pattern_id=p.pattern_id,
        can_rollback=can_rollback(delta),
        created_at_ns=now_ns,
    )
