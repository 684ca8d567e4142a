"""knhkd.knowledge.shacl.constraints: the compiled validator and the incremental
certifier judge every constraint kind the certifier evaluates the same way,
and both as plain pySHACL does.

For one constraint at a time, on generated value nodes: the certifier proves
"no result" exactly when the compiled validator finds none, and exactly when
the plain call (``Shapes.validate``) reports none. The shapes are simple
enough that the certifier must not answer "cannot tell" (checked too), so a
check that drifts in either user of ``constraints`` fails here.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rdflib import Graph, URIRef

from knhkd.knowledge.rdf import DeltaView, graph_from_ntriples
from knhkd.knowledge.shacl import CompiledShapes, DataGraph, Shapes
from knhkd.knowledge.shacl.incremental import certifier, certify
from knhkd.model import Delta

EX = "urn:ex#"
XSD = "http://www.w3.org/2001/XMLSchema#"
PREFIXES = """\
@prefix sh: <http://www.w3.org/ns/shacl#> .
@prefix xsd: <http://www.w3.org/2001/XMLSchema#> .
@prefix rdf: <http://www.w3.org/1999/02/22-rdf-syntax-ns#> .
@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .
@prefix ex: <urn:ex#> .
"""

# One constraint per entry, on the values of ex:p of the focus node ex:f.
CONSTRAINTS: dict[str, list[str]] = {
    "datatype": [
        "sh:datatype xsd:integer", "sh:datatype xsd:string", "sh:datatype rdf:langString",
        "sh:datatype xsd:decimal", "sh:datatype rdfs:Literal", "sh:datatype xsd:date",
    ],
    "nodeKind": [
        f"sh:nodeKind sh:{k}"
        for k in ("IRI", "BlankNode", "Literal", "BlankNodeOrIRI", "IRIOrLiteral",
                  "BlankNodeOrLiteral")
    ],
    "range": [
        "sh:minInclusive 0", "sh:maxExclusive 2", "sh:minExclusive \"abc\"",
        "sh:maxInclusive \"2024-06-01\"^^xsd:date", "sh:maxInclusive 2.5",
    ],
    "length": ["sh:minLength 0", "sh:minLength 3", "sh:maxLength 3"],
    "pattern": ["sh:pattern \"^a\"", "sh:pattern \"^A\" ; sh:flags \"i\"", "sh:pattern \"b.c\""],
    "in": ["sh:in ( ex:a 1 \"abc\" )"],
    "hasValue": ["sh:hasValue ex:a", "sh:hasValue 1"],
    "class": ["sh:class ex:C", "sh:class ex:D"],
    "count": ["sh:minCount 2", "sh:maxCount 1", "sh:minCount 1 ; sh:maxCount 2"],
    "node": ["sh:node ex:Integer"],
    "property": ["sh:property [ sh:path ex:q ; sh:minCount 1 ]"],
    "and": ["sh:and ( ex:Integer [ sh:minInclusive 0 ] )"],
}
SNIPPETS = [s for group in CONSTRAINTS.values() for s in group]

VALUES = [
    f'"1"^^<{XSD}integer>', f'"-3"^^<{XSD}integer>', f'"2.5"^^<{XSD}decimal>',
    '"abc"', '"abcdef"', '"Abc"@en', '"x"@en-gb', f'"1x"^^<{XSD}integer>',
    f'"2024-01-01"^^<{XSD}date>', f'"true"^^<{XSD}boolean>',
    f"<{EX}a>", f"<{EX}b>", f"<{EX}c>", "_:b1",
]
BACKGROUND = f"""\
<{EX}a> <http://www.w3.org/1999/02/22-rdf-syntax-ns#type> <{EX}D> .
<{EX}D> <http://www.w3.org/2000/01/rdf-schema#subClassOf> <{EX}C> .
<{EX}b> <http://www.w3.org/1999/02/22-rdf-syntax-ns#type> <{EX}C> .
<{EX}a> <{EX}q> "1"^^<{XSD}integer> .
_:b1 <{EX}q> <{EX}a> .
"""
FOCUS = URIRef(EX + "f")
SHAPE = URIRef(EX + "S")

_shapes: dict[str, Shapes] = {}


def shapes_for(snippet: str) -> Shapes:
    found = _shapes.get(snippet)
    if found is None:
        g = Graph()
        g.parse(
            data=PREFIXES
            + f"ex:S a sh:NodeShape ; sh:targetNode ex:f ; "
            f"sh:property [ sh:path ex:p ; {snippet} ] .\n"
            + "ex:Integer a sh:NodeShape ; sh:datatype xsd:integer .\n",
            format="turtle",
        )
        found = _shapes[snippet] = Shapes(g)
    return found


@pytest.mark.parametrize("snippet", SNIPPETS)
def test_the_certifier_evaluates_every_shape_here(snippet: str) -> None:
    # Otherwise "cannot tell" would make the agreement below vacuous.
    proof = certifier(shapes_for(snippet)._graph)
    assert all(s.certifiable for s in proof.shapes.values()), snippet


@settings(max_examples=400, deadline=None)
@given(
    snippet=st.sampled_from(SNIPPETS),
    values=st.lists(st.sampled_from(VALUES), max_size=3, unique=True),
)
def test_certifier_compiler_and_pyshacl_agree(snippet: str, values: list[str]) -> None:
    shapes = shapes_for(snippet)
    data = graph_from_ntriples(
        BACKGROUND + "".join(f"<{EX}f> <{EX}p> {v} .\n" for v in values)
    )
    plain = shapes.validate(data)
    plain_ok = plain.conforms and not plain.violations
    compiled = CompiledShapes.compile(shapes._graph).validate(DataGraph.from_graph(data))
    assert compiled.fallback_shapes == ()  # judged by the compiled checks, not pySHACL
    compiled_ok = compiled.conforms and not compiled.results
    certified = certify(certifier(shapes._graph), DeltaView(data, Delta()), FOCUS)
    assert (certified, compiled_ok) == (plain_ok, plain_ok), (snippet, values, plain.violations)
