"""The RDF vocabulary the stages reason about: what declares a class, a
property or a shape, and which namespaces are RDF's own.

Must never: perform I/O or read a clock.
"""

from __future__ import annotations

from collections.abc import Iterable

from rdflib import URIRef
from rdflib.namespace import OWL, RDF, RDFS, SH, XSD
from rdflib.term import Node

from knhkd.knowledge.rdf import DeltaView, NodeTriple

CLASS_TYPES: frozenset[URIRef] = frozenset({RDFS.Class, OWL.Class})
PROPERTY_TYPES: frozenset[URIRef] = frozenset(
    {RDF.Property, OWL.ObjectProperty, OWL.DatatypeProperty, OWL.AnnotationProperty}
)
DECLARATION_TYPES = CLASS_TYPES | PROPERTY_TYPES
SHAPE_TYPES: frozenset[URIRef] = frozenset({SH.NodeShape, SH.PropertyShape})
# Classes every graph may name without declaring them.
WELL_KNOWN_CLASSES: frozenset[URIRef] = frozenset({RDFS.Resource, OWL.Thing, RDFS.Class})
# Ranges that are datatypes rather than classes, beyond the XSD namespace.
WELL_KNOWN_DATATYPES: frozenset[URIRef] = frozenset(
    {RDFS.Literal, RDF.langString, RDF.HTML, RDF.XMLLiteral, RDF.JSON}
)
# The vocabularies of RDF itself, SHACL and XSD: their terms need no declaration.
BUILTIN_NAMESPACES: tuple[str, ...] = (str(RDF), str(RDFS), str(OWL), str(XSD), str(SH))


def is_builtin(term: Node) -> bool:
    return isinstance(term, URIRef) and str(term).startswith(BUILTIN_NAMESPACES)


def declared(view: DeltaView, term: Node, types: frozenset[URIRef], *, parent: bool = False
             ) -> bool:
    """``term`` is typed with one of ``types`` in the result (or the parent)."""
    if parent:
        return any((term, RDF.type, t) in view.parent for t in types)
    return any((term, RDF.type, t) in view for t in types)


def newly_declared(view: DeltaView, types: frozenset[URIRef]) -> set[Node]:
    """Terms the delta declares (typed with ``types``) that the parent did not declare."""
    return {
        s for s, p, o in view.new
        if p == RDF.type and o in types and not declared(view, s, types, parent=True)
    }


def undeclared(view: DeltaView, types: frozenset[URIRef]) -> set[Node]:
    """Terms declared in the parent that the delta leaves undeclared."""
    return {
        s for s, p, o in view.gone
        if p == RDF.type and o in types and not declared(view, s, types)
    }


def subjects_typed(triples: Iterable[NodeTriple], types: frozenset[URIRef]) -> set[Node]:
    return {s for s, p, o in triples if p == RDF.type and o in types}
