"""Hypothesis strategies for SHACL shapes graphs and data graphs, and the
comparison of a compiled validation with a plain ``pyshacl.validate`` call.

The shapes use only what knhkd/knowledge/shacl/compiler.py compiles (every
generated shapes graph must compile without falling back), over a small
vocabulary so that targets, paths and values collide often.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pyshacl
from hypothesis import strategies as st
from rdflib import BNode, Graph, Literal, URIRef
from rdflib.collection import Collection
from rdflib.namespace import RDF, RDFS, SH, XSD
from rdflib.term import Node

from knhkd.knowledge.shacl import CompiledShapes, DataGraph, Result, report_results

EX = "http://example.org/"
PREDS = [URIRef(f"{EX}p{i}") for i in range(4)]
CLASSES = [URIRef(f"{EX}C{i}") for i in range(3)]
NODES = [URIRef(f"{EX}n{i}") for i in range(5)]
BNODES = [BNode(f"b{i}") for i in range(3)]
LITERALS: list[Node] = [
    Literal(0),
    Literal(1),
    Literal(-3),
    Literal(7),
    Literal(Decimal("2.5")),
    Literal(Decimal("-0.5")),
    Literal(1.5),
    Literal("abc"),
    Literal("ABC"),
    Literal("a"),
    Literal(""),
    Literal("hello", lang="en"),
    Literal("hallo", lang="de"),
    Literal("hi", lang="en-US"),
    Literal("colour", lang="EN-gb"),
    Literal(True),
    Literal(False),
    Literal("x", datatype=XSD.string),
    Literal("abc", datatype=XSD.integer),  # ill-typed
    Literal("2024-01-02", datatype=XSD.date),
    Literal("2024-01-02T03:04:05", datatype=XSD.dateTime),
    Literal("7", datatype=XSD.long),
    Literal("x", datatype=URIRef(f"{EX}dt")),
]
SUBJECTS: list[Node] = [*NODES, *BNODES]
OBJECTS: list[Node] = [*NODES, *BNODES, *CLASSES, *LITERALS]


@st.composite
def data_graphs(draw: st.DrawFn) -> Graph:
    g = Graph()
    for _ in range(draw(st.integers(0, 14))):
        g.add(
            (
                draw(st.sampled_from(SUBJECTS)),
                draw(st.sampled_from(PREDS)),
                draw(st.sampled_from(OBJECTS)),
            )
        )
    for _ in range(draw(st.integers(0, 5))):
        g.add((draw(st.sampled_from(SUBJECTS)), RDF.type, draw(st.sampled_from(CLASSES))))
    if draw(st.booleans()):
        sub, sup = draw(st.sampled_from(CLASSES)), draw(st.sampled_from(CLASSES))
        g.add((sub, RDFS.subClassOf, sup))
    return g


class _Builder:
    """Adds one random shapes graph to ``g``; shapes only reference shapes
    built before them, so there is no recursion."""

    def __init__(self, draw: st.DrawFn, g: Graph) -> None:
        self.draw = draw
        self.g = g
        self.shapes: list[Node] = []
        self.node_shapes: list[Node] = []
        self.count = 0

    def new_node(self) -> Node:
        self.count += 1
        if self.draw(st.booleans()):
            return URIRef(f"{EX}shape{self.count}")
        return BNode(f"s{self.count}")

    def rdf_list(self, items: list[Node]) -> Node:
        head = BNode()
        Collection(self.g, head, items)
        return head

    def path(self, depth: int = 0) -> Node:
        d = self.draw
        kind = d(
            st.sampled_from(
                ["pred"] * 4 + (["inv", "seq", "alt", "star", "plus", "opt"] if depth < 2 else [])
            )
        )
        if kind == "pred":
            return d(st.sampled_from(PREDS))
        node = BNode()
        if kind == "inv":
            self.g.add((node, SH.inversePath, self.path(depth + 1)))
        elif kind in ("seq", "alt"):
            items = [self.path(depth + 1) for _ in range(d(st.integers(2, 3)))]
            lst = self.rdf_list(items)
            if kind == "seq":
                return lst
            self.g.add((node, SH.alternativePath, lst))
        else:
            pred = {"star": SH.zeroOrMorePath, "plus": SH.oneOrMorePath, "opt": SH.zeroOrOnePath}
            self.g.add((node, pred[kind], self.path(depth + 1)))
        return node

    def constraints(self, shape: Node, is_property: bool) -> None:
        d, g = self.draw, self.g
        options = [
            "class", "datatype", "nodeKind", "in", "hasValue", "pattern", "minLength",
            "maxLength", "range", "languageIn", "equals", "disjoint", "closed",
        ]  # fmt: skip
        if is_property:
            options += ["minCount", "maxCount", "uniqueLang", "lessThan", "qualified"]
        if self.node_shapes:
            options += ["node", "not", "and", "or", "xone"]
        for name in d(st.lists(st.sampled_from(options), min_size=0, max_size=3, unique=True)):
            self.constraint(shape, name)
        if d(st.integers(0, 9)) == 0:
            g.add((shape, SH.severity, d(st.sampled_from([SH.Warning, SH.Info, SH.Violation]))))
        if d(st.integers(0, 5)) == 0:
            g.add((shape, SH.message, Literal(f"message of {shape}")))
        if d(st.integers(0, 12)) == 0:
            g.add((shape, SH.deactivated, Literal(True)))

    def constraint(self, shape: Node, name: str) -> None:
        d, g = self.draw, self.g
        ref = st.sampled_from(self.node_shapes) if self.node_shapes else st.nothing()
        if name == "class":
            for c in d(st.lists(st.sampled_from(CLASSES), min_size=1, max_size=2, unique=True)):
                g.add((shape, SH["class"], c))
        elif name == "datatype":
            dts = [XSD.integer, XSD.decimal, XSD.string, XSD.boolean, XSD.date, XSD.long,
                   RDF.langString, RDFS.Literal, XSD.dateTime, URIRef(f"{EX}dt")]  # fmt: skip
            g.add((shape, SH.datatype, d(st.sampled_from(dts))))
        elif name == "nodeKind":
            kinds = [SH.IRI, SH.BlankNode, SH.Literal, SH.BlankNodeOrIRI, SH.BlankNodeOrLiteral,
                     SH.IRIOrLiteral]  # fmt: skip
            g.add((shape, SH.nodeKind, d(st.sampled_from(kinds))))
        elif name == "in":
            members = d(st.lists(st.sampled_from([*NODES, *LITERALS]), min_size=1, max_size=4))
            g.add((shape, SH["in"], self.rdf_list(members)))
        elif name == "hasValue":
            g.add((shape, SH.hasValue, d(st.sampled_from([*NODES, *LITERALS[:8]]))))
        elif name == "pattern":
            g.add(
                (
                    shape,
                    SH.pattern,
                    Literal(d(st.sampled_from(["^a", "b", "^[A-Z]+$", "^$", "c$", "n[0-2]"]))),
                )
            )
            if d(st.booleans()):
                g.add((shape, SH.flags, Literal(d(st.sampled_from(["i", "m", "im", "x"])))))
        elif name in ("minLength", "maxLength"):
            g.add((shape, SH[name], Literal(d(st.integers(0, 4)))))
        elif name == "range":
            which = d(
                st.sampled_from(["minInclusive", "maxInclusive", "minExclusive", "maxExclusive"])
            )
            bounds = [Literal(0), Literal(1), Literal(Decimal("2.5")), Literal(-1), Literal("b"),
                      Literal("2024-01-01", datatype=XSD.date)]  # fmt: skip
            bound = d(st.sampled_from(bounds))
            g.add((shape, SH[which], bound))
        elif name == "languageIn":
            langs = d(
                st.lists(st.sampled_from(["en", "de", "en-us", "*", "fr"]), min_size=1, max_size=3)
            )
            g.add((shape, SH.languageIn, self.rdf_list([Literal(x) for x in langs])))
        elif name in ("equals", "disjoint", "lessThan"):
            pred = (
                SH[name]
                if name != "lessThan"
                else SH[d(st.sampled_from(["lessThan", "lessThanOrEquals"]))]
            )
            g.add((shape, pred, d(st.sampled_from(PREDS))))
        elif name == "closed":
            g.add((shape, SH.closed, Literal(d(st.booleans()))))
            if d(st.booleans()):
                ignored = d(st.lists(st.sampled_from([*PREDS, RDF.type]), min_size=1, max_size=2))
                g.add((shape, SH.ignoredProperties, self.rdf_list(ignored)))
        elif name in ("minCount", "maxCount"):
            g.add((shape, SH[name], Literal(d(st.integers(0, 3)))))
        elif name == "uniqueLang":
            g.add((shape, SH.uniqueLang, Literal(True)))
        elif name == "qualified":
            g.add(
                (shape, SH.qualifiedValueShape, d(ref) if self.node_shapes else self.inline_shape())
            )
            if d(st.booleans()):
                g.add((shape, SH.qualifiedMinCount, Literal(d(st.integers(0, 2)))))
            else:
                g.add((shape, SH.qualifiedMaxCount, Literal(d(st.integers(0, 2)))))
            if d(st.booleans()):
                g.add((shape, SH.qualifiedValueShapesDisjoint, Literal(True)))
        elif name in ("node", "not"):
            g.add((shape, SH[name], d(ref)))
        elif name in ("and", "or", "xone"):
            members = d(st.lists(ref, min_size=1, max_size=3))
            g.add((shape, SH[name], self.rdf_list(members)))

    def inline_shape(self) -> Node:
        node = BNode()
        self.g.add((node, SH.nodeKind, SH.IRI))
        return node

    def property_shape(self) -> Node:
        node = self.new_node()
        if self.draw(st.booleans()):
            self.g.add((node, RDF.type, SH.PropertyShape))
        self.g.add((node, SH.path, self.path()))
        self.constraints(node, is_property=True)
        return node

    def node_shape(self, targets: bool) -> Node:
        d, g = self.draw, self.g
        node = self.new_node()
        g.add((node, RDF.type, SH.NodeShape))
        if targets:
            kind = d(st.sampled_from(["class", "node", "subjectsOf", "objectsOf", "implicit"]))
            if kind == "class":
                g.add((node, SH.targetClass, d(st.sampled_from(CLASSES))))
            elif kind == "node":
                for t in d(
                    st.lists(st.sampled_from([*NODES, LITERALS[1]]), min_size=1, max_size=2)
                ):
                    g.add((node, SH.targetNode, t))
            elif kind == "subjectsOf":
                g.add((node, SH.targetSubjectsOf, d(st.sampled_from(PREDS))))
            elif kind == "objectsOf":
                g.add((node, SH.targetObjectsOf, d(st.sampled_from(PREDS))))
            elif isinstance(node, URIRef):
                # An implicit class target: the shape is itself a class.
                g.add((node, RDF.type, RDFS.Class))
                g.add((NODES[0], RDF.type, node))
        self.constraints(node, is_property=False)
        for _ in range(d(st.integers(0, 2))):
            g.add((node, SH.property, self.property_shape()))
        return node


@st.composite
def shapes_graphs(draw: st.DrawFn) -> Graph:
    g = Graph()
    b = _Builder(draw, g)
    for _ in range(draw(st.integers(0, 2))):
        b.node_shapes.append(b.node_shape(targets=draw(st.booleans())))
    for _ in range(draw(st.integers(1, 2))):
        b.node_shapes.append(b.node_shape(targets=True))
    return g


# --------------------------------------------------------------------------- #
# Comparison
# --------------------------------------------------------------------------- #

Key = tuple[Any, ...]


def result_keys(results: list[Result], with_message: frozenset[Node] = frozenset()) -> Counter[Key]:
    """The multiset of results; the message texts count for results of the
    shapes in ``with_message`` (those declaring sh:message: pySHACL words its
    generic messages its own way)."""
    out: Counter[Key] = Counter()
    for r in results:
        key: Key = r.key()
        if r.source_shape in with_message:
            key = (*key, r.messages)
        out[key] += 1
    return out


def message_shapes(shapes: Graph) -> frozenset[Node]:
    return frozenset(shapes.subjects(SH.message, None))


def run_pyshacl(data: Graph, shapes: Graph) -> tuple[bool, list[Result]] | str:
    """Plain ``pyshacl.validate`` (on a copy: it adds triples to the shapes
    graph); an error is returned as its type name."""
    sg = Graph()
    sg += shapes
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            conforms, report, _ = pyshacl.validate(data, shacl_graph=sg)
    except Exception as exc:
        return type(exc).__name__
    finally:
        logging.disable(logging.NOTSET)
    results, _ = report_results(report)
    return bool(conforms), results


def run_compiled(
    data: Graph, shapes: Graph, compiled: CompiledShapes | None = None
) -> tuple[bool, list[Result]] | str:
    try:
        c = compiled if compiled is not None else CompiledShapes.compile(shapes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v = c.validate(DataGraph.from_graph(data), lambda: data)
    except Exception as exc:
        return type(exc).__name__
    return v.conforms, v.results


Outcome = tuple[bool, list[Result]] | str


def same(a: Outcome, b: Outcome, with_message: frozenset[Node] = frozenset()) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        # Both refused the input (the exception types differ by design:
        # ShaclRuntimeError mirrors pySHACL's ReportableRuntimeError).
        return isinstance(a, str) and isinstance(b, str)
    return a[0] == b[0] and result_keys(a[1], with_message) == result_keys(b[1], with_message)


def describe(a: Outcome, b: Outcome, with_message: frozenset[Node] = frozenset()) -> str:
    if isinstance(a, str) or isinstance(b, str):
        mine = a if isinstance(a, str) else "results"
        theirs = b if isinstance(b, str) else "results"
        return f"compiled: {mine}; pySHACL: {theirs}"
    ka, kb = result_keys(a[1], with_message), result_keys(b[1], with_message)
    return f"conforms {a[0]} vs {b[0]}; only compiled: {ka - kb}; only pySHACL: {kb - ka}"


Runner = Callable[[Graph, Graph], tuple[bool, list[Result]] | str]
