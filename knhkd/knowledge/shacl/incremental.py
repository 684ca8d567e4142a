"""SHACL validation of a ΔΣ's result that re-validates only what the ΔΣ can change.

pySHACL on the whole resulting graph costs ~0.1 ms per triple, and its
``focus_nodes`` option silently skips constraints reached through nested
``sh:node`` shapes, so neither is usable per proposal. Instead:

1. The shapes graph is analysed once (``dependencies``): which predicates its
   property paths follow forwards and backwards (``fwd``/``inv``, through
   sequence, alternative, inverse and repetition paths, in every shape,
   nested or not), which predicates a focus node's outgoing or incoming edges
   it only looks at (``sh:targetSubjectsOf``, ``sh:equals``, ``sh:disjoint``,
   ``sh:lessThan(OrEquals)``; ``sh:targetObjectsOf``), and whether any shape
   is ``sh:closed`` (then every outgoing edge counts). A focus node's results
   depend only on its *region*: the nodes reachable from it along those
   paths, their ``rdf:type`` triples, those looked-at edges, the class
   hierarchy (every ``rdfs:subClassOf`` triple) and, for the text of
   messages, every triple of the blank nodes in it (pySHACL describes a blank
   node by all its triples, recursively).
2. A changed triple (removed, or added, by the ΔΣ) can only change the results
   of focus nodes whose region holds it: the *anchors* are its subject (path
   predicate followed forwards, ``rdf:type``, looked-at outgoing edge, any
   predicate under ``sh:closed``, any triple of a blank node together with the
   blank nodes above it) or object (followed backwards, looked-at incoming
   edge), and for a changed ``rdfs:subClassOf`` every node typed with the
   subclass or one of its subclasses. The *affected* nodes are the anchors and
   every node whose region reaches one (a reverse closure over parent ∪
   result).
3. Results are owned by the focus node of the top-level result they belong to
   (pySHACL also lists the nested results of sh:node, sh:and ... with the
   value node as focus; ``validate_owned`` follows ``sh:detail`` to their
   owner). The results owned by unaffected nodes are the parent's (the
   *baseline*: the plain call on the parent, once per parent graph and shapes,
   memoised). For the affected nodes:
4. a *certifier* first tries to prove that pySHACL would report no result
   owned by them (``certify``). It judges the common SHACL Core components
   with the checks of ``constraints`` (the compiled validator's own, so
   pySHACL 0.40's pass conditions), over-approximates targets, and answers
   "cannot tell" for everything else (complex paths, sh:closed,
   sh:or/sh:not/sh:xone, qualified shapes, property pairs, language
   constraints, deep nesting). It is sound, not complete. Most valid proposals
   are proved in well under a millisecond, without pySHACL;
5. otherwise their region is copied out of the result into a small graph,
   validated with the plain call, and the results they own are kept.

``conforms`` is then recomputed from the merged results: pySHACL decides it
per top-level shape, so it is "no top-level result of a severity other than
sh:Warning or sh:Info" only where no sh:Warning/sh:Info shape nests a shape of
another severity; ``dependencies`` sends any other shapes graph to the plain
call.

Guarantees:
- ``ShaclChecker.check(shapes, view)`` returns the same ``ShaclResult``
  (``conforms`` and the sorted violation list, text for text) as
  ``shapes.validate(view.graph())``, the plain call on the whole result
  (tests/unit/test_shacl_incremental.py checks this on generated graphs and
  deltas, with nested shapes, inverse and sequence paths, every target kind,
  sh:closed, the class hierarchy and blank nodes).
- Shapes that use anything beyond SHACL Core (SPARQL constraints or targets,
  rules, JavaScript, unknown ``sh:`` terms), severities that cannot be merged
  (above), or a parent graph whose namespace bindings differ from a fresh
  graph's (pySHACL writes messages with them), are validated with the plain
  call on the whole result: slower, never wrong.
- pySHACL 0.40 memoises blank-node descriptions under ``id(graph)`` for the
  life of the process, so a graph at a freed graph's address can get stale
  texts; every validation here empties that memo first
  (``forget_pyshacl_bnode_texts``, as ``Shapes.validate`` does).
- The baseline memo is keyed by the parent graph's identity and the shapes'
  digest; entries die with the graph.

Must never: pass ``focus_nodes`` to pySHACL, mutate the parent or the shapes,
or serve a baseline computed for another graph.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal as TypingLiteral
from typing import TypeVar

from pyshacl.errors import ReportableRuntimeError
from rdflib import BNode, Graph, Literal, URIRef
from rdflib.collection import Collection
from rdflib.namespace import RDF, RDFS, SH
from rdflib.term import Node

from knhkd.knowledge.rdf import DeltaView, NodeTriple
from knhkd.knowledge.shacl.constraints import (
    RANGES,
    ValueCheck,
    compile_patterns,
    datatype,
    has_value,
    in_range,
    instance_of,
    length,
    matches,
    max_count_ok,
    member_of,
    min_count_ok,
    node_kind,
)
from knhkd.knowledge.shacl.errors import ShapesError, Unsupported
from knhkd.knowledge.shacl.paths import path_predicates
from knhkd.knowledge.shacl.plain import Shapes, plain_validate, violation
from knhkd.knowledge.shacl.results import ShaclResult, Violation
from knhkd.knowledge.shacl.terms import term_text

# SHACL Core vocabulary a shapes graph may use as predicates and still be
# validated incrementally. Anything else under sh: (sh:sparql, sh:rule,
# sh:target, sh:js...) sends the whole result to the plain call.
_CORE_PREDICATES: frozenset[URIRef] = frozenset(
    SH[name]
    for name in (
        "targetClass",
        "targetNode",
        "targetSubjectsOf",
        "targetObjectsOf",
        "property",
        "path",
        "inversePath",
        "alternativePath",
        "zeroOrMorePath",
        "oneOrMorePath",
        "zeroOrOnePath",
        "class",
        "datatype",
        "nodeKind",
        "minCount",
        "maxCount",
        "minExclusive",
        "minInclusive",
        "maxExclusive",
        "maxInclusive",
        "minLength",
        "maxLength",
        "pattern",
        "flags",
        "languageIn",
        "uniqueLang",
        "equals",
        "disjoint",
        "lessThan",
        "lessThanOrEquals",
        "not",
        "and",
        "or",
        "xone",
        "node",
        "qualifiedValueShape",
        "qualifiedMinCount",
        "qualifiedMaxCount",
        "qualifiedValueShapesDisjoint",
        "closed",
        "ignoredProperties",
        "hasValue",
        "in",
        "message",
        "severity",
        "deactivated",
        "name",
        "description",
        "order",
        "group",
        "defaultValue",
    )
)
_PAIR_PREDICATES = (SH.equals, SH.disjoint, SH.lessThan, SH.lessThanOrEquals)


@dataclass(frozen=True, slots=True)
class Dependencies:
    """What a focus node's SHACL result can depend on, for one shapes graph."""

    fwd: frozenset[URIRef]
    inv: frozenset[URIRef]
    out_only: frozenset[URIRef]
    in_only: frozenset[URIRef]
    closed: bool
    # Why these shapes cannot be validated incrementally; None when they can.
    unsupported: str | None


def dependencies(shapes_graph: Graph) -> Dependencies:
    """Analyse a shapes graph (see the module docstring, step 1)."""
    fwd: set[URIRef] = set()
    inv: set[URIRef] = set()
    out_only: set[URIRef] = set()
    in_only: set[URIRef] = set()
    closed = False
    try:
        for _s, p, o in shapes_graph:
            if isinstance(p, URIRef) and p.startswith(str(SH)) and p not in _CORE_PREDICATES:
                raise Unsupported(f"the shapes use <{p}>, which is not SHACL Core")
            if p == SH.path:
                path_predicates(shapes_graph, o, False, fwd, inv)
            elif p == SH.targetSubjectsOf and isinstance(o, URIRef):
                out_only.add(o)
            elif p == SH.targetObjectsOf and isinstance(o, URIRef):
                in_only.add(o)
            elif p in _PAIR_PREDICATES and isinstance(o, URIRef):
                out_only.add(o)
            elif p == SH.closed and isinstance(o, Literal) and o.toPython() is True:
                closed = True
        _check_severities(shapes_graph)
    except Unsupported as exc:
        return Dependencies(frozenset(), frozenset(), frozenset(), frozenset(), False, str(exc))
    return Dependencies(
        frozenset(fwd), frozenset(inv), frozenset(out_only), frozenset(in_only), closed, None
    )


_ALLOWED_SEVERITIES = (SH.Warning, SH.Info)
# rdflib's Namespace attribute lookup costs ~1.5 µs; hot loops use these.
_RDF_TYPE: URIRef = RDF.type
_RDFS_SUBCLASSOF: URIRef = RDFS.subClassOf
_TARGETS = (SH.targetClass, SH.targetNode, SH.targetSubjectsOf, SH.targetObjectsOf)
_SHAPE_TYPE_NODES = (SH.NodeShape, SH.PropertyShape, SH.Shape)
_NESTING = (SH.property, SH.node, SH["not"], SH.qualifiedValueShape)
_NESTING_LISTS = (SH["and"], SH["or"], SH.xone)


def _severity(g: Graph, shape: Node) -> Node:
    return g.value(shape, SH.severity) or SH.Violation


def _check_severities(g: Graph) -> None:
    """pySHACL decides conformance per top-level shape: a shape of severity
    sh:Warning or sh:Info never breaks conformance, even when shapes nested in
    it report sh:Violation results. Merged result lists can only be judged by
    their severities when no such shape nests a shape of another severity."""
    top = {s for t in _TARGETS for s in g.subjects(t, None)}
    top |= {s for s, o in g.subject_objects(RDF.type) if o not in _SHAPE_TYPE_NODES}
    for shape in top:
        if _severity(g, shape) not in _ALLOWED_SEVERITIES:
            continue
        seen = {shape}
        stack = [shape]
        while stack:
            n = stack.pop()
            nested = [o for p in _NESTING for o in g.objects(n, p)]
            for p in _NESTING_LISTS:
                for head in g.objects(n, p):
                    nested.extend(_list(g, head) or [])
            for o in nested:
                if o in seen:
                    continue
                seen.add(o)
                if _severity(g, o) not in _ALLOWED_SEVERITIES:
                    raise Unsupported(
                        f"shape {o.n3()} of severity {_severity(g, o).n3()} is nested in "
                        f"{shape.n3()} of severity {_severity(g, shape).n3()}"
                    )
                stack.append(o)


def _descendants(view: DeltaView, cls: Node) -> set[Node]:
    """``cls`` and its subclasses, in parent ∪ result."""
    seen = {cls}
    stack = [cls]
    while stack:
        c = stack.pop()
        for sub, _, _ in view.union_triples((None, _RDFS_SUBCLASSOF, c)):
            if sub not in seen:
                seen.add(sub)
                stack.append(sub)
    return seen


def anchors(deps: Dependencies, view: DeltaView) -> set[Node]:
    """Nodes whose own dependency triples changed (step 2)."""
    out: set[Node] = set()
    changed: tuple[NodeTriple, ...] = view.gone + view.new
    for s, p, o in changed:
        if deps.closed or p in deps.fwd or p == _RDF_TYPE or p in deps.out_only:
            out.add(s)
        if p in deps.inv or p in deps.in_only:
            out.add(o)
        if p == _RDFS_SUBCLASSOF:
            out.add(s)
            for cls in _descendants(view, s):
                out.update(x for x, _, _ in view.union_triples((None, RDF.type, cls)))
        if isinstance(s, BNode):
            # pySHACL's messages describe a blank node by all its triples, and
            # those of the blank nodes it points to: any change to them changes
            # the text of results that mention it or a blank node above it.
            out.update(_bnodes_above(view, s))
    return out


def _bnodes_above(view: DeltaView, b: BNode) -> set[Node]:
    """``b`` and the blank nodes from which a chain of blank nodes reaches it."""
    seen: set[Node] = {b}
    stack: list[Node] = [b]
    while stack:
        n = stack.pop()
        for s, _, _ in view.union_triples((None, None, n)):
            if isinstance(s, BNode) and s not in seen:
                seen.add(s)
                stack.append(s)
    return seen


def affected(deps: Dependencies, view: DeltaView, start: set[Node]) -> set[Node]:
    """``start`` and every node whose region reaches one of them, in parent ∪ result."""
    seen = set(start)
    stack = list(start)
    while stack:
        n = stack.pop()
        for p in deps.fwd:
            for s, _, _ in view.union_triples((None, p, n)):
                if s not in seen:
                    seen.add(s)
                    stack.append(s)
        if isinstance(n, Literal):
            continue
        for p in deps.inv:
            for _, _, o in view.union_triples((n, p, None)):
                if o not in seen:
                    seen.add(o)
                    stack.append(o)
    return seen


def region(deps: Dependencies, view: DeltaView, focus: set[Node]) -> Graph:
    """The result's triples the focus nodes' results depend on (step 3)."""
    sub = Graph()
    seen = set(focus)
    stack = list(focus)

    def visit(n: Node) -> None:
        if n not in seen:
            seen.add(n)
            stack.append(n)

    while stack:
        n = stack.pop()
        if not isinstance(n, Literal):
            for p in deps.fwd:
                for o in view.objects(n, p):
                    sub.add((n, p, o))
                    visit(o)
            for o in view.objects(n, _RDF_TYPE):
                sub.add((n, _RDF_TYPE, o))
            for p in deps.out_only:
                for o in view.objects(n, p):
                    sub.add((n, p, o))
            if deps.closed:
                for t in view.triples((n, None, None)):
                    sub.add(t)
        for p in deps.inv:
            for s in view.subjects(p, n):
                sub.add((s, p, n))
                visit(s)
        for p in deps.in_only:
            for s in view.subjects(p, n):
                sub.add((s, p, n))
    for t in view.triples((None, RDFS.subClassOf, None)):
        sub.add(t)
    # Every blank node in the region with all its triples, and those of the
    # blank nodes they point to: pySHACL writes them into its messages.
    stack = [n for n in sub.all_nodes() if isinstance(n, BNode)]
    described: set[Node] = set(stack)
    while stack:
        for t in view.triples((stack.pop(), None, None)):
            sub.add(t)
            o = t[2]
            if isinstance(o, BNode) and o not in described:
                described.add(o)
                stack.append(o)
    return sub


# --------------------------------------------------------------------------- #
# The certifier (step 4): "pySHACL reports nothing for this focus node"
# --------------------------------------------------------------------------- #

_IGNORED_ON_SHAPES: frozenset[URIRef] = frozenset(
    SH[name]
    for name in (
        "path",
        "targetClass",
        "targetNode",
        "targetSubjectsOf",
        "targetObjectsOf",
        "message",
        "severity",
        "name",
        "description",
        "order",
        "group",
        "defaultValue",
        "deactivated",
        "flags",
    )
)
# Parameters the certifier evaluates, and those of them that may repeat.
_CERTIFIED = frozenset(
    SH[name]
    for name in (
        "class",
        "datatype",
        "nodeKind",
        "minCount",
        "maxCount",
        "minInclusive",
        "minExclusive",
        "maxInclusive",
        "maxExclusive",
        "minLength",
        "maxLength",
        "pattern",
        "in",
        "hasValue",
        "node",
        "property",
        "and",
    )
)
_REPEATABLE = frozenset({SH["class"], SH.node, SH.property, SH["and"], SH.hasValue})
_SHAPE_TYPES = frozenset({SH.NodeShape, SH.PropertyShape, SH.Shape})
_MAX_NESTING = 8

# rdflib's Namespace attribute lookup costs ~1.5 µs; the certifier uses these.
_SH_AND: URIRef = SH["and"]
_SH_CLASS: URIRef = SH["class"]
_SH_DATATYPE: URIRef = SH["datatype"]
_SH_HASVALUE: URIRef = SH["hasValue"]
_SH_IN: URIRef = SH["in"]
_SH_MAXCOUNT: URIRef = SH["maxCount"]
_SH_MAXLENGTH: URIRef = SH["maxLength"]
_SH_MINCOUNT: URIRef = SH["minCount"]
_SH_MINLENGTH: URIRef = SH["minLength"]
_SH_NODE: URIRef = SH["node"]
_SH_NODEKIND: URIRef = SH["nodeKind"]
_SH_PATTERN: URIRef = SH["pattern"]
_SH_PROPERTY: URIRef = SH["property"]
# Each value-range parameter with the comparison outcomes it accepts.
_RANGES: dict[URIRef, Callable[[int], bool]] = {
    SH[name]: accept for name, (accept, _symbol) in RANGES.items()
}


@dataclass(frozen=True, slots=True)
class _Shape:
    node: Node
    # None for a node shape; (predicate, inverse) for a certifiable property path.
    path: tuple[URIRef, bool] | None
    is_property: bool
    deactivated: bool
    # False when the shape uses something the certifier does not evaluate.
    certifiable: bool
    # The checks of ``constraints`` every value node must pass: sh:datatype,
    # sh:nodeKind, value ranges, lengths, sh:pattern, sh:in.
    value_checks: tuple[ValueCheck, ...] = ()
    min_count: int | None = None
    max_count: int | None = None
    classes: tuple[Node, ...] = ()
    has_values: tuple[Node, ...] = ()
    # Shapes every value node must certify against: sh:node, sh:property and
    # the members of each sh:and list.
    nested: tuple[Node, ...] = ()


@dataclass(frozen=True, slots=True)
class _TopShape:
    node: Node
    target_nodes: frozenset[Node]
    target_classes: frozenset[Node]
    subjects_of: frozenset[URIRef]
    objects_of: frozenset[URIRef]


@dataclass(frozen=True, slots=True)
class Certifier:
    shapes: dict[Node, _Shape]
    top: tuple[_TopShape, ...]


def _list(g: Graph, head: Node) -> list[Node] | None:
    try:
        return list(Collection(g, head))
    except (ValueError, TypeError, AssertionError):
        return None


def _count(values: list[Node]) -> int | None:
    count = values[0]
    if isinstance(count, Literal) and isinstance(count.value, int):
        return int(count.value)
    return None


def _value_checks(
    g: Graph, node: Node, params: dict[URIRef, list[Node]]
) -> list[ValueCheck] | None:
    """The per-value checks of a shape's parameters; None when one of them
    cannot be built the way pySHACL would evaluate it."""
    checks: list[ValueCheck] = []
    for p, args in params.items():
        arg = args[0]
        if p == _SH_DATATYPE:
            checks.append(datatype(arg))
        elif p == _SH_NODEKIND:
            checks.append(node_kind(arg))
        elif p in _RANGES:
            if not isinstance(arg, Literal):
                return None
            checks.append(in_range(arg, _RANGES[p]))
        elif p in (_SH_MINLENGTH, _SH_MAXLENGTH):
            if not (isinstance(arg, Literal) and isinstance(arg.value, int) and arg.value >= 0):
                return None
            checks.append(length(int(arg.value), is_min=p == _SH_MINLENGTH))
        elif p == _SH_PATTERN:
            flags = list(g.objects(node, SH.flags))
            if len(flags) > 1 or not all(isinstance(f, Literal) for f in flags):
                return None
            try:
                regexes = compile_patterns(g, node)
            except ShapesError:
                return None
            checks.extend(matches(regex) for regex, _text in regexes)
        elif p == _SH_IN:
            items = _list(g, arg)
            if items is None:
                return None
            checks.append(member_of(frozenset(items)))
    return checks


def _compile_shape(g: Graph, node: Node) -> _Shape:
    params: dict[URIRef, list[Node]] = {}
    certifiable = True
    for p, o in g.predicate_objects(node):
        if not isinstance(p, URIRef) or not p.startswith(str(SH)) or p in _IGNORED_ON_SHAPES:
            continue
        if p not in _CERTIFIED:
            certifiable = False
        params.setdefault(p, []).append(o)
    for p, values in params.items():
        if len(values) > 1 and p not in _REPEATABLE:
            certifiable = False
    path_nodes = list(g.objects(node, SH.path))
    path: tuple[URIRef, bool] | None = None
    if len(path_nodes) > 1:
        certifiable = False
    elif path_nodes:
        pn = path_nodes[0]
        inverse = list(g.objects(pn, SH.inversePath)) if isinstance(pn, BNode) else []
        if isinstance(pn, URIRef):
            path = (pn, False)
        elif (
            len(inverse) == 1
            and isinstance(inverse[0], URIRef)
            and len(list(g.predicate_objects(pn))) == 1
        ):
            path = (inverse[0], True)
        else:
            certifiable = False
    deactivated_values = list(g.objects(node, SH.deactivated))
    deactivated = False
    if len(deactivated_values) > 1:
        certifiable = False
    elif deactivated_values:
        flag = deactivated_values[0]
        if isinstance(flag, Literal):
            deactivated = bool(flag.value)
        else:
            certifiable = False
    nested: list[Node] = [*params.get(_SH_NODE, []), *params.get(_SH_PROPERTY, [])]
    for head in params.get(_SH_AND, []):
        items = _list(g, head)
        if not items:
            certifiable = False
        else:
            nested.extend(items)
    min_count = max_count = None
    if _SH_MINCOUNT in params:
        min_count = _count(params[_SH_MINCOUNT])
        certifiable = certifiable and min_count is not None
    if _SH_MAXCOUNT in params:
        max_count = _count(params[_SH_MAXCOUNT])
        certifiable = certifiable and max_count is not None
    checks = _value_checks(g, node, params) if certifiable else None
    if checks is None:
        return _Shape(node, path, bool(path_nodes), deactivated, certifiable=False)
    return _Shape(
        node=node,
        path=path,
        is_property=bool(path_nodes),
        deactivated=deactivated,
        certifiable=True,
        value_checks=tuple(checks),
        min_count=min_count,
        max_count=max_count,
        classes=tuple(params.get(_SH_CLASS, [])),
        has_values=tuple(params.get(_SH_HASVALUE, [])),
        nested=tuple(nested),
    )


def certifier(shapes_graph: Graph) -> Certifier:
    """Compile a shapes graph for ``certify``."""
    g = shapes_graph
    nodes: set[Node] = {s for s in g.subjects() if isinstance(s, URIRef | BNode)}
    compiled = {n: _compile_shape(g, n) for n in nodes}
    top = []
    for n in nodes:
        target_nodes = frozenset(g.objects(n, SH.targetNode))
        classes = set(g.objects(n, SH.targetClass))
        # pySHACL targets implicitly the instances of a shape that is itself
        # a class; over-approximate: any shape typed with anything but a
        # SHACL shape type is its own target class.
        if any(t not in _SHAPE_TYPES for t in g.objects(n, RDF.type)):
            classes.add(n)
        subjects_of = frozenset(
            o for o in g.objects(n, SH.targetSubjectsOf) if isinstance(o, URIRef)
        )
        objects_of = frozenset(o for o in g.objects(n, SH.targetObjectsOf) if isinstance(o, URIRef))
        if target_nodes or classes or subjects_of or objects_of:
            top.append(_TopShape(n, target_nodes, frozenset(classes), subjects_of, objects_of))
    return Certifier(compiled, tuple(top))


def _superclasses(view: DeltaView, cls: Node) -> set[Node]:
    # rdflib's Graph.transitive_objects(cls, rdfs:subClassOf): cls included.
    seen = {cls}
    stack = [cls]
    while stack:
        c = stack.pop()
        for sup in view.objects(c, _RDFS_SUBCLASSOF):
            if sup not in seen:
                seen.add(sup)
                stack.append(sup)
    return seen


# Node -> every class it is an instance of (its types and their superclasses),
# for one check: every top-level shape asks it again of the same node when
# deciding whether the node is a focus node of its class targets.
TypeMemo = dict[Node, frozenset[Node]]


def _classes_of(view: DeltaView, v: Node, memo: TypeMemo) -> frozenset[Node]:
    found = memo.get(v)
    if found is None:
        found = frozenset().union(*(_superclasses(view, t) for t in view.objects(v, _RDF_TYPE)))
        memo[v] = found
    return found


def _is_focus(view: DeltaView, top: _TopShape, f: Node, memo: TypeMemo) -> bool:
    if f in top.target_nodes:
        return True
    if (top.target_classes and not isinstance(f, Literal)
            and top.target_classes & _classes_of(view, f, memo)):
        return True
    if not isinstance(f, Literal):
        for p in top.subjects_of:
            if next(view.objects(f, p), None) is not None:
                return True
    return any(next(view.subjects(p, f), None) is not None for p in top.objects_of)


def _certify_shape(c: Certifier, view: DeltaView, shape_node: Node, f: Node, depth: int) -> bool:
    """True only if validating ``f`` against the shape yields no result."""
    shape = c.shapes.get(shape_node)
    if shape is None or depth > _MAX_NESTING or not shape.certifiable:
        return False
    if shape.deactivated:
        return True
    values: set[Node]
    if shape.path is None:
        if shape.is_property:
            return False
        values = {f}
    else:
        pred, inverse = shape.path
        if inverse:
            values = set(view.subjects(pred, f))
        elif isinstance(f, Literal):
            values = set()
        else:
            values = set(view.objects(f, pred))
    if shape.min_count is not None and not min_count_ok(values, shape.min_count):
        return False
    if shape.max_count is not None and not max_count_ok(values, shape.max_count):
        return False
    if not all(has_value(values, hv) for hv in shape.has_values):
        return False
    for v in values:
        if not all(check(v) for check in shape.value_checks):
            return False
        if not all(instance_of(view, v, cls) for cls in shape.classes):
            return False
        if not all(_certify_shape(c, view, n, v, depth + 1) for n in shape.nested):
            return False
    return True


def certify(c: Certifier, view: DeltaView, f: Node, memo: TypeMemo | None = None) -> bool:
    """True only if pySHACL on the result reports no result owned by focus node ``f``."""
    memo = {} if memo is None else memo
    return all(
        _certify_shape(c, view, top.node, f, 0)
        for top in c.top if _is_focus(view, top, f, memo)
    )


@dataclass(frozen=True, slots=True)
class CheckResult:
    result: ShaclResult
    mode: TypingLiteral["certified", "incremental", "full"]
    # Focus-node candidates re-validated, and the size of the graph they were
    # validated in (incremental mode); why the full graph was used (full mode).
    revalidated: int = 0
    subgraph_triples: int = 0
    reason: str = ""


_default_namespaces: frozenset[tuple[str, str]] | None = None


def _has_default_namespaces(g: Graph) -> bool:
    global _default_namespaces  # noqa: PLW0603 -- computed once, then read-only
    if _default_namespaces is None:
        _default_namespaces = frozenset((p, str(n)) for p, n in Graph().namespaces())
    return frozenset((p, str(n)) for p, n in g.namespaces()) == _default_namespaces


@dataclass(frozen=True, slots=True)
class Entry:
    """One result of a pySHACL report, with the top-level result it belongs to.

    pySHACL lists the results of nested shapes (``sh:detail`` of an sh:node,
    sh:and ... result) as results of their own, with the *value node* as
    focus; ``owner`` is the focus node of the top-level result above them, so
    a report can be split by top-level focus node."""

    owner: str
    top: bool
    violation: Violation


@dataclass(frozen=True, slots=True)
class Owned:
    """A validation result split by top-level focus node."""

    conforms: bool
    entries: tuple[Entry, ...]

    def result(self) -> ShaclResult:
        # Top-level results only, as Shapes.validate reports them (details
        # are kept in entries: they say which focus node owns them).
        return ShaclResult(self.conforms, sorted(e.violation for e in self.entries if e.top))


def validate_owned(shapes: Shapes, data: Graph) -> Owned:
    """The plain call of ``Shapes.validate`` (same options, a fresh copy of the
    shapes graph), with each result attributed to its top-level focus node."""
    try:
        conforms, report = plain_validate(data, shapes._graph, allow_warnings=True)
    except (ReportableRuntimeError, re.error) as exc:
        raise ShapesError(f"SHACL validation failed to run: {exc}") from exc
    owner: dict[Node, tuple[str, bool]] = {}
    for top in report.objects(None, SH.result):
        focus = report.value(top, SH.focusNode)
        name = term_text(focus)
        owner[top] = (name, True)
        stack = [top]
        while stack:
            for detail in report.objects(stack.pop(), SH.detail):
                if detail not in owner:
                    owner[detail] = (name, False)
                    stack.append(detail)
    entries = []
    for r in report.subjects(RDF.type, SH.ValidationResult):
        v = violation(report, r)
        owned_by, is_top = owner.get(r, (v.focus_node, True))
        entries.append(Entry(owned_by, is_top, v))
    return Owned(conforms, tuple(entries))


def _conforms(entries: Iterable[Entry]) -> bool:
    # pySHACL with allow_warnings and allow_infos decides per top-level shape;
    # where dependencies() found the severities derivable, that is: no
    # top-level result of a severity other than sh:Warning or sh:Info.
    return all(e.violation.severity in ("Warning", "Info") for e in entries if e.top)


_T = TypeVar("_T")


class ShaclChecker:
    """Incremental SHACL with a memo of shapes analyses and parent baselines.

    Thread-safe: the memo is guarded by a lock; two threads may compute the
    same baseline at once, and both get the same answer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deps: dict[str, Dependencies] = {}
        self._certifiers: dict[str, Certifier] = {}
        self._baselines: dict[tuple[str, int], tuple[weakref.ref[Graph], Owned]] = {}

    def _per_shapes(self, table: dict[str, _T], shapes: Shapes, make: Callable[[Graph], _T]) -> _T:
        with self._lock:
            found = table.get(shapes.digest)
        if found is None:
            # Shapes exposes no accessor for its graph; this module only reads it.
            found = make(shapes._graph)
            with self._lock:
                table[shapes.digest] = found
        return found

    def dependencies(self, shapes: Shapes) -> Dependencies:
        return self._per_shapes(self._deps, shapes, dependencies)

    def certifier(self, shapes: Shapes) -> Certifier:
        return self._per_shapes(self._certifiers, shapes, certifier)

    def baseline(self, shapes: Shapes, parent: Graph) -> Owned:
        """The plain call on the parent, computed once per (parent, shapes)."""
        key = (shapes.digest, id(parent))
        with self._lock:
            hit = self._baselines.get(key)
        if hit is not None and hit[0]() is parent:
            return hit[1]
        if _has_default_namespaces(parent):
            result = validate_owned(shapes, parent)
        else:
            # Validate a copy with a fresh graph's bindings, like the result's.
            copy = Graph()
            copy += parent
            result = validate_owned(shapes, copy)

        def forget(_: weakref.ref[Graph], key: tuple[str, int] = key) -> None:
            with self._lock:
                entry = self._baselines.get(key)
                if entry is not None and entry[0]() is None:
                    del self._baselines[key]

        with self._lock:
            self._baselines[key] = (weakref.ref(parent, forget), result)
        return result

    def check(self, shapes: Shapes, view: DeltaView) -> CheckResult:
        """``shapes.validate(view.graph())``, computed incrementally where possible."""
        deps = self.dependencies(shapes)
        reason = deps.unsupported
        if reason is None and not _has_default_namespaces(view.parent):
            reason = "the parent graph binds namespaces of its own"
        if reason is not None:
            return CheckResult(shapes.validate(view.graph()), "full", reason=reason)
        base = self.baseline(shapes, view.parent)
        focus = affected(deps, view, anchors(deps, view))
        if not focus:
            return CheckResult(base.result(), "certified")
        names = {term_text(n) for n in focus}
        kept = [e for e in base.entries if e.owner not in names]
        proof = self.certifier(shapes)
        memo: TypeMemo = {}
        if all(certify(proof, view, n, memo) for n in focus):
            mode: TypingLiteral["certified", "incremental"] = "certified"
            size = 0
        else:
            sub = region(deps, view, focus)
            kept += [e for e in validate_owned(shapes, sub).entries if e.owner in names]
            mode, size = "incremental", len(sub)
        merged = Owned(_conforms(kept), tuple(kept)).result()
        return CheckResult(merged, mode, revalidated=len(focus), subgraph_triples=size)
