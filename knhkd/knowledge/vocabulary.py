"""The RDF vocabulary proposals are judged by: what declares a class, a
property or a shape, which namespaces are RDF's own, and which removals
cannot be undone.

Guarantees: ``irreversible_removals`` compares terms as RDF terms (an escaped
spelling of ``rdf:type`` does not slip through) and skips a malformed term
rather than raising: judging terms is validation stage 1's job.

Must never: perform I/O or read a clock.
"""

from __future__ import annotations

from collections.abc import Iterable

from rdflib import URIRef
from rdflib.namespace import OWL, RDF, RDFS, SH, XSD
from rdflib.term import Node

from knhkd.knowledge.rdf import DeltaView, NodeTriple, TermError, parse_term
from knhkd.model import Delta, Triple

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


def _term(text: str) -> Node | None:
    try:
        return parse_term(text)
    except TermError:
        return None


def irreversible_removals(delta: Delta) -> list[Triple]:
    """The removed triples that are class or property declarations, in delta order."""
    out = []
    for t in delta.remove:
        if _term(t.p) == RDF.type and _term(t.o) in DECLARATION_TYPES:
            out.append(t)
    return out


def can_rollback(delta: Delta) -> bool:
    return not irreversible_removals(delta)
