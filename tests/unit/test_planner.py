"""knhkd.plan: the planner's deltas, and proposal content addressing."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import pytest
from rdflib import Graph, Literal, URIRef

from knhkd.analyze.detectors import Detectors, detect_batch
from knhkd.config import AnalyzeConfig
from knhkd.knowledge.rdf import (
    KNHK,
    apply_delta,
    from_rdflib,
    load_ontology,
    sector_schema,
    to_rdflib,
)
from knhkd.knowledge.shacl import Shapes
from knhkd.knowledge.vocabulary import can_rollback, irreversible_removals
from knhkd.model import (
    Alert,
    Delta,
    DetectedPattern,
    Observation,
    ProposalIn,
    ProposeChange,
    Sector,
    Triple,
)
from knhkd.plan.planner import METADATA_KEY_TICKS, RATE_LIMIT_TICKS, plan, rate_limit_iri
from knhkd.plan.proposals import delta_id, make_proposal

REPO = Path(__file__).resolve().parents[2]
S = 1_000_000_000
T0 = 1_700_000_000 * S
RDF_TYPE = "<http://www.w3.org/1999/02/22-rdf-syntax-ns#type>"


@pytest.fixture(scope="module")
def shapes() -> Shapes:
    return Shapes.load(REPO / "conf" / "shapes")


@pytest.fixture()
def genesis_graph() -> Graph:
    return load_ontology(REPO / "conf" / "ontology")


def _obs(
    i: int, event_type: str, sector: Sector = "finance", metadata: dict[str, str] | None = None
) -> Observation:
    return Observation(
        id=f"o{i:05d}",
        seq=i,
        event_type=event_type,
        sector=sector,
        value=None,
        metadata=metadata or {},
        ingested_at_ns=T0 + i,
    )


def _patterns(graph: Graph, observations: list[Observation]) -> list[DetectedPattern]:
    return detect_batch(AnalyzeConfig(), sector_schema(graph), observations, T0 + S)


def _burst(event_type: str, n: int = 150, sector: Sector = "finance") -> list[Observation]:
    return [_obs(i, event_type, sector) for i in range(n)]


# --------------------------------------------------------------------------- #
# high frequency → rate-limit policy
# --------------------------------------------------------------------------- #


def test_rate_limit_policy_conforms_and_is_not_proposed_again(
    genesis_graph: Graph, shapes: Shapes
) -> None:
    patterns = _patterns(genesis_graph, _burst("card.auth/retry:v2"))
    (proposal,) = plan(patterns, genesis_graph)
    hf = next(p for p in patterns if p.kind == "high_frequency")
    assert proposal.pattern_id == hf.id and proposal.confidence == hf.confidence
    assert proposal.sector == "finance" and proposal.estimated_ticks == RATE_LIMIT_TICKS
    assert "150" in proposal.reasoning and "o00000" in proposal.reasoning
    assert proposal.delta.remove == [] and len(proposal.delta.add) == 5
    assert proposal.delta.add == sorted(proposal.delta.add)
    iri = rate_limit_iri("finance", "card.auth/retry:v2")
    assert str(iri) == "urn:knhk:policy:rate-limit:finance:card.auth%2Fretry%3Av2"
    promoted = apply_delta(genesis_graph, proposal.delta)
    result = shapes.validate(promoted)
    assert result.conforms, [v.describe() for v in result.violations]
    assert (iri, KNHK.maxEvents, Literal(100)) in promoted
    assert (iri, KNHK.eventType, Literal("card.auth/retry:v2")) in promoted
    assert (iri, KNHK.sector, KNHK.finance) in promoted
    # The change is in the snapshot now: the same pattern plans nothing.
    assert plan(patterns, promoted) == []


def test_changed_threshold_replaces_the_old_value(genesis_graph: Graph, shapes: Shapes) -> None:
    patterns = _patterns(genesis_graph, _burst("login"))
    (first,) = plan(patterns, genesis_graph)
    promoted = apply_delta(genesis_graph, first.delta)
    stricter = [msgspec.structs.replace(p, threshold=50.0) for p in patterns]
    (second,) = plan(stricter, promoted)
    iri = rate_limit_iri("finance", "login")
    assert second.delta.remove == [from_rdflib(iri, KNHK.maxEvents, Literal(100))]
    assert second.delta.add == [from_rdflib(iri, KNHK.maxEvents, Literal(50))]
    assert shapes.validate(apply_delta(promoted, second.delta)).conforms


# --------------------------------------------------------------------------- #
# schema drift → metadata keys
# --------------------------------------------------------------------------- #


def test_metadata_keys_close_the_loop(genesis_graph: Graph, shapes: Shapes) -> None:
    stream = [
        _obs(0, "transfer", metadata={"account_id": "a", "merchant_id": "m", "geo.region": "eu"}),
        _obs(1, "transfer", metadata={"source": "web"}),
        _obs(2, "scan", "generic", {"whatever": "x"}),
    ]
    schema = sector_schema(genesis_graph)
    detectors = Detectors(AnalyzeConfig(), schema, T0)
    detectors.observe(stream)
    patterns = detectors.evaluate(T0 + S)
    (drift,) = [p for p in patterns if p.kind == "schema_mismatch"]
    assert drift.metadata_keys == ["geo.region", "merchant_id"]
    (proposal,) = plan(patterns, genesis_graph)
    assert proposal.estimated_ticks == METADATA_KEY_TICKS and len(proposal.delta.add) == 6
    promoted = apply_delta(genesis_graph, proposal.delta)
    assert shapes.validate(promoted).conforms
    new_schema = sector_schema(promoted)
    assert {"geo.region", "merchant_id"} <= new_schema["finance"]
    assert plan(patterns, promoted) == []
    # The detector, given the promoted schema, no longer sees drift.
    detectors.set_schema(new_schema)
    detectors.observe([_obs(3, "transfer", metadata={"merchant_id": "m"})])
    assert [p for p in detectors.evaluate(T0 + S) if p.kind == "schema_mismatch"] == []


def test_insane_key_is_proposed_but_fails_the_shapes(genesis_graph: Graph, shapes: Shapes) -> None:
    patterns = _patterns(genesis_graph, [_obs(0, "x", metadata={"bad key!": "v"})])
    (proposal,) = plan(patterns, genesis_graph)
    result = shapes.validate(apply_delta(genesis_graph, proposal.delta))
    assert not result.conforms
    assert any(v.path == "<urn:knhk:ontology#keyName>" for v in result.violations)


# --------------------------------------------------------------------------- #
# what is not planned, and order
# --------------------------------------------------------------------------- #


def _pattern(name: str, confidence: float, action: object, **kw: object) -> DetectedPattern:
    fields: dict[str, object] = {
        "id": name,
        "name": name,
        "kind": "high_frequency",
        "sector": "finance",
        "confidence": confidence,
        "detected_at_ns": T0,
        "window_seconds": 60.0,
        "evidence_count": 200,
        "evidence_ids": [],
        "recommended_action": action,
        "event_type": name,
        "threshold": 100.0,
    }
    fields.update(kw)
    return DetectedPattern(**fields)  # type: ignore[arg-type]


def test_alerts_plan_nothing(genesis_graph: Graph) -> None:
    assert (
        plan([_pattern("e", 0.9, Alert(severity="warning"), kind="error_spike")], genesis_graph)
        == []
    )
    assert plan([], genesis_graph) == []


def test_plan_order_is_deterministic(genesis_graph: Graph) -> None:
    patterns = [
        _pattern(f"t{i}", c, ProposeChange(description=f"limit t{i}"))
        for i, c in enumerate([0.2, 0.9, 0.5, 0.9])
    ]
    expected = plan(patterns, genesis_graph)
    assert [p.pattern_id for p in expected] == ["t1", "t3", "t2", "t0"]
    for seed in range(3):
        shuffled = patterns[:]
        random.Random(seed).shuffle(shuffled)
        assert plan(shuffled, genesis_graph) == expected
    # The same change twice is proposed once.
    twice = [patterns[0], msgspec.structs.replace(patterns[0], id="other", confidence=0.1)]
    assert len(plan(twice, genesis_graph)) == 1


# --------------------------------------------------------------------------- #
# make_proposal and can_rollback
# --------------------------------------------------------------------------- #

T1 = Triple("<urn:ex:a>", "<urn:ex:p>", '"1"')
T2 = Triple("<urn:ex:b>", "<urn:ex:p>", '"2"')
T3 = Triple("<urn:ex:c>", "<urn:ex:p>", '"3"')


def _in(**kw: object) -> ProposalIn:
    fields: dict[str, object] = {
        "sector": "finance",
        "description": "d",
        "reasoning": "r",
        "confidence": 0.7,
        "estimated_ticks": 2,
        "signers": ["carol", "alice"],
        "resources": {"b": 2.0, "a": 1.0},
        "delta": Delta(remove=[T3], add=[T2, T1]),
    }
    fields.update(kw)
    return ProposalIn(**fields)  # type: ignore[arg-type]


def test_proposal_id_ignores_order_and_creation_time() -> None:
    a = make_proposal(_in(), "parent", T0)
    b = make_proposal(
        _in(
            signers=["alice", "carol", "alice"],
            resources={"a": 1.0, "b": 2.0},
            delta=Delta(remove=[T3, T3], add=[T1, T2, T1]),
        ),
        "parent",
        T0 + 5 * S,
    )
    assert a.id == b.id and len(a.id) == 64
    assert a.delta == Delta(remove=[T3], add=[T1, T2]) and a.signers == ["alice", "carol"]
    assert a.created_at_ns == T0 and b.created_at_ns == T0 + 5 * S
    assert a.parent_snapshot_id == "parent" and a.can_rollback


@pytest.mark.parametrize(
    "change",
    [
        {"description": "other"},
        {"reasoning": "other"},
        {"confidence": 0.71},
        {"estimated_ticks": 3},
        {"signers": ["alice"]},
        {"resources": {"a": 1.5}},
        {"pattern_id": "p1"},
        {"sector": "logistics"},
        {"delta": Delta(remove=[], add=[T1, T2, T3])},
    ],
)
def test_proposal_id_covers_every_field(change: dict[str, object]) -> None:
    assert make_proposal(_in(**change), "parent", T0).id != make_proposal(_in(), "parent", T0).id


def test_proposal_id_covers_the_parent() -> None:
    assert make_proposal(_in(), "p1", T0).id != make_proposal(_in(), "p2", T0).id


def test_delta_id_is_order_free() -> None:
    assert delta_id(Delta(add=[T2, T1])) == delta_id(Delta(add=[T1, T2, T1]))
    assert delta_id(Delta(add=[T1])) != delta_id(Delta(remove=[T1]))


@pytest.mark.parametrize(
    "declared",
    [
        "<http://www.w3.org/2000/01/rdf-schema#Class>",
        "<http://www.w3.org/2002/07/owl#Class>",
        "<http://www.w3.org/1999/02/22-rdf-syntax-ns#Property>",
        "<http://www.w3.org/2002/07/owl#ObjectProperty>",
        "<http://www.w3.org/2002/07/owl#DatatypeProperty>",
        "<http://www.w3.org/2002/07/owl#AnnotationProperty>",
    ],
)
def test_removing_a_declaration_cannot_roll_back(declared: str) -> None:
    decl = Triple("<urn:knhk:ontology#Account>", RDF_TYPE, declared)
    assert not can_rollback(Delta(remove=[T1, decl]))
    assert irreversible_removals(Delta(remove=[T1, decl])) == [decl]
    assert can_rollback(Delta(add=[decl], remove=[T1]))
    assert not make_proposal(_in(delta=Delta(remove=[decl])), "p", T0).can_rollback


def test_escaped_spelling_does_not_hide_a_declaration() -> None:
    escaped = Triple(
        "<urn:knhk:ontology#Account>",
        "<http://www.w3.org/1999/02/22-rdf-syntax-ns#\\u0074ype>",
        "<http://www.w3.org/2002/07/owl#Class>",
    )
    assert to_rdflib(escaped)[1] == URIRef("http://www.w3.org/1999/02/22-rdf-syntax-ns#type")
    assert not can_rollback(Delta(remove=[escaped]))
    # A malformed term is stage 1's business; can_rollback must not raise on it.
    assert can_rollback(Delta(remove=[Triple("<x>", "<bad iri>", "<y>")]))
