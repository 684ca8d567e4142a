"""knhkd.knowledge.shacl (compiler): the fallback rule, refusals, and the data index.

Equivalence with pySHACL on supported features is proved in
test_shacl_core_equivalence.py (generated inputs) and test_shacl_core_w3c.py
(the W3C suite); here: what is *not* compiled goes to pySHACL and is never
skipped, malformed shapes are refused at compile time, nothing is mutated.
"""

from __future__ import annotations

import pytest
from rdflib import BNode, Graph, Literal, URIRef
from rdflib.compare import isomorphic
from rdflib.namespace import RDF, RDFS, SH

from knhkd.knowledge.shacl import CompiledShapes, DataGraph, ShaclRuntimeError, ShapesError
from knhkd.knowledge.shacl.paths import path_text
from tests.unit.shacl_gen import describe, message_shapes, run_compiled, run_pyshacl, same

PREFIXES = """
@prefix sh: <http://www.w3.org/ns/shacl#> .
@prefix xsd: <http://www.w3.org/2001/XMLSchema#> .
@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .
@prefix ex: <http://example.org/> .
"""

DATA = (
    PREFIXES
    + """
ex:alice a ex:Person ; ex:name "Alice"@en, "Alicia"@en ; ex:age 30 ; ex:knows ex:bob .
ex:bob a ex:Person ; ex:age -1 ; ex:knows ex:alice .
ex:carol a ex:Person .
"""
)


def _g(text: str) -> Graph:
    g = Graph()
    g.parse(data=PREFIXES + text, format="turtle")
    return g


def _agree(shapes: Graph, data: Graph) -> None:
    mine, reference = run_compiled(data, shapes), run_pyshacl(data, shapes)
    msg = message_shapes(shapes)
    assert same(mine, reference, msg), describe(mine, reference, msg)


@pytest.fixture(scope="module")
def data() -> Graph:
    return _g(DATA)


# --------------------------------------------------------------------------- #
# The fallback rule
# --------------------------------------------------------------------------- #

SPARQL_SHAPE = """
ex:AgeShape a sh:NodeShape ; sh:targetClass ex:Person ;
    sh:property [ sh:path ex:age ; sh:datatype xsd:integer ; sh:minInclusive 0 ] .
ex:SparqlShape a sh:NodeShape ; sh:targetClass ex:Person ;
    sh:sparql [ sh:select "SELECT $this WHERE { $this <http://example.org/knows> ?x . }" ;
                sh:message "knows someone" ] .
"""


def test_an_unsupported_shape_is_run_by_pyshacl_and_the_rest_is_compiled(data: Graph) -> None:
    shapes = _g(SPARQL_SHAPE)
    compiled = CompiledShapes.compile(shapes)
    assert set(compiled.fallback) == {URIRef("http://example.org/SparqlShape")}
    assert "sparql" in compiled.fallback[URIRef("http://example.org/SparqlShape")]
    v = compiled.validate(DataGraph.from_graph(data), lambda: data)
    assert v.fallback_shapes == (URIRef("http://example.org/SparqlShape"),)
    components = {(str(r.focus), r.component) for r in v.results}
    # The SPARQL constraint's violations are there: nothing was skipped.
    assert ("http://example.org/alice", SH.SPARQLConstraintComponent) in components
    assert ("http://example.org/bob", SH.MinInclusiveConstraintComponent) in components
    _agree(shapes, data)


def test_the_fallback_never_reports_a_compiled_shape_twice(data: Graph) -> None:
    shapes = _g(SPARQL_SHAPE)
    v = CompiledShapes.compile(shapes).validate(DataGraph.from_graph(data), lambda: data)
    ages = [r for r in v.results if r.component == SH.MinInclusiveConstraintComponent]
    assert len(ages) == 1


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            # pySHACL marks the shape non-conforming with no result at all.
            "ex:S sh:targetClass ex:Person ;"
            " sh:property [ sh:path ex:name ; sh:uniqueLang false ] .",
            "uniqueLang",
        ),
        (
            "ex:S sh:targetClass ex:Person ; sh:property [ sh:path ex:knows ; sh:node ex:S ] .",
            "recursive",
        ),
        (
            "ex:S sh:targetClass ex:Person ; sh:severity sh:Warning, sh:Info ;"
            " sh:nodeKind sh:IRI .",
            "severity",
        ),
        (
            "ex:S sh:target [ a sh:SPARQLTarget ; sh:select 'SELECT ?this WHERE { ?this a ?c }' ] ;"
            " sh:targetClass ex:Person ; sh:closed true .",
            "shacl#target",
        ),
    ],
)
def test_unsupported_features_fall_back(data: Graph, text: str, reason: str) -> None:
    shapes = _g(text)
    compiled = CompiledShapes.compile(shapes)
    assert compiled.fallback, "expected a fallback"
    assert any(reason in why for why in compiled.fallback.values()), compiled.fallback
    _agree(shapes, data)


def test_a_custom_constraint_component_sends_every_shape_to_pyshacl(data: Graph) -> None:
    shapes = _g(
        """
        ex:HasFriend a sh:ConstraintComponent ;
            sh:parameter [ sh:path ex:friendOf ] ;
            sh:validator [ a sh:SPARQLAskValidator ; sh:ask "ASK { FILTER (false) }" ] .
        ex:S sh:targetClass ex:Person ; ex:friendOf ex:bob ; sh:nodeKind sh:IRI .
        """
    )
    compiled = CompiledShapes.compile(shapes)
    assert URIRef("http://example.org/S") in compiled.fallback
    _agree(shapes, data)


def test_deep_nesting_fails_like_pyshacl() -> None:
    # 16 shapes chained by sh:node: pySHACL raises "Validation path too deep".
    chain = "\n".join(f"ex:S{i} sh:node ex:S{i + 1} ." for i in range(16))
    shapes = _g(f"ex:S0 sh:targetNode ex:a .\n{chain}\nex:S16 sh:nodeKind sh:IRI .")
    compiled = CompiledShapes.compile(shapes)
    assert compiled.fully_compiled
    with pytest.raises(ShaclRuntimeError, match="too deep"):
        compiled.validate(DataGraph.from_graph(Graph()))
    assert isinstance(run_pyshacl(Graph(), shapes), str)


# --------------------------------------------------------------------------- #
# Refusals
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "text",
    [
        "ex:S sh:targetNode ex:a ; sh:datatype xsd:string, xsd:integer .",
        "ex:S sh:targetNode ex:a ; sh:minCount 1 .",
        "ex:S sh:targetNode ex:a ; sh:property [ sh:path ex:p ; sh:minCount 1.5 ] .",
        "ex:S sh:targetNode ex:a ; sh:property [ sh:path 'p' ] .",
        "ex:S sh:targetNode ex:a ; sh:property [ sh:path ( ex:p ) ] .",
        "ex:S sh:targetNode ex:a ; sh:pattern '(' .",
        "ex:S sh:targetNode ex:a ; sh:property [ sh:path [ sh:alternativePath ( ex:p ) ] ] .",
        "ex:S a sh:NodeShape ; sh:path ex:p .",
        "ex:S sh:targetNode ex:a ; sh:node [ sh:path ex:p ] .",
        "ex:S sh:targetNode ex:a ; sh:minLength -1 .",
        "ex:S sh:targetNode ex:a ; sh:languageIn ( ex:en ) .",
        "ex:S sh:targetNode ex:a ; sh:ignoredProperties ( ex:p ) .",
        "ex:S sh:targetNode ex:a ; sh:deactivated true, false .",
    ],
)
def test_malformed_shapes_are_refused_at_compile_time(text: str) -> None:
    with pytest.raises(ShapesError):
        CompiledShapes.compile(_g(text))


# --------------------------------------------------------------------------- #
# No mutation, paths, the index
# --------------------------------------------------------------------------- #


def test_compile_and_validate_mutate_nothing(data: Graph) -> None:
    shapes = _g(SPARQL_SHAPE)
    shapes_before, data_before = Graph(), Graph()
    shapes_before += shapes
    data_before += data
    compiled = CompiledShapes.compile(shapes)
    compiled.validate(DataGraph.from_graph(data), lambda: data)
    compiled.validate(DataGraph.from_graph(data), lambda: data)
    assert isomorphic(shapes, shapes_before) and len(shapes) == len(shapes_before)
    assert isomorphic(data, data_before)


def test_deactivated_and_severity(data: Graph) -> None:
    shapes = _g(
        """
        ex:Off sh:targetClass ex:Person ; sh:deactivated true ; sh:class ex:Robot .
        ex:Soft sh:targetClass ex:Person ; sh:severity sh:Warning ;
            sh:property [ sh:path ex:age ; sh:maxInclusive 10 ; sh:message "young"@en ] .
        """
    )
    v = CompiledShapes.compile(shapes).validate(DataGraph.from_graph(data))
    # The shape's own severity is the result's: the property shape has none.
    assert {(str(r.focus), str(r.severity).rpartition("#")[2]) for r in v.results} == {
        ("http://example.org/alice", "Violation")
    }
    assert v.results[0].messages == ("young",) and not v.results[0].generic
    assert not v.conforms
    _agree(shapes, data)


def test_path_text() -> None:
    g = _g(
        """
        ex:S sh:path ( ex:a [ sh:inversePath ex:b ]
                       [ sh:alternativePath ( ex:c [ sh:zeroOrMorePath ex:d ] ) ] ) .
        """
    )
    path = g.value(URIRef("http://example.org/S"), SH.path)
    assert path_text(g, path) == (
        "(<http://example.org/a>/^<http://example.org/b>/"
        "(<http://example.org/c>|(<http://example.org/d>)*))"
    )


def test_data_graph_index() -> None:
    a, b, c, p = (URIRef(f"urn:{x}") for x in "abcp")
    one, x = Literal(1), BNode("x")
    g = DataGraph.from_triples([(a, p, one), (a, p, one), (b, p, one), (a, RDF.type, c), (x, p, a)])
    assert list(g.objects(a, p)) == [one]
    assert sorted(g.subjects(p, one)) == [a, b]
    assert list(g.subjects(p, a)) == [x]
    assert len(g) == 4
    assert {s for s, _ in g.subject_objects(p)} == {a, b, x}
    h = DataGraph.from_triples([(a, RDFS.subClassOf, b), (b, RDFS.subClassOf, c)])
    assert h.transitive_objects(a, RDFS.subClassOf) == [a, b, c]
    assert h.transitive_subjects(RDFS.subClassOf, c) == [c, b, a]
    assert len(g.to_rdflib()) == 4
