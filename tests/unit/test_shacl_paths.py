"""knhkd.knowledge.shacl.paths: the one path printer writes a malformed path
node (several path kinds on one node) as the kind pySHACL follows, for
compiled results and for results read from a pySHACL report alike."""

from __future__ import annotations

from pyshacl.helper.path_helper import shacl_path_to_sparql_path
from pyshacl.shapes_graph import ShapesGraph
from rdflib import Graph, URIRef
from rdflib.namespace import SH

from knhkd.knowledge.shacl.paths import path_text

MALFORMED = """
@prefix sh: <http://www.w3.org/ns/shacl#> .
@prefix ex: <urn:ex#> .
ex:S sh:path [ sh:zeroOrMorePath ex:d ; sh:alternativePath ( ex:c ex:e ) ] .
ex:T sh:path [ sh:oneOrMorePath ex:d ; sh:inversePath ex:c ] .
"""


def test_a_malformed_path_is_written_as_pyshacl_reads_it() -> None:
    g = Graph()
    g.parse(data=MALFORMED, format="turtle")
    sg = ShapesGraph(g)
    expected = {"S": "(<urn:ex#c>|<urn:ex#e>)", "T": "^<urn:ex#c>"}
    for name, text in expected.items():
        path = g.value(URIRef("urn:ex#" + name), SH.path)
        assert path_text(g, path) == text
        # pySHACL's own SPARQL printer picks the same kind (it omits the
        # outer parentheses and spaces its operators).
        theirs = shacl_path_to_sparql_path(sg, path).replace(" ", "")
        assert text in (theirs, f"({theirs})")
