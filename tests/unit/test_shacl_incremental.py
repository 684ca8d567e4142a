"""knhkd.knowledge.shacl_incremental: the incremental check gives exactly the
plain pySHACL call's result on the whole resulting graph, for generated graphs
and deltas; the certifier never claims "no result" where pySHACL reports one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rdflib import BNode, Graph, Literal, URIRef
from rdflib.namespace import RDF, RDFS, XSD
from rdflib.term import Node

from knhkd.knowledge.rdf import (
    DeltaView,
    apply_delta,
    canonical_ntriples,
    from_rdflib,
    graph_from_ntriples,
)
from knhkd.knowledge.shacl import Shapes
from knhkd.knowledge.shacl.incremental import (
    ShaclChecker,
    certifier,
    certify,
    dependencies,
    validate_owned,
)
from knhkd.knowledge.shacl.plain import forget_pyshacl_bnode_texts
from knhkd.knowledge.shacl.terms import term_text as focus_text
from knhkd.model import Delta, Triple

REPO = Path(__file__).resolve().parents[2]
EX = "urn:ex#"

PREFIXES = """\
@prefix sh: <http://www.w3.org/ns/shacl#> .
@prefix xsd: <http://www.w3.org/2001/XMLSchema#> .
@prefix rdf: <http://www.w3.org/1999/02/22-rdf-syntax-ns#> .
@prefix ex: <urn:ex#> .
"""

# Certifiable components, nested shapes, inverse paths, sh:class through the
# class hierarchy, every kind of target.
CERTIFIABLE = PREFIXES + """
ex:AShape a sh:NodeShape ; sh:targetClass ex:A ;
    sh:property [ sh:path ex:p ; sh:minCount 1 ; sh:maxCount 2 ; sh:node ex:NamedShape ] ;
    sh:property [ sh:path ex:q ; sh:datatype xsd:integer ; sh:minInclusive 0 ;
                  sh:maxExclusive 10 ] ;
    sh:property [ sh:path [ sh:inversePath ex:r ] ; sh:class ex:B ] .
ex:NamedShape a sh:NodeShape ;
    sh:property [ sh:path ex:name ; sh:minCount 1 ; sh:pattern "^[a-z]+$" ; sh:maxLength 5 ] .
ex:SubjShape a sh:NodeShape ; sh:targetSubjectsOf ex:s ; sh:nodeKind sh:IRI ;
    sh:property [ sh:path ex:s ; sh:class ex:A ] .
ex:ObjShape a sh:NodeShape ; sh:targetObjectsOf ex:r ; sh:nodeKind sh:BlankNodeOrIRI ;
    sh:and ( [ sh:property [ sh:path ex:name ; sh:maxCount 1 ] ] ) .
ex:InShape a sh:NodeShape ; sh:targetNode ex:n0 ;
    sh:property [ sh:path ex:r ; sh:in ( ex:n1 ex:n2 ) ] .
ex:WarnShape a sh:NodeShape ; sh:targetClass ex:B ; sh:severity sh:Warning ;
    sh:property [ sh:path ex:name ; sh:minLength 2 ; sh:severity sh:Warning ] .
"""

# Components the certifier does not prove (sequence paths, sh:or, sh:not,
# property pairs, sh:closed), so pySHACL decides on the region.
UNCERTIFIABLE = PREFIXES + """
ex:SeqShape a sh:NodeShape ; sh:targetClass ex:A ;
    sh:property [ sh:path ( ex:p ex:q ) ; sh:datatype xsd:integer ] ;
    sh:or ( [ sh:path ex:name ; sh:minCount 1 ] [ sh:path ex:q ; sh:minCount 1 ] ) .
ex:NotShape a sh:NodeShape ; sh:targetClass ex:B ; sh:not [ sh:class ex:C ] ;
    sh:property [ sh:path ex:q ; sh:lessThan ex:t ] .
ex:ClosedShape a sh:NodeShape ; sh:targetClass ex:C ; sh:closed true ;
    sh:ignoredProperties ( rdf:type ) ; sh:property [ sh:path ex:p ] .
"""

NODES: list[Node] = [URIRef(f"{EX}n{i}") for i in range(6)] + [BNode("b0"), BNode("b1")]
CLASSES = [URIRef(f"{EX}{c}") for c in "ABCD"]
LINKS = [URIRef(f"{EX}{p}") for p in ("p", "r", "s")]
LITERALS: list[Node] = [
    Literal(-1), Literal(3), Literal(12), Literal("7", datatype=XSD.decimal), Literal("ab"),
    Literal("abcdef"), Literal("A1"), Literal("x", lang="en"), Literal(""),
    Literal("many", datatype=XSD.integer),
]

triples = st.one_of(
    st.tuples(st.sampled_from(NODES), st.just(RDF.type), st.sampled_from(CLASSES)),
    st.tuples(st.sampled_from(CLASSES), st.just(RDFS.subClassOf), st.sampled_from(CLASSES)),
    st.tuples(st.sampled_from(NODES), st.sampled_from(LINKS), st.sampled_from(NODES)),
    st.tuples(
        st.sampled_from(NODES),
        st.sampled_from([URIRef(EX + "q"), URIRef(EX + "name"), URIRef(EX + "t")]),
        st.sampled_from(LITERALS),
    ),
)


def _text(ts: list[tuple[Node, Node, Node]]) -> list[Triple]:
    return [from_rdflib(*t) for t in ts]


def _graph(ts: list[tuple[Node, Node, Node]]) -> Graph:
    # Through N-Triples text, so terms are normalised as snapshots' are.
    return graph_from_ntriples("".join(f"{t.s} {t.p} {t.o} .\n" for t in _text(ts)))


@st.composite
def graph_and_delta(draw: st.DrawFn) -> tuple[Graph, Delta]:
    parent = draw(st.lists(triples, max_size=25, unique=True))
    g = _graph(parent)
    present = sorted(_text(list(g)))
    removed = draw(st.lists(st.sampled_from(present), max_size=6, unique=True)) if present else []
    added = draw(st.lists(triples, max_size=6, unique=True))
    return g, Delta(remove=removed, add=_text(added))


def _shapes(tmp: Path, text: str) -> Shapes:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "s.ttl").write_text(text)
    return Shapes.load(tmp)


@pytest.fixture(scope="module")
def certifiable(tmp_path_factory: pytest.TempPathFactory) -> Shapes:
    return _shapes(tmp_path_factory.mktemp("cert"), CERTIFIABLE)


@pytest.fixture(scope="module")
def uncertifiable(tmp_path_factory: pytest.TempPathFactory) -> Shapes:
    return _shapes(tmp_path_factory.mktemp("uncert"), UNCERTIFIABLE)


@pytest.fixture(scope="module")
def shipped() -> Shapes:
    return Shapes.load(REPO / "conf" / "shapes")


EQUIVALENCE = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _assert_same(shapes: Shapes, parent: Graph, delta: Delta) -> str:
    checker = ShaclChecker()
    got = checker.check(shapes, DeltaView(parent, delta))
    forget_pyshacl_bnode_texts()  # see its docstring: stale texts across graphs
    want = shapes.validate(apply_delta(parent, delta))
    assert _comparable(got.result) == _comparable(want), (
        got.mode, canonical_ntriples(parent), got.result, want
    )
    return got.mode


def _comparable(result: Any) -> tuple[bool, list[tuple[str, ...]]]:
    """Verdict and every result field. pySHACL renders a blank node in a
    message by describing its triples in the graph it was handed, and the
    incremental path hands it a subgraph: for a result about a blank node only
    the message's rendering may differ, so that one text is left out."""
    rows = []
    for v in result.violations:
        blank = v.focus_node.startswith("_:") or v.value.startswith("_:")
        rows.append((v.focus_node, v.path, v.constraint, v.severity, v.value,
                     "" if blank else v.message))
    return result.conforms, sorted(rows)


@EQUIVALENCE
@given(case=graph_and_delta())
def test_equivalent_to_the_plain_call_certifiable_shapes(
    certifiable: Shapes, case: tuple[Graph, Delta]
) -> None:
    _assert_same(certifiable, *case)


@EQUIVALENCE
@given(case=graph_and_delta())
def test_equivalent_to_the_plain_call_uncertifiable_shapes(
    uncertifiable: Shapes, case: tuple[Graph, Delta]
) -> None:
    _assert_same(uncertifiable, *case)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ts=st.lists(triples, max_size=30, unique=True))
def test_the_certifier_never_hides_a_result(certifiable: Shapes,
                                            ts: list[tuple[Node, Node, Node]]) -> None:
    g = _graph(ts)
    view = DeltaView(g, Delta())
    proof = certifier(certifiable._graph)
    # Results by the top-level focus node they belong to (nested results of
    # sh:node and the like name their value node as focus).
    reported = {e.owner for e in validate_owned(certifiable, g).entries}
    for n in {*g.subjects(), *g.objects(), *NODES}:
        if certify(proof, view, n):
            assert focus_text(n) not in reported, n


def _policy(i: int, max_events: str = "5") -> list[Triple]:
    k = "urn:knhk:ontology#"
    s = f"<urn:knhk:policy:{i}>"
    return [
        Triple(s, f"<{RDF.type}>", f"<{k}RateLimitPolicy>"),
        Triple(s, f"<{k}eventType>", '"login"'),
        Triple(s, f"<{k}sector>", f"<{k}finance>"),
        Triple(s, f"<{k}maxEvents>", f'"{max_events}"^^<{XSD.integer}>'),
        Triple(s, f"<{k}windowSeconds>", f'"60.0"^^<{XSD.decimal}>'),
    ]


@pytest.fixture(scope="module")
def policies() -> Graph:
    from knhkd.knowledge.rdf import load_ontology

    onto = load_ontology(REPO / "conf" / "ontology")
    return apply_delta(onto, Delta(add=[t for i in range(30) for t in _policy(i)]))


def test_a_valid_delta_is_certified_without_pyshacl(shipped: Shapes, policies: Graph) -> None:
    delta = Delta(add=[t for i in range(100, 104) for t in _policy(i)])
    assert _assert_same(shipped, policies, delta) == "certified"
    got = ShaclChecker().check(shipped, DeltaView(policies, delta))
    assert got.revalidated == 4  # the four new policies, nothing else


def test_a_violating_delta_is_judged_by_pyshacl_on_the_region(
    shipped: Shapes, policies: Graph
) -> None:
    delta = Delta(add=_policy(100, "0"))
    assert _assert_same(shipped, policies, delta) == "incremental"
    got = ShaclChecker().check(shipped, DeltaView(policies, delta))
    assert not got.result.conforms and got.subgraph_triples < 20


def test_removing_a_required_value_is_caught(shipped: Shapes, policies: Graph) -> None:
    k = "urn:knhk:ontology#"
    delta = Delta(remove=[Triple("<urn:knhk:policy:3>", f"<{k}maxEvents>",
                                 f'"5"^^<{XSD.integer}>')])
    assert _assert_same(shipped, policies, delta) == "incremental"


def test_a_violating_parent_stays_violating(shipped: Shapes, policies: Graph) -> None:
    # Violations elsewhere in the parent are carried over from its baseline.
    broken = apply_delta(policies, Delta(add=_policy(200, "0")))
    _assert_same(shipped, broken, Delta(add=_policy(201)))
    fixed = Delta(
        remove=[Triple("<urn:knhk:policy:200>", "<urn:knhk:ontology#maxEvents>",
                       f'"0"^^<{XSD.integer}>')],
        add=[Triple("<urn:knhk:policy:200>", "<urn:knhk:ontology#maxEvents>",
                    f'"9"^^<{XSD.integer}>')],
    )
    _assert_same(shipped, broken, fixed)


def test_subclass_changes_reach_the_instances(certifiable: Shapes) -> None:
    a, b, d = (f"<{EX}{c}>" for c in "ABD")
    g = _graph([(URIRef(EX + "n1"), RDF.type, URIRef(EX + "D"))])
    # n1 becomes an A (through D ⊑ A) and so lacks the required ex:p.
    delta = Delta(add=[Triple(d, f"<{RDFS.subClassOf}>", a)])
    assert _assert_same(certifiable, g, delta) == "incremental"
    assert b  # keep the names readable


def test_unsupported_shapes_fall_back_to_the_plain_call(tmp_path: Path) -> None:
    sparql = PREFIXES + """
ex:S a sh:NodeShape ; sh:targetClass ex:A ;
    sh:sparql [ sh:select "SELECT $this WHERE { FILTER(false) }" ] .
"""
    shapes = _shapes(tmp_path, sparql)
    assert dependencies(shapes._graph).unsupported is not None
    g = _graph([(URIRef(EX + "n1"), RDF.type, URIRef(EX + "A"))])
    assert _assert_same(shapes, g, Delta(add=_text([(URIRef(EX + "n2"), RDF.type,
                                                     URIRef(EX + "A"))]))) == "full"


def test_warning_shapes_nesting_violations_fall_back(tmp_path: Path) -> None:
    # pySHACL: a sh:Warning top-level shape never breaks conformance, even
    # when its nested property shape reports sh:Violation results.
    soft = PREFIXES + """
ex:Soft a sh:NodeShape ; sh:targetClass ex:A ; sh:severity sh:Warning ;
    sh:property [ sh:path ex:name ; sh:minCount 1 ] .
"""
    shapes = _shapes(tmp_path, soft)
    g = _graph([])
    delta = Delta(add=_text([(URIRef(EX + "n1"), RDF.type, URIRef(EX + "A"))]))
    assert _assert_same(shapes, g, delta) == "full"
    assert ShaclChecker().check(shapes, DeltaView(g, delta)).result.conforms


def test_baselines_are_memoised_per_parent_graph(shipped: Shapes, policies: Graph) -> None:
    checker = ShaclChecker()
    first = checker.baseline(shipped, policies)
    assert checker.baseline(shipped, policies) is first
    other = apply_delta(policies, Delta(add=_policy(300)))
    assert checker.baseline(shipped, other) is not first
