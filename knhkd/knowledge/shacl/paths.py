"""SHACL property paths: read from the shapes graph, evaluated on a data
graph, and written as text.

Guarantees:
- ``compile_path`` mirrors pySHACL 0.40's ``value_nodes_from_path``
  (helper/expression_helper.py): the same precedence when a path node carries
  several path kinds (sequence, inverse, alternative, zero-or-more,
  one-or-more, zero-or-one), the same refusals (``ShapesError``), and
  ``Unsupported`` where pySHACL would pick one of several values at random.
- ``path_text`` is the one printer of a path as a SPARQL property-path
  expression, for compiled results and for results read from a pySHACL
  report alike.

Must never: import the checks, the compiler or pySHACL; mutate a graph.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from rdflib import BNode, Graph, Literal, URIRef
from rdflib.collection import Collection as RdfList
from rdflib.namespace import RDF, SH
from rdflib.term import Node

from knhkd.knowledge.shacl.datagraph import DataGraph
from knhkd.knowledge.shacl.errors import ShapesError, Unsupported
from knhkd.knowledge.shacl.terms import intern_iri, term_text, values_of


def path_steps(graph: Graph, path: Node | None) -> tuple[Node, ...]:
    """The predicates of a predicate path or of a sequence of predicates."""
    if isinstance(path, URIRef):
        return (path,)
    if isinstance(path, BNode) and (path, RDF.first, None) in graph:
        steps = tuple(RdfList(graph, path))
        if all(isinstance(p, URIRef) for p in steps):
            return steps
    return ()


def path_text(graph: Graph, path: Node | None, depth: int = 0) -> str:
    """A SHACL property path as a SPARQL property-path expression ("" for
    none), from the shapes graph or from a report that copied the path.

    A malformed path node carrying several path kinds is written as the kind
    pySHACL follows: its evaluation (``value_nodes_from_path``) and its own
    SPARQL printer (``shacl_path_to_sparql_path``) both take a sequence, then
    sh:inversePath, then sh:alternativePath, before any repetition path."""
    if path is None:
        return ""
    if isinstance(path, URIRef):
        return f"<{path}>"
    if not isinstance(path, BNode) or depth > 16:
        return term_text(path)
    if (path, RDF.first, None) in graph:
        steps = (path_text(graph, p, depth + 1) for p in RdfList(graph, path))
        return "(" + "/".join(steps) + ")"
    unary = (
        (SH.inversePath, "^{}"),
        (SH.alternativePath, None),
        (SH.zeroOrMorePath, "({})*"),
        (SH.oneOrMorePath, "({})+"),
        (SH.zeroOrOnePath, "({})?"),
    )
    for pred, fmt in unary:
        inner = graph.value(path, pred)
        if inner is None:
            continue
        if fmt is None:
            options = (path_text(graph, p, depth + 1) for p in RdfList(graph, inner))
            return "(" + "|".join(options) + ")"
        return fmt.format(path_text(graph, inner, depth + 1))
    return "?"


# A compiled path: the value nodes of a focus node in a data graph.
PathFn = Callable[[DataGraph, Node], Collection[Node]]


def _pick(values: set[Node], what: str) -> Node:
    # pySHACL takes next(iter(set)): with several values its choice is arbitrary.
    if len(values) > 1:
        raise Unsupported(f"several values of {what}")
    return next(iter(values))


def compile_path(sg: Graph, node: Node, inverse: bool = False, recursion: int = 0) -> PathFn:
    """Mirror of pySHACL's ``value_nodes_from_path`` (helper/expression_helper.py)."""
    if isinstance(node, URIRef):
        pred = intern_iri(node)
        if inverse:
            return lambda g, f: g.subjects(pred, f)
        return lambda g, f: g.objects(f, pred)
    if isinstance(node, Literal):
        raise ShapesError("a property path cannot be a literal")
    if recursion >= 10:
        raise ShapesError("property path nested too deeply")
    firsts = values_of(sg, node, RDF.first)
    if firsts:
        first = compile_path(sg, _pick(firsts, "rdf:first"), inverse, recursion + 1)
        rests = values_of(sg, node, RDF.rest)
        if not rests:
            raise ShapesError("a sequence path list has no rdf:rest")
        rest_node = _pick(rests, "rdf:rest")
        if rest_node == RDF.nil:
            if recursion == 0:
                raise ShapesError("a sequence path needs at least two steps")
            return first
        rest = compile_path(sg, rest_node, inverse, recursion + 1)

        def sequence(g: DataGraph, f: Node) -> Collection[Node]:
            out: dict[Node, None] = {}
            for mid in first(g, f):
                for v in rest(g, mid):
                    out[v] = None
            return out.keys()

        return sequence
    inverse_of = values_of(sg, node, SH.inversePath)
    if inverse_of:
        return compile_path(sg, _pick(inverse_of, "sh:inversePath"), not inverse, recursion + 1)
    alternatives = values_of(sg, node, SH.alternativePath)
    if alternatives:
        items = list(sg.items(_pick(alternatives, "sh:alternativePath")))
        options = [compile_path(sg, a, inverse, recursion + 1) for a in items]
        if len(options) < 2:
            raise ShapesError("an alternative path needs at least two paths")

        def alternative(g: DataGraph, f: Node) -> Collection[Node]:
            out: dict[Node, None] = {}
            for option in options:
                for v in option(g, f):
                    out[v] = None
            return out.keys()

        return alternative
    for pred, include_focus, repeat in (
        (SH.zeroOrMorePath, True, True),
        (SH.oneOrMorePath, False, True),
        (SH.zeroOrOnePath, True, False),
    ):
        found = values_of(sg, node, pred)
        if not found:
            continue
        step = compile_path(sg, _pick(found, str(pred)), inverse, recursion + 1)
        return _closure(step, include_focus=include_focus, repeat=repeat)
    if any(True for _ in sg.predicate_objects(node)):
        raise ShapesError(f"not a property path: {term_text(node)}")
    raise ShapesError(f"empty property path: {term_text(node)}")


def _closure(step: PathFn, *, include_focus: bool, repeat: bool) -> PathFn:
    def closure(g: DataGraph, f: Node) -> Collection[Node]:
        seen: dict[Node, None] = {f: None} if include_focus else {}
        frontier = list(step(g, f))
        if not repeat:
            for v in frontier:
                seen[v] = None
            return seen.keys()
        while frontier:
            current = frontier.pop()
            if current in seen:
                continue
            seen[current] = None
            frontier.extend(step(g, current))
        return seen.keys()

    return closure


# pySHACL gives up on paths nested 10 deep; a walk this deep is a cyclic or
# pathological path, which the certifier leaves to the plain call.
_MAX_WALK_DEPTH = 64
_REPEAT_PATHS = (SH.zeroOrMorePath, SH.oneOrMorePath, SH.zeroOrOnePath)


def path_predicates(
    g: Graph, node: Node, inverse: bool, fwd: set[URIRef], inv: set[URIRef], depth: int = 0
) -> None:
    """Add to ``fwd`` the predicates the path follows forwards and to ``inv``
    those it follows backwards, through every branch of every path kind the
    node carries (an over-approximation of what pySHACL evaluates). Raises
    ``Unsupported`` for a path that is no SHACL path or nests too deeply."""
    if depth > _MAX_WALK_DEPTH:
        raise Unsupported("a property path nested too deeply")
    if isinstance(node, URIRef):
        (inv if inverse else fwd).add(node)
        return
    if not isinstance(node, BNode):
        raise Unsupported(f"a property path that is a literal: {node!r}")
    matched = False
    if (node, RDF.first, None) in g:  # sequence path
        matched = True
        for step in RdfList(g, node):
            path_predicates(g, step, inverse, fwd, inv, depth + 1)
    for pred in _REPEAT_PATHS:
        for inner in g.objects(node, pred):
            matched = True
            path_predicates(g, inner, inverse, fwd, inv, depth + 1)
    for inner in g.objects(node, SH.inversePath):
        matched = True
        path_predicates(g, inner, not inverse, fwd, inv, depth + 1)
    for alternatives in g.objects(node, SH.alternativePath):
        matched = True
        for step in RdfList(g, alternatives):
            path_predicates(g, step, inverse, fwd, inv, depth + 1)
    if not matched:
        raise Unsupported("a blank-node property path of no SHACL path kind")
