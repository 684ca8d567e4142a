"""The planner: ProposeChange patterns in, ΔΣ proposals out.

What each pattern becomes:

- ``high_frequency_{type}`` in sector S: a ``knhk:RateLimitPolicy`` named
  ``urn:knhk:policy:rate-limit:{S}:{type}`` with ``knhk:eventType`` the event
  type, ``knhk:sector`` the sector, ``knhk:maxEvents`` the detector's threshold
  and ``knhk:windowSeconds`` its window. ``estimated_ticks`` is 2: enforcing
  the policy costs the hot path a counter increment and a comparison.
- ``schema_mismatch`` in sector S with keys K: one ``knhk:MetadataKey`` per
  key of K that the snapshot's schema does not already allow, named
  ``urn:knhk:schema:{S}:{key}``, with ``knhk:keyName`` and ``knhk:sector``.
  ``estimated_ticks`` is 1: a key check is one set-membership probe.

Names are percent-encoded (RFC 3986 unreserved characters kept), so any event
type or key gives a well-formed IRI. Alerts, Observe and EnforceInvariant
actions produce nothing.

Guarantees:
- The delta holds only what the snapshot lacks: triples already present are
  not added, and a functional property (one value per resource: eventType,
  sector, maxEvents, windowSeconds, keyName) with a different value in the
  snapshot has that value removed first. A pattern whose change is already in
  the snapshot plans nothing, so a promoted change is not proposed again.
- Deterministic: patterns are considered in (-confidence, name, sector) order
  whatever order they come in, delta triples are sorted, and a delta equal to
  an earlier one in the same call is not proposed twice.
- Proposals carry no parent snapshot id; the caller resolves it (the delta is
  computed against the ``snapshot`` graph it was given).

Must never: read a clock, perform I/O, or mutate the snapshot graph.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from urllib.parse import quote

from rdflib import Graph, Literal, URIRef
from rdflib.namespace import RDF
from rdflib.term import Node

from knhkd.knowledge.rdf import KNHK, SECTOR_IRIS, from_rdflib, sector_schema
from knhkd.model import Delta, DetectedPattern, ProposalIn, ProposeChange, Triple
from knhkd.plan.proposals import delta_id, normal_delta

RATE_LIMIT_TICKS = 2
METADATA_KEY_TICKS = 1


def _segment(text: str) -> str:
    return quote(text, safe="-._~")


def rate_limit_iri(sector: str, event_type: str) -> URIRef:
    return URIRef(f"urn:knhk:policy:rate-limit:{_segment(sector)}:{_segment(event_type)}")


def metadata_key_iri(sector: str, key: str) -> URIRef:
    return URIRef(f"urn:knhk:schema:{_segment(sector)}:{_segment(key)}")


def _resource_delta(
    snapshot: Graph, subject: URIRef, rdf_type: URIRef, functional: Mapping[URIRef, Node]
) -> tuple[list[Triple], list[Triple]]:
    """(remove, add) that make ``subject`` a ``rdf_type`` whose functional
    properties have exactly the given values."""
    remove: list[Triple] = []
    add: list[Triple] = []
    if (subject, RDF.type, rdf_type) not in snapshot:
        add.append(from_rdflib(subject, RDF.type, rdf_type))
    for prop, value in functional.items():
        present = False
        for old in snapshot.objects(subject, prop):
            if old == value:
                present = True
            else:
                remove.append(from_rdflib(subject, prop, old))
        if not present:
            add.append(from_rdflib(subject, prop, value))
    return remove, add


def _evidence(p: DetectedPattern) -> str:
    shown = ", ".join(p.evidence_ids)
    more = p.evidence_count - len(p.evidence_ids)
    tail = f" and {more} more" if more > 0 else ""
    return f"evidence: {shown}{tail}" if shown else "evidence: none sampled"


def _rate_limit(p: DetectedPattern, snapshot: Graph) -> ProposalIn | None:
    if p.sector is None or p.event_type is None or p.threshold is None:
        return None
    max_events = round(p.threshold)
    remove, add = _resource_delta(
        snapshot,
        rate_limit_iri(p.sector, p.event_type),
        KNHK.RateLimitPolicy,
        {
            KNHK.eventType: Literal(p.event_type),
            KNHK.sector: SECTOR_IRIS[p.sector],
            KNHK.maxEvents: Literal(max_events),
            KNHK.windowSeconds: Literal(Decimal(repr(p.window_seconds))),
        },
    )
    reasoning = (
        f"{p.evidence_count} {p.event_type!r} events in {p.sector} within "
        f"{p.window_seconds:g} s exceed the threshold of {max_events} "
        f"(confidence {p.confidence:.3f}); {_evidence(p)}"
    )
    return _proposal(p, remove, add, reasoning, RATE_LIMIT_TICKS)


def _metadata_keys(
    p: DetectedPattern, snapshot: Graph, schema: Mapping[str, frozenset[str]]
) -> ProposalIn | None:
    if p.sector is None:
        return None
    allowed = schema.get(p.sector, frozenset())
    remove: list[Triple] = []
    add: list[Triple] = []
    for key in sorted(set(p.metadata_keys) - allowed):
        r, a = _resource_delta(
            snapshot,
            metadata_key_iri(p.sector, key),
            KNHK.MetadataKey,
            {KNHK.keyName: Literal(key), KNHK.sector: SECTOR_IRIS[p.sector]},
        )
        remove += r
        add += a
    reasoning = (
        f"{p.evidence_count} {p.sector} observation(s) within {p.window_seconds:g} s "
        f"carried metadata keys outside the {p.sector} schema: "
        f"{', '.join(p.metadata_keys)} (confidence {p.confidence:.3f}); {_evidence(p)}"
    )
    return _proposal(p, remove, add, reasoning, METADATA_KEY_TICKS)


def _proposal(
    p: DetectedPattern, remove: list[Triple], add: list[Triple], reasoning: str, ticks: int
) -> ProposalIn | None:
    if (not remove and not add) or p.sector is None:
        return None
    action = p.recommended_action
    return ProposalIn(
        sector=p.sector,
        description=action.description if isinstance(action, ProposeChange) else p.name,
        delta=normal_delta(Delta(remove=remove, add=add)),
        reasoning=reasoning,
        confidence=p.confidence,
        estimated_ticks=ticks,
        pattern_id=p.id,
    )


def plan(patterns: Sequence[DetectedPattern], snapshot: Graph) -> list[ProposalIn]:
    """The proposals the ProposeChange patterns call for against ``snapshot``."""
    ordered = sorted(patterns, key=lambda p: (-p.confidence, p.name, p.sector or "", p.id))
    schema: dict[str, frozenset[str]] | None = None
    out: list[ProposalIn] = []
    seen: set[str] = set()
    for p in ordered:
        if not isinstance(p.recommended_action, ProposeChange):
            continue
        proposal: ProposalIn | None = None
        if p.kind == "high_frequency":
            proposal = _rate_limit(p, snapshot)
        elif p.kind == "schema_mismatch":
            if schema is None:
                schema = sector_schema(snapshot)
            proposal = _metadata_keys(p, snapshot, schema)
        if proposal is None:
            continue
        key = delta_id(proposal.delta)
        if key in seen:
            continue
        seen.add(key)
        out.append(proposal)
    return out
