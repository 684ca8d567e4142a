"""The compiled validator gives plain ``pyshacl.validate``'s verdicts on
generated inputs: random SHACL Core shapes graphs over random data, and the
project's own observation shapes over random observations (their RDF view, and
RDF payloads).

Equal means: the same ``conforms`` and the same multiset of results — focus
node, result path, constraint component, severity, source shape, value, and
the ``sh:message`` texts where the shape declares them — or both refusing the
input. pySHACL is never given ``focus_nodes``.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rdflib import Graph

from knhkd.knowledge.observation_rdf import observation_graph
from knhkd.knowledge.shacl import CompiledShapes, DataGraph
from knhkd.model import SECTORS, ObservationIn, RdfPayload
from knhkd.monitor.shapes import load_observation_shapes, payload_triples
from tests.unit.shacl_gen import (
    data_graphs,
    describe,
    message_shapes,
    run_compiled,
    run_pyshacl,
    same,
    shapes_graphs,
)

REPO = Path(__file__).resolve().parents[2]
OBS_SHAPES = REPO / "conf" / "shapes" / "observations"

_SETTINGS = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_SETTINGS
@given(shapes=shapes_graphs(), data=data_graphs())
def test_generated_shapes_and_data(shapes: Graph, data: Graph) -> None:
    compiled = CompiledShapes.compile(shapes)
    # Everything the generator uses is compiled: no shape falls back.
    assert compiled.fully_compiled, compiled.fallback
    mine = run_compiled(data, shapes, compiled)
    reference = run_pyshacl(data, shapes)
    msg = message_shapes(shapes)
    assert same(mine, reference, msg), describe(mine, reference, msg)


_UNSUPPORTED = [
    # A SPARQL-based constraint.
    """<http://example.org/sparql> sh:targetClass <http://example.org/C0> ;
        sh:sparql [ sh:select
            "SELECT $this ?value WHERE { $this <http://example.org/p0> ?value }" ] .""",
    # A recursive shape (through a property shape).
    """<http://example.org/rec> sh:targetSubjectsOf <http://example.org/p1> ;
        sh:property [ sh:path <http://example.org/p1> ; sh:nodeKind sh:IRI ;
                      sh:node <http://example.org/rec> ] .""",
]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(shapes=shapes_graphs(), data=data_graphs(), extra=st.sampled_from(_UNSUPPORTED))
def test_generated_shapes_with_a_fallback_shape(shapes: Graph, data: Graph, extra: str) -> None:
    """Compiled and pySHACL-run shapes in one graph: merged, the verdicts are
    still those of one plain pySHACL call over the whole graph."""
    shapes.parse(data="@prefix sh: <http://www.w3.org/ns/shacl#> .\n" + extra, format="turtle")
    compiled = CompiledShapes.compile(shapes)
    assert compiled.fallback
    mine = run_compiled(data, shapes, compiled)
    reference = run_pyshacl(data, shapes)
    msg = message_shapes(shapes)
    assert same(mine, reference, msg), describe(mine, reference, msg)


# --------------------------------------------------------------------------- #
# The project's observation shapes
# --------------------------------------------------------------------------- #

_keys = st.sampled_from(
    ["amount", "currency", "defect_rate", "n", "items", "a b", "ü", "patient_id", "x"]
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**20),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from(["EUR", "usd", "", "L-1", "SHP-0001", "x" * 70, "P-1"]),
    st.text(max_size=8),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=3)),
    max_leaves=8,
)
_meta_values = st.sampled_from(
    ["EUR", "EURO", "P-1", "bad id!", "L-12", "line", "SHP-000123", "shp-1", "ABC", "x" * 70]
)
_observations = st.builds(
    ObservationIn,
    event_type=st.sampled_from(
        ["transaction.execute", "quality.inspect", "sensor.read", "line.tick", "admit", "scan"]
    ),
    sector=st.sampled_from(SECTORS),
    value=st.one_of(
        _json,
        st.fixed_dictionaries(
            {"amount": st.one_of(st.integers(-3, 10**6), st.decimals(-5, 5, places=3).map(float))},
            optional={"currency": st.sampled_from(["EUR", "eur", "EU", 5])},
        ),
        st.fixed_dictionaries({"defect_rate": st.floats(-0.5, 1.5)}),
    ),
    metadata=st.dictionaries(
        st.sampled_from(
            ["currency", "patient_id", "encounter_id", "line_id", "shipment_id", "terminal_id"]
        ),
        _meta_values,
        max_size=3,
    ),
)


@pytest.fixture(scope="module")
def sector_shapes() -> dict[str, Any]:
    loaded = load_observation_shapes(OBS_SHAPES)
    out = {}
    for sector, s in loaded.items():
        assert s.compiled.fully_compiled, (sector, s.compiled.fallback)
        # Compiled from the very graph pySHACL gets, so blank-node shape
        # names (sh:sourceShape) are the same on both sides.
        g = Graph()
        g.parse(s.path, format="turtle")
        out[sector] = (CompiledShapes.compile(g), g, message_shapes(g))
    return out


@_SETTINGS
@given(item=_observations, index=st.integers(0, 3))
def test_observation_shapes_on_generated_observations(
    sector_shapes: dict[str, Any], item: ObservationIn, index: int
) -> None:
    compiled, shapes, msg = sector_shapes[item.sector]
    view = observation_graph(item, index)
    mine = compiled.validate(view)
    reference = run_pyshacl(view.to_rdflib(), shapes)
    assert not isinstance(reference, str), reference
    outcome = (mine.conforms, mine.results)
    assert same(outcome, reference, msg), describe(outcome, reference, msg)


_payloads = st.sampled_from(
    [
        '<urn:ex:t> a <urn:knhk:ontology#Transaction> ; <urn:knhk:ontology#transaction_id> "T1" .',
        "<urn:ex:t> a <urn:knhk:ontology#Transaction> ; <urn:knhk:ontology#amount> -1 .",
        '<urn:ex:t> a <urn:knhk:ontology#Transaction> ; <urn:knhk:ontology#transaction_id> "" ;'
        " <urn:knhk:ontology#amount> 2.5, 3 .",
        '[] a <urn:knhk:ontology#Transaction> ; <urn:knhk:ontology#transaction_id> "T", "U" .',
        '<urn:knhk:obs:this> <urn:knhk:meta#currency> "euro" .',
        "<urn:knhk:obs:this> <urn:knhk:ontology#value> [ <urn:knhk:value#amount> -7 ] .",
        '<urn:knhk:obs:this> <urn:knhk:meta#patient_id> "P-9" .',
    ]
)


@_SETTINGS
@given(item=_observations, payload=_payloads)
def test_observation_shapes_with_payloads(
    sector_shapes: dict[str, Any], item: ObservationIn, payload: str
) -> None:
    compiled, shapes, msg = sector_shapes[item.sector]
    extra = payload_triples(RdfPayload(format="turtle", data=payload), 1)
    triples = [*observation_graph(item, 1).triples(), *extra]
    data = Graph()
    for t in triples:
        data.add(t)
    mine = compiled.validate(DataGraph.from_triples(triples))
    reference = run_pyshacl(data, shapes)
    assert not isinstance(reference, str), reference
    outcome = (mine.conforms, mine.results)
    assert same(outcome, reference, msg), describe(outcome, reference, msg)


def test_decimal_values_compare_like_rdflib() -> None:
    """A regression guard for the numeric fast path of range constraints."""
    shapes = Graph()
    shapes.parse(
        data="""
        @prefix sh: <http://www.w3.org/ns/shacl#> .
        <urn:s> sh:targetNode <urn:n> ; sh:property [ sh:path <urn:p> ;
            sh:minInclusive 0 ; sh:maxExclusive 2.5 ; sh:minExclusive -1.0 ] .
        """,
        format="turtle",
    )
    data = Graph()
    from rdflib import Literal, URIRef

    for v in (Literal(0), Literal(Decimal("2.5")), Literal(2.4999), Literal(-1), Literal("1")):
        data.add((URIRef("urn:n"), URIRef("urn:p"), v))
    mine, reference = run_compiled(data, shapes), run_pyshacl(data, shapes)
    assert same(mine, reference), describe(mine, reference)
