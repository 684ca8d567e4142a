"""RDF terms as the SHACL package writes and compares them.

Guarantees: ``term_text`` is the one spelling of a term in a result
(N-Triples-like, blank nodes keep their labels); ``intern_iri`` hands out one
shared object per IRI, so that dictionary and set look-ups on interned terms
skip rdflib's Python-level ``__eq__``.

Must never: import anything of the package, or mutate a graph it reads.
"""

from __future__ import annotations

from rdflib import BNode, Graph, Literal, URIRef
from rdflib.term import Node


def term_text(t: Node | None) -> str:
    """N-Triples-like text of a term ("" for none; blank nodes keep labels)."""
    if t is None:
        return ""
    if isinstance(t, URIRef):
        return f"<{t}>"
    if isinstance(t, Literal):
        return t.n3()
    if isinstance(t, BNode):
        # pySHACL reports data-graph blank nodes; their labels are the data
        # graph's, which is stable when the graph came from canonical text.
        return f"_:{t}"
    return str(t)


def values_of(sg: Graph, node: Node, pred: URIRef) -> set[Node]:
    """The distinct values of ``pred`` on ``node`` (pySHACL reads parameters
    as sets)."""
    return set(sg.objects(node, pred))


# whose key is the very object stored skips rdflib's Python-level __eq__
# (~1 µs), so the observation view builds its terms from this table too.
_INTERNED: dict[str, URIRef] = {}


def intern_iri(iri: URIRef) -> URIRef:
    """The one shared object for ``iri`` (registered if new)."""
    return _INTERNED.setdefault(str(iri), iri)


def interned(text: str) -> URIRef | None:
    """The shared object for ``text`` if one is registered (never registers)."""
    return _INTERNED.get(text)

