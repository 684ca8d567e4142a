"""SHACL Core compiled into plain Python checks: pySHACL's verdicts, without its cost.

``CompiledShapes.compile(shapes_graph)`` turns a shapes graph into a tree of
small Python objects, once; ``CompiledShapes.validate(data)`` then checks a
``DataGraph`` (an in-memory index: subject -> predicate -> objects, inverse
indexes built on demand) without building an rdflib graph, without SPARQL and
without a report graph. That is what makes ingest-time SHACL affordable
(PLATFORM_NOTES: 3.5 ms per naive pySHACL call).

Guarantees:
- The reference is a plain ``pyshacl.validate(data, shacl_graph=shapes)`` call
  (pySHACL 0.40.1, rdflib 7.6; no inference, no ``focus_nodes``, no
  ``allow_warnings``). For every shapes graph, ``validate`` returns the same
  ``conforms`` and the same multiset of results — focus node, result path,
  constraint component, severity, source shape and value, plus the
  ``sh:message`` texts where the shape declares any — as that call.
  Each check mirrors pySHACL's own rule, including its departures from the
  SHACL text (the ``sh:pattern`` flags it honours, ``sh:languageIn`` prefix
  matching, an inverse sequence path inverting each step in order, literal
  comparison through rdflib's ordering). Data terms are rdflib terms, so term
  equality, literal values and ill-typedness are rdflib's own.
  tests/unit/test_shacl_core_w3c.py and test_shacl_core_equivalence.py prove it
  on the W3C SHACL Core suite and on generated shapes and data.
- Supported (compiled): targets (``sh:targetClass``, implicit class targets,
  ``sh:targetNode``, ``sh:targetSubjectsOf``, ``sh:targetObjectsOf``); property
  paths (predicate, inverse, sequence, alternative, zero-or-more, one-or-more,
  zero-or-one); ``sh:minCount``, ``sh:maxCount``, ``sh:datatype``, ``sh:class``,
  ``sh:nodeKind``, ``sh:in``, ``sh:hasValue``, ``sh:pattern`` (+ ``sh:flags``),
  ``sh:minLength``, ``sh:maxLength``, ``sh:minInclusive``, ``sh:maxInclusive``,
  ``sh:minExclusive``, ``sh:maxExclusive``, ``sh:node``, ``sh:property``,
  ``sh:and``, ``sh:or``, ``sh:not``, ``sh:xone``, ``sh:closed`` (+
  ``sh:ignoredProperties``), ``sh:equals``, ``sh:disjoint``, ``sh:lessThan``,
  ``sh:lessThanOrEquals``, ``sh:qualifiedValueShape`` (+ min/max count,
  disjointness), ``sh:uniqueLang true``, ``sh:languageIn``; ``sh:severity``,
  ``sh:deactivated``, ``sh:message``; the informational ``sh:name``,
  ``sh:description``, ``sh:order``, ``sh:group``, ``sh:defaultValue``.
- The fallback rule: a shape is *unsupported* when it uses any other predicate
  of the SHACL namespace (``sh:sparql``, ``sh:target``, ``sh:rule``, ...), a
  parameter value pySHACL treats in a way this module does not mirror
  (``sh:uniqueLang`` other than the literal ``true``, several
  ``sh:severity``/``sh:flags``/path values, of which pySHACL picks one at
  random), or takes part in a reference cycle (recursive shapes); and every
  shape when the graph declares a custom constraint component. A top-level
  shape (one with targets) that is unsupported or reaches an unsupported shape
  is validated by pySHACL itself: one plain ``pyshacl.validate`` call on the
  same data, with a shapes graph in which the *supported* top-level shapes
  lost their targets (so pySHACL evaluates exactly the others, nested shapes
  included), and its results are merged in. Nothing unsupported is ever
  skipped: it is either compiled or run by the reference (``fallback`` names
  the shapes and why).
- A shapes graph pySHACL would refuse when it evaluates a shape (two
  ``sh:datatype`` values, ``sh:minCount`` on a node shape, a literal path, ...)
  is refused here at compile time with ``ShapesError``, even when no data
  would reach the shape. Where pySHACL fails at validation time (nesting 15
  deep, ``sh:lessThan`` on a blank node, incomparable literals), ``validate``
  raises ``ShaclRuntimeError``.
- ``CompiledShapes`` is immutable after ``compile``; ``validate`` may run on
  several threads at once.

Must never: mutate the shapes graph or the data it is given, evaluate pySHACL
with ``focus_nodes``, or report ``conforms`` for a shape it did not evaluate.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rdflib import BNode, Graph, Literal, URIRef
from rdflib.namespace import OWL, RDF, RDFS, SH, XSD
from rdflib.term import Node

from knhkd.knowledge.shacl.constraints import (
    RANGES,
    ValueCheck,
    compile_patterns,
    datatype,
    has_value,
    in_range,
    instance_of,
    language_in,
    length,
    matches,
    max_count_ok,
    member_of,
    min_count_ok,
    node_kind,
)
from knhkd.knowledge.shacl.datagraph import DataGraph
from knhkd.knowledge.shacl.errors import ShaclRuntimeError, ShapesError, Unsupported
from knhkd.knowledge.shacl.paths import PathFn, compile_path, path_steps, path_text
from knhkd.knowledge.shacl.plain import plain_validate, report_results
from knhkd.knowledge.shacl.results import Result, Validation
from knhkd.knowledge.shacl.terms import intern_iri, term_text, values_of

__all__ = ["CompiledShapes"]


def _i(t: Node) -> Node:
    return intern_iri(t) if isinstance(t, URIRef) else t


# --------------------------------------------------------------------------- #
# Vocabulary
# --------------------------------------------------------------------------- #

_WHOLE_INTEGERS = frozenset(
    XSD[n]
    for n in (
        "integer", "int", "long", "negativeInteger", "nonNegativeInteger",
        "nonPositiveInteger", "positiveInteger", "short", "unsignedByte", "unsignedInt",
        "unsignedLong", "unsignedShort",
    )
)  # fmt: skip

# Constraint parameters, grouped by the component that evaluates them.
_COMPONENT_PARAMS: dict[str, tuple[URIRef, ...]] = {
    "class": (SH["class"],),
    "datatype": (SH.datatype,),
    "nodeKind": (SH.nodeKind,),
    "minCount": (SH.minCount,),
    "maxCount": (SH.maxCount,),
    "minExclusive": (SH.minExclusive,),
    "minInclusive": (SH.minInclusive,),
    "maxExclusive": (SH.maxExclusive,),
    "maxInclusive": (SH.maxInclusive,),
    "not": (SH["not"],),
    "and": (SH["and"],),
    "or": (SH["or"],),
    "xone": (SH.xone,),
    "minLength": (SH.minLength,),
    "maxLength": (SH.maxLength,),
    "pattern": (SH.pattern,),
    "languageIn": (SH.languageIn,),
    "uniqueLang": (SH.uniqueLang,),
    "equals": (SH.equals,),
    "disjoint": (SH.disjoint,),
    "lessThan": (SH.lessThan,),
    "lessThanOrEquals": (SH.lessThanOrEquals,),
    "node": (SH.node,),
    "property": (SH.property,),
    "qualified": (
        SH.qualifiedValueShape,
        SH.qualifiedMinCount,
        SH.qualifiedValueShapesDisjoint,
        SH.qualifiedMaxCount,
    ),
    "closed": (SH.closed, SH.ignoredProperties),
    "hasValue": (SH.hasValue,),
    "in": (SH["in"],),
}
_PARAM_COMPONENT: dict[URIRef, str] = {
    p: name for name, params in _COMPONENT_PARAMS.items() for p in params
}
# Predicates of a shape node that are understood without being constraints.
_SHAPE_ATTRIBUTES = frozenset(
    {
        SH.targetClass, SH.targetNode, SH.targetSubjectsOf, SH.targetObjectsOf, SH.path,
        SH.severity, SH.message, SH.deactivated, SH.flags,
        SH.name, SH.description, SH.order, SH.group, SH.defaultValue,
    }
)  # fmt: skip
_TARGET_PREDICATES = (SH.targetClass, SH.targetNode, SH.targetSubjectsOf, SH.targetObjectsOf)
_SHAPE_VALUED = (SH.property, SH.node, SH["not"], SH.qualifiedValueShape)
_SHAPE_LISTS = (SH["and"], SH["or"], SH.xone)

_SH = str(SH)
# pySHACL raises "Validation path too deep" when it validates a shape nested 15 deep.
_MAX_DEPTH = 15
_ALWAYS_IGNORED = ((RDF.type, RDFS.Resource),)


# rdflib's namespace attributes cost ~1.7 µs per access: bind the hot ones once.
_TYPE = intern_iri(RDF.type)
_SUBCLASS = intern_iri(RDFS.subClassOf)
_QMAX = SH.QualifiedMaxCountConstraintComponent
_QMIN = SH.QualifiedMinCountConstraintComponent


def _one(values: set[Node], what: str) -> Node:
    if len(values) != 1:
        raise ShapesError(f"{what}: expected exactly one value, found {len(values)}")
    return next(iter(values))


# --------------------------------------------------------------------------- #
# Compiled shapes and constraints
# --------------------------------------------------------------------------- #

FocusValues = list[tuple[Node, Collection[Node]]]
Outcome = tuple[bool, list[Result]]


class _Shape:
    __slots__ = (
        "constraints",
        "deactivated",
        "has_message",
        "is_property",
        "messages",
        "node",
        "path_fn",
        "path_node",
        "path_steps",
        "path_str",
        "quick",
        "severity",
        "target_classes",
        "target_nodes",
        "target_objects_of",
        "target_subjects_of",
    )

    def __init__(self, node: Node) -> None:
        self.node = node
        self.is_property = False
        self.path_node: Node | None = None
        self.path_str = ""
        self.path_steps: tuple[Node, ...] = ()
        self.path_fn: PathFn | None = None
        self.deactivated = False
        self.severity: Node = SH.Violation
        self.messages: tuple[str, ...] = ()
        self.has_message = False
        self.constraints: list[_Constraint] = []
        # Set by finish(): conformance of a value without building results.
        self.quick: Callable[[DataGraph, Node], bool] | None = None
        self.target_nodes: tuple[Node, ...] = ()
        self.target_classes: tuple[Node, ...] = ()
        self.target_subjects_of: tuple[Node, ...] = ()
        self.target_objects_of: tuple[Node, ...] = ()

    def has_targets(self) -> bool:
        return bool(
            self.target_nodes
            or self.target_classes
            or self.target_subjects_of
            or self.target_objects_of
        )

    def focus_nodes(self, g: DataGraph) -> list[Node]:
        """pySHACL's ``Shape.focus_nodes``."""
        found: dict[Node, None] = dict.fromkeys(self.target_nodes)
        for tc in self.target_classes:
            for s in g.subjects(_TYPE, tc):
                found[s] = None
            # The closure starts with tc itself, which pySHACL skips.
            for sub in g.transitive_subjects(_SUBCLASS, tc)[1:]:
                found.update(dict.fromkeys(g.subjects(_TYPE, sub)))
        for p in self.target_subjects_of:
            found.update(dict.fromkeys(s for s, _ in g.subject_objects(p)))
        for p in self.target_objects_of:
            found.update(dict.fromkeys(o for _, o in g.subject_objects(p)))
        return list(found)

    def finish(self) -> None:
        """After the constraints are built: a node shape whose constraints all
        judge one value at a time conforms exactly when every check passes,
        so nested uses (sh:or of datatypes, ...) need not build results."""
        if self.deactivated:
            self.quick = lambda g, v: True
        elif self.path_fn is None and all(isinstance(c, _PerValue) for c in self.constraints):
            checks = [c.check for c in self.constraints if isinstance(c, _PerValue)]
            # None of these checks raises, so stopping at the first failure
            # cannot hide an error pySHACL would meet.
            self.quick = lambda g, v: all(check(v) for check in checks)

    def conforms(self, g: DataGraph, v: Node, depth: int) -> bool:
        """pySHACL's ``Shape.validate(focus=v)[0]`` for a nested shape."""
        quick = self.quick
        if quick is not None and depth < _MAX_DEPTH:
            return quick(g, v)
        return self.validate(g, (v,), depth)[0]

    def validate(self, g: DataGraph, focus: Iterable[Node], depth: int = 0) -> Outcome:
        """pySHACL's ``Shape.validate`` for the given focus nodes; ``depth`` is
        the nesting level (0 for a shape validated through its targets)."""
        if self.deactivated:
            return True, []
        if not isinstance(focus, tuple | list):
            focus = list(focus)
        if not focus:
            return True, []
        if depth >= _MAX_DEPTH:
            raise ShaclRuntimeError("validation path too deep (recursive or deeply nested shapes)")
        path_fn = self.path_fn
        if path_fn is None:
            fv: FocusValues = [(f, (f,)) for f in focus]
        else:
            fv = [(f, path_fn(g, f)) for f in focus]
        conforms = True
        results: list[Result] = []
        for c in self.constraints:
            ok, found = c.evaluate(g, fv, depth)
            if not ok:
                conforms = False
            if found:
                results.extend(found)
        return conforms, results

    def result(
        self,
        focus: Node,
        component: URIRef,
        value: Node | None,
        generic: str,
        *,
        path: tuple[Node, str] | None = None,
    ) -> Result:
        if path is None:
            path_node, path_str, steps = self.path_node, self.path_str, self.path_steps
        else:
            path_node, path_str = path
            steps = (path_node,)
        if self.has_message:
            messages, is_generic = self.messages, False
        else:
            messages, is_generic = (generic,), True
        return Result(
            focus=focus,
            path=path_str,
            component=component,
            severity=self.severity,
            source_shape=self.node,
            value=value,
            messages=messages,
            generic=is_generic,
            path_node=path_node,
            steps=steps,
        )


class _Constraint:
    __slots__ = ("component", "shape")

    def __init__(self, shape: _Shape, component: URIRef) -> None:
        self.shape = shape
        self.component = component

    def evaluate(self, g: DataGraph, fv: FocusValues, depth: int) -> Outcome:
        raise NotImplementedError


class _PerValue(_Constraint):
    """A constraint that judges each value node on its own, with one check of
    ``constraints``."""

    __slots__ = ("check", "message")

    def __init__(self, shape: _Shape, component: URIRef, message: str, check: ValueCheck) -> None:
        super().__init__(shape, component)
        self.message = message
        self.check = check

    def evaluate(self, g: DataGraph, fv: FocusValues, depth: int) -> Outcome:
        results: list[Result] = []
        check = self.check
        for f, values in fv:
            for v in values:
                if not check(v):
                    results.append(self.shape.result(f, self.component, v, self.message))
        return not results, results


class _MinCount(_Constraint):
    __slots__ = ("n",)

    def __init__(self, shape: _Shape, n: int) -> None:
        super().__init__(shape, SH.MinCountConstraintComponent)
        self.n = n

    def evaluate(self, g: DataGraph, fv: FocusValues, depth: int) -> Outcome:
        n = self.n
        if n == 0:
            return True, []
        results = [
            self.shape.result(f, self.component, None, f"Less than {n} values on {f}")
            for f, values in fv
            if not min_count_ok(values, n)
        ]
        return not results, results


class _MaxCount(_Constraint):
    __slots__ = ("n",)

    def __init__(self, shape: _Shape, n: int) -> None:
        super().__init__(shape, SH.MaxCountConstraintComponent)
        self.n = n

    def evaluate(self, g: DataGraph, fv: FocusValues, depth: int) -> Outcome:
        n = self.n
        results = [
            self.shape.result(f, self.component, None, f"More than {n} values on {f}")
            for f, values in fv
            if not max_count_ok(values, n)
        ]
        return not results, results


class _Class(_Constraint):
    __slots__ = ("classes",)

    def __init__(self, shape: _Shape, classes: list[Node]) -> None:
        super().__init__(shape, SH.ClassConstraintComponent)
        self.classes = classes

    def evaluate(self, g: DataGraph, fv: FocusValues, depth: int) -> Outcome:
        results: list[Result] = []
        for c in self.classes:
            for f, values in fv:
                for v in values:
                    if not instance_of(g, v, c):
                        results.append(
                            self.shape.result(
                                f, self.component, v, f"Value does not have class {term_text(c)}"
                            )
                        )
        return not results, results


class _Range(_Constraint):
    """sh:min/maxInclusive/Exclusive: one pass per bound, like pySHACL."""

    __slots__ = ("bounds", "symbol")

    def __init__(
        self,
        shape: _Shape,
        component: URIRef,
        bounds: list[Literal],
        accept: Callable[[int], bool],
        symbol: str,
    ) -> None:
        super().__init__(shape, component)
        self.bounds = [(b, in_range(b, accept)) for b in bounds]
        self.symbol = symbol

    def evaluate(self, g: DataGraph, fv: FocusValues, depth: int) -> Outcome:
        results: list[Result] = []
        for bound, check in self.bounds:
            for f, values in fv:
                for v in values:
                    if not check(v):
                        results.append(
                            self.shape.result(
                                f,
                                self.component,
                                v,
                                f"Value is not {self.symbol} {term_text(bound)}",
                            )
                        )
        return not results, results


class _Pattern(_Constraint):
    __slots__ = ("patterns",)

    def __init__(self, shape: _Shape, patterns: list[tuple[re.Pattern[str], str]]) -> None:
        super().__init__(shape, SH.PatternConstraintComponent)
        self.patterns = [(matches(regex), text) for regex, text in patterns]

    def evaluate(self, g: DataGraph, fv: FocusValues, depth: int) -> Outcome:
        results: list[Result] = []
        for check, text in self.patterns:
            for f, values in fv:
                for v in values:
                    if not check(v):
                        results.append(
                            self.shape.result(
                                f, self.component, v, f"Value does not match pattern '{text}'"
                            )
                        )
        return not results, results


class _UniqueLang(_Constraint):
    __slots__ = ()

    def __init__(self, shape: _Shape) -> None:
        super().__init__(shape, SH.UniqueLangConstraintComponent)

    def evaluate(self, g: DataGraph, fv: FocusValues, depth: int) -> Outcome:
        results: list[Result] = []
        for f, values in fv:
            seen: set[str] = set()
            duplicates: set[str] = set()
            for v in values:
                if isinstance(v, Literal) and v.language:
                    low = str(v.language).lower()
                    (duplicates if low in seen else seen).add(low)
            for _ in duplicates:
                results.append(
                    self.shape.result(
                        f,
                        self.component,
                        None,
                        "More than one String shares the same Language",
                    )
                )
        return not results, results


class _HasValue(_Constraint):
    __slots__ = ("required",)

    def __init__(self, shape: _Shape, required: set[Node]) -> None:
        super().__init__(shape, SH.HasValueConstraintComponent)
        self.required = required

    def evaluate(self, g: DataGraph, fv: FocusValues, depth: int) -> Outcome:
        results: list[Result] = []
        for hv in self.required:
            for f, values in fv:
                if not has_value(values, hv):
                    results.append(
                        self.shape.result(
                            f, self.component, None, f"Missing required value {term_text(hv)}"
                        )
                    )
        return not results, results


class _Equals(_Constraint):
    __slots__ = ("predicates",)

    def __init__(self, shape: _Shape, predicates: set[Node]) -> None:
        super().__init__(shape, SH.EqualsConstraintComponent)
        self.predicates = predicates

    def evaluate(self, g: DataGraph, fv: FocusValues, depth: int) -> Outcome:
        results: list[Result] = []
        for p in self.predicates:
            for f, values in fv:
                mine = set(values)
                theirs = set(g.objects(f, p))
                for v in (mine - theirs) | (theirs - mine):
                    results.append(
                        self.shape.result(
                            f, self.component, v, f"Values differ from those of {term_text(p)}"
                        )
                    )
        return not results, results


class _Disjoint(_Constraint):
    __slots__ = ("predicates",)

    def __init__(self, shape: _Shape, predicates: set[Node]) -> None:
        super().__init__(shape, SH.DisjointConstraintComponent)
        self.predicates = predicates

    def evaluate(self, g: DataGraph, fv: FocusValues, depth: int) -> Outcome:
        results: list[Result] = []
        for p in self.predicates:
            for f, values in fv:
                for v in set(values) & set(g.objects(f, p)):
                    results.append(
                        self.shape.result(
                            f, self.component, v, f"Value is also a value of {term_text(p)}"
                        )
                    )
        return not results, results


class _LessThan(_Constraint):
    __slots__ = ("or_equal", "predicates")

    def __init__(self, shape: _Shape, predicates: set[Node], *, or_equal: bool) -> None:
        super().__init__(
            shape,
            SH.LessThanOrEqualsConstraintComponent if or_equal else SH.LessThanConstraintComponent,
        )
        self.predicates = predicates
        self.or_equal = or_equal

    @staticmethod
    def _comparable(t: Node) -> tuple[Any, bool]:
        if isinstance(t, BNode):
            raise ShaclRuntimeError("sh:lessThan cannot compare a blank node")
        if isinstance(t, URIRef):
            return str(t), True
        if isinstance(t, Literal) and isinstance(t.value, str):
            return t.value, True
        return t, False

    def evaluate(self, g: DataGraph, fv: FocusValues, depth: int) -> Outcome:
        results: list[Result] = []
        for p in self.predicates:
            for f, values in fv:
                others = set(g.objects(f, p))
                for v in set(values):
                    left, left_str = self._comparable(v)
                    for other in others:
                        right, right_str = self._comparable(other)
                        if left_str != right_str:
                            failed = True
                        elif self.or_equal:
                            failed = not left <= right
                        else:
                            failed = not left < right
                        if failed:
                            results.append(
                                self.shape.result(
                                    f,
                                    self.component,
                                    v,
                                    f"Value is not less than a value of {term_text(p)}",
                                )
                            )
        return not results, results


class _NodeRef(_Constraint):
    __slots__ = ("shapes",)

    def __init__(self, shape: _Shape, shapes: list[_Shape]) -> None:
        super().__init__(shape, SH.NodeConstraintComponent)
        self.shapes = shapes

    def evaluate(self, g: DataGraph, fv: FocusValues, depth: int) -> Outcome:
        results: list[Result] = []
        for target in self.shapes:
            for f, values in fv:
                for v in values:
                    # pySHACL fails on "not conforming or any result"; every
                    # compiled constraint has results exactly when it fails.
                    if not target.conforms(g, v, depth + 1):
                        results.append(
                            self.shape.result(
                                f,
                                self.component,
                                v,
                                f"Value does not conform to Shape {term_text(target.node)}",
                            )
                        )
        return not results, results


class _PropertyRef(_Constraint):
    __slots__ = ("shapes",)

    def __init__(self, shape: _Shape, shapes: list[_Shape]) -> None:
        super().__init__(shape, SH.PropertyConstraintComponent)
        self.shapes = shapes

    def evaluate(self, g: DataGraph, fv: FocusValues, depth: int) -> Outcome:
        conforms = True
        results: list[Result] = []
        for target in self.shapes:
            for _, values in fv:
                for v in values:
                    ok, found = target.validate(g, (v,), depth + 1)
                    conforms = conforms and ok
                    results.extend(found)
        return conforms, results


class _Logical(_Constraint):
    """sh:not / sh:and / sh:or / sh:xone: one pass per list (or per sh:not shape)."""

    __slots__ = ("groups", "kind")

    def __init__(self, shape: _Shape, kind: str, groups: list[list[_Shape]]) -> None:
        component = {
            "not": SH.NotConstraintComponent,
            "and": SH.AndConstraintComponent,
            "or": SH.OrConstraintComponent,
            "xone": SH.XoneConstraintComponent,
        }[kind]
        super().__init__(shape, component)
        self.kind = kind
        self.groups = groups

    def evaluate(self, g: DataGraph, fv: FocusValues, depth: int) -> Outcome:
        results: list[Result] = []
        kind = self.kind
        for group in self.groups:
            for f, values in fv:
                for v in values:
                    # Every member is evaluated, as pySHACL does (no short cut).
                    passed = sum(1 for member in group if member.conforms(g, v, depth + 1))
                    if kind == "not":
                        failed = passed > 0
                    elif kind == "and":
                        failed = passed < len(group)
                    elif kind == "or":
                        failed = passed == 0
                    else:
                        failed = passed != 1
                    if failed:
                        results.append(
                            self.shape.result(
                                f, self.component, v, f"Value does not satisfy sh:{kind}"
                            )
                        )
        return not results, results


class _Qualified(_Constraint):
    __slots__ = ("max_count", "min_count", "value_shapes")

    def __init__(
        self,
        shape: _Shape,
        value_shapes: list[tuple[_Shape, list[_Shape]]],
        min_count: int | None,
        max_count: int | None,
    ) -> None:
        super().__init__(shape, _QMIN)
        self.value_shapes = value_shapes
        self.min_count = min_count
        self.max_count = max_count

    def evaluate(self, g: DataGraph, fv: FocusValues, depth: int) -> Outcome:
        results: list[Result] = []
        for target, siblings in self.value_shapes:
            for f, values in fv:
                count = 0
                for v in values:
                    if not target.conforms(g, v, depth + 1):
                        continue
                    # Every sibling is evaluated, as pySHACL does.
                    in_sibling = [s.conforms(g, v, depth + 1) for s in siblings]
                    if not any(in_sibling):
                        count += 1
                if self.max_count is not None and count > self.max_count:
                    results.append(
                        self.shape.result(
                            f,
                            _QMAX,
                            None,
                            f"More than {self.max_count} values conform to the qualified shape",
                        )
                    )
                if self.min_count is not None and count < self.min_count:
                    results.append(
                        self.shape.result(
                            f,
                            _QMIN,
                            None,
                            f"Fewer than {self.min_count} values conform to the qualified shape",
                        )
                    )
        return not results, results


class _Closed(_Constraint):
    __slots__ = ("allowed",)

    def __init__(self, shape: _Shape, allowed: set[Node]) -> None:
        super().__init__(shape, SH.ClosedConstraintComponent)
        self.allowed = allowed

    def evaluate(self, g: DataGraph, fv: FocusValues, depth: int) -> Outcome:
        results: list[Result] = []
        for f, values in fv:
            for v in values:
                for p, o in g.predicate_objects(v):
                    if (p, o) in _ALWAYS_IGNORED or p in self.allowed:
                        continue
                    results.append(
                        self.shape.result(
                            f,
                            self.component,
                            o,
                            f"Node is closed; it cannot have a value for {term_text(p)}",
                            path=(p, term_text(p)),
                        )
                    )
        return not results, results


# --------------------------------------------------------------------------- #
# The compiler
# --------------------------------------------------------------------------- #


@dataclass
class _Declared:
    node: Node
    is_property: bool
    path: Node | None


def _discover(sg: Graph) -> dict[Node, _Declared]:
    """pySHACL's ``ShapesGraph._build_node_shape_cache``: which nodes are shapes."""
    defined_node = set(sg.subjects(RDF.type, SH.NodeShape))
    for s in defined_node:
        if values_of(sg, s, SH.path):
            raise ShapesError(f"{term_text(s)}: a sh:NodeShape cannot have sh:path")
    defined_prop = set(sg.subjects(RDF.type, SH.PropertyShape))
    out: dict[Node, _Declared] = {s: _Declared(s, False, None) for s in defined_node}
    for s in defined_prop:
        if s in defined_node:
            raise ShapesError(f"{term_text(s)}: both sh:NodeShape and sh:PropertyShape")
        out[s] = _Declared(s, True, _one(values_of(sg, s, SH.path), f"{term_text(s)} sh:path"))
    subject_shapes: set[Node] = set()
    for pred in (*_TARGET_PREDICATES, SH.property, SH.node):
        subject_shapes.update(s for s, _ in sg.subject_objects(pred))
    value_shapes: set[Node] = set()
    for pred in _SHAPE_VALUED:
        value_shapes.update(o for _, o in sg.subject_objects(pred))
    for pred in _SHAPE_LISTS:
        for _, lst in sg.subject_objects(pred):
            members = set(sg.items(lst))
            if not members:
                raise ShapesError(f"{pred}: the list of shapes is empty or not a list")
            value_shapes.update(members)
    for s in (*subject_shapes, *value_shapes):
        if s in out:
            continue
        paths = values_of(sg, s, SH.path)
        if len(paths) > 1:
            raise ShapesError(f"{term_text(s)}: a shape has at most one sh:path")
        out[s] = _Declared(s, bool(paths), next(iter(paths)) if paths else None)
    return out


class _Compiler:
    def __init__(self, sg: Graph) -> None:
        self.sg = sg
        self.declared = _discover(sg)
        self.compiled: dict[Node, _Shape] = {}
        self.reasons: dict[Node, list[str]] = {}
        self.refs: dict[Node, set[Node]] = {}
        implicit = set(sg.subjects(RDFS.subClassOf, RDFS.Class))
        # pySHACL adds owl:Class rdfs:subClassOf rdfs:Class to every shapes graph.
        self.implicit_types = {RDFS.Class, OWL.Class, *implicit}
        self.custom_components = any(
            not str(c).startswith(_SH) for c in self._constraint_components()
        )

    def _constraint_components(self) -> set[Node]:
        sg = self.sg
        found = set(sg.subjects(RDF.type, SH.ConstraintComponent))
        for sub in set(sg.subjects(RDFS.subClassOf, SH.ConstraintComponent)):
            found.update(sg.subjects(RDF.type, sub))
        return found

    # ---- support analysis ------------------------------------------------ #

    def analyse(self) -> None:
        sg = self.sg
        for node, decl in self.declared.items():
            reasons: list[str] = []
            refs: set[Node] = set()
            if self.custom_components:
                reasons.append("the shapes graph declares custom constraint components")
            for p in set(sg.predicates(node)):
                if (
                    str(p).startswith(_SH)
                    and p not in _PARAM_COMPONENT
                    and (p not in _SHAPE_ATTRIBUTES)
                ):
                    reasons.append(f"uses {p}")
            if len(values_of(sg, node, SH.severity)) > 1:
                reasons.append("several sh:severity values")
            if len(values_of(sg, node, SH.flags)) > 1:
                reasons.append("several sh:flags values")
            for lit in values_of(sg, node, SH.uniqueLang):
                if not (
                    isinstance(lit, Literal) and lit.datatype == XSD.boolean and str(lit) == "true"
                ):
                    reasons.append(f"sh:uniqueLang {term_text(lit)} (only true is mirrored)")
            if decl.path is not None:
                try:
                    compile_path(sg, decl.path)
                except Unsupported as exc:
                    reasons.append(f"path: {exc}")
            for pred in _SHAPE_VALUED:
                if pred == SH.qualifiedValueShape and not decl.is_property:
                    continue  # pySHACL ignores it on node shapes
                refs.update(values_of(sg, node, pred))
            for pred in _SHAPE_LISTS:
                for lst in values_of(sg, node, pred):
                    refs.update(sg.items(lst))
            if decl.is_property and values_of(sg, node, SH.qualifiedValueShape):
                refs.update(self._siblings(node, None))
            self.reasons[node] = reasons
            self.refs[node] = refs

    def _siblings(self, node: Node, own: Node | None) -> set[Node]:
        sg = self.sg
        out: set[Node] = set()
        for parent in set(sg.subjects(SH.property, node)):
            for s in set(sg.objects(parent, SH.property)):
                for q in set(sg.objects(s, SH.qualifiedValueShape)):
                    if q != own:
                        out.add(q)
        return out

    def bad_shapes(self) -> dict[Node, str]:
        """Shapes that must fall back: unsupported, recursive, or reaching one
        that is."""
        verdict: dict[Node, str | None] = {}
        on_stack: set[Node] = set()

        def visit(node: Node) -> str | None:
            if node in verdict:
                return verdict[node]
            if node in on_stack:
                return "recursive shapes"
            on_stack.add(node)
            reasons = self.reasons.get(node, [])
            why: str | None = "; ".join(reasons) if reasons else None
            for ref in sorted(self.refs.get(node, ()), key=str):
                if ref not in self.declared:
                    why = why or f"references {term_text(ref)}, which is not a shape"
                    continue
                sub = visit(ref)
                if sub is not None and why is None:
                    why = f"via {term_text(ref)}: {sub}"
            on_stack.discard(node)
            verdict[node] = why
            return why

        for node in self.declared:
            visit(node)
        return {n: w for n, w in verdict.items() if w is not None}

    # ---- building -------------------------------------------------------- #

    def shape(self, node: Node) -> _Shape:
        done = self.compiled.get(node)
        if done is not None:
            return done
        decl = self.declared.get(node)
        if decl is None:
            raise ShapesError(f"{term_text(node)} is referenced as a shape but is not one")
        sg = self.sg
        shape = _Shape(node)
        self.compiled[node] = shape
        shape.is_property = decl.is_property
        if decl.path is not None:
            shape.path_node = decl.path
            shape.path_str = path_text(sg, decl.path)
            shape.path_steps = path_steps(sg, decl.path)
            shape.path_fn = compile_path(sg, decl.path)
        deactivated = values_of(sg, node, SH.deactivated)
        if len(deactivated) > 1:
            raise ShapesError(f"{term_text(node)}: several sh:deactivated values")
        if deactivated:
            d = next(iter(deactivated))
            if not isinstance(d, Literal):
                raise ShapesError(f"{term_text(node)}: sh:deactivated must be a literal")
            shape.deactivated = bool(d.value)
        severities = values_of(sg, node, SH.severity)
        if severities:
            shape.severity = next(iter(severities))
        messages = values_of(sg, node, SH.message)
        shape.has_message = bool(messages)
        shape.messages = tuple(sorted(str(m) for m in messages))
        shape.target_nodes = tuple(_i(t) for t in sg.objects(node, SH.targetNode))
        classes = dict.fromkeys(_i(t) for t in sg.objects(node, SH.targetClass))
        if any(t in self.implicit_types for t in sg.objects(node, RDF.type)):
            classes[_i(node)] = None
        shape.target_classes = tuple(classes)
        shape.target_subjects_of = tuple(_i(t) for t in sg.objects(node, SH.targetSubjectsOf))
        shape.target_objects_of = tuple(_i(t) for t in sg.objects(node, SH.targetObjectsOf))
        seen: set[str] = set()
        for p in list(sg.predicates(node)):
            name = _PARAM_COMPONENT.get(p)  # type: ignore[call-overload]
            if name is None or name in seen:
                continue
            seen.add(name)
            built = self._constraint(shape, name)
            if built is not None:
                shape.constraints.append(built)
        return shape

    def _constraint(self, shape: _Shape, name: str) -> _Constraint | None:
        sg, node = self.sg, shape.node
        where = term_text(node)

        def values(pred: URIRef) -> set[Node]:
            return {_i(v) for v in values_of(sg, node, pred)}

        def property_only(what: str) -> None:
            if not shape.is_property:
                raise ShapesError(f"{where}: {what} is only allowed on property shapes")

        if name in ("minCount", "maxCount"):
            lit = _one(values(SH[name]), f"{where} sh:{name}")
            property_only(f"sh:{name}")
            if not (isinstance(lit, Literal) and lit.datatype == XSD.integer):
                raise ShapesError(f"{where}: sh:{name} must be an xsd:integer literal")
            n = int(lit.value)
            if n < 0:
                raise ShapesError(f"{where}: sh:{name} must be >= 0")
            return _MinCount(shape, n) if name == "minCount" else _MaxCount(shape, n)
        if name == "class":
            return _Class(shape, list(values(SH["class"])))
        if name == "datatype":
            rule = _one(values(SH.datatype), f"{where} sh:datatype")
            return _PerValue(
                shape,
                SH.DatatypeConstraintComponent,
                f"Value is not Literal with datatype {term_text(rule)}",
                datatype(rule),
            )
        if name == "nodeKind":
            rule = _one(values(SH.nodeKind), f"{where} sh:nodeKind")
            return _PerValue(
                shape,
                SH.NodeKindConstraintComponent,
                f"Value is not of Node Kind {term_text(rule)}",
                node_kind(rule),
            )
        if name in ("minExclusive", "minInclusive", "maxExclusive", "maxInclusive"):
            bounds = list(values(SH[name]))
            if not all(isinstance(b, Literal) for b in bounds):
                raise ShapesError(f"{where}: sh:{name} must be a literal")
            fn, symbol = RANGES[name]
            component = URIRef(f"{SH}{name[0].upper()}{name[1:]}ConstraintComponent")
            return _Range(
                shape, component, [b for b in bounds if isinstance(b, Literal)], fn, symbol
            )
        if name in ("minLength", "maxLength"):
            lit = _one(values(SH[name]), f"{where} sh:{name}")
            if (
                not isinstance(lit, Literal)
                or getattr(lit, "ill_typed", False)
                or lit.datatype not in _WHOLE_INTEGERS
                or lit.datatype in (XSD.negativeInteger, XSD.nonPositiveInteger)
                or lit.value < 0
            ):
                raise ShapesError(f"{where}: sh:{name} must be a non-negative integer")
            n, is_min = int(lit.value), name == "minLength"
            return _PerValue(
                shape,
                SH.MinLengthConstraintComponent if is_min else SH.MaxLengthConstraintComponent,
                f"String length not {'>=' if is_min else '<='} {n}",
                length(n, is_min=is_min),
            )
        if name == "pattern":
            return _Pattern(shape, compile_patterns(sg, node))
        if name == "languageIn":
            lst = _one(values(SH.languageIn), f"{where} sh:languageIn")
            languages: set[str] = set()
            for item in sg.items(lst):
                if not isinstance(item, Literal) or not isinstance(item.value, str):
                    raise ShapesError(f"{where}: sh:languageIn members must be strings")
                languages.add(item.value.lower())
            return _PerValue(
                shape,
                SH.LanguageInConstraintComponent,
                f"String language is not in {sorted(languages)}",
                language_in(languages),
            )
        if name == "uniqueLang":
            lit = _one(values(SH.uniqueLang), f"{where} sh:uniqueLang")
            property_only("sh:uniqueLang")
            if not isinstance(lit, Literal) or not isinstance(lit.value, bool):
                raise ShapesError(f"{where}: sh:uniqueLang must be a boolean")
            return _UniqueLang(shape)
        if name == "in":
            lst = _one(values(SH["in"]), f"{where} sh:in")
            return _PerValue(
                shape,
                SH.InConstraintComponent,
                "Value is not in the list of allowed values",
                member_of({_i(m) for m in sg.items(lst)}),
            )
        if name == "hasValue":
            return _HasValue(shape, values(SH.hasValue))
        if name == "equals":
            return _Equals(shape, values(SH.equals))
        if name == "disjoint":
            return _Disjoint(shape, values(SH.disjoint))
        if name in ("lessThan", "lessThanOrEquals"):
            preds = values(SH[name])
            property_only(f"sh:{name}")
            if not all(isinstance(p, URIRef) for p in preds):
                raise ShapesError(f"{where}: sh:{name} must be an IRI")
            return _LessThan(shape, preds, or_equal=name == "lessThanOrEquals")
        if name == "node":
            targets = [self.shape(n) for n in values(SH.node)]
            if any(t.is_property for t in targets):
                raise ShapesError(f"{where}: sh:node must name a node shape")
            return _NodeRef(shape, targets)
        if name == "property":
            targets = [self.shape(n) for n in values(SH.property)]
            if not all(t.is_property for t in targets):
                raise ShapesError(f"{where}: sh:property must name a property shape")
            return _PropertyRef(shape, targets)
        if name == "not":
            return _Logical(shape, "not", [[self.shape(n)] for n in values(SH["not"])])
        if name in ("and", "or", "xone"):
            groups: list[list[_Shape]] = []
            for lst in values(SH[name]):
                # pySHACL: a set for sh:and and sh:or, a list (duplicates count) for sh:xone.
                members = list(sg.items(lst)) if name == "xone" else list(set(sg.items(lst)))
                groups.append([self.shape(m) for m in members])
            return _Logical(shape, name, groups)
        if name == "qualified":
            return self._qualified(shape)
        if name == "closed":
            return self._closed(shape)
        raise ShapesError(f"{where}: no compiler for {name}")  # pragma: no cover

    def _qualified(self, shape: _Shape) -> _Qualified | None:
        if not shape.is_property:
            return None  # pySHACL warns and ignores it on node shapes
        sg, node, where = self.sg, shape.node, term_text(shape.node)
        value_shapes = values_of(sg, node, SH.qualifiedValueShape)
        if not value_shapes:
            raise ShapesError(f"{where}: sh:qualifiedValueShape missing")

        def count(pred: URIRef) -> int | None:
            found = values_of(sg, node, pred)
            if not found:
                return None
            lit = _one(found, f"{where} {pred}")
            if not isinstance(lit, Literal) or not isinstance(lit.value, int):
                raise ShapesError(f"{where}: {pred} must be an integer literal")
            return int(lit.value)

        min_count, max_count = count(SH.qualifiedMinCount), count(SH.qualifiedMaxCount)
        if min_count is None and max_count is None:
            raise ShapesError(f"{where}: a qualified shape needs a min or max count")
        disjoint = any(
            isinstance(d, Literal) and isinstance(d.value, bool) and d.value
            for d in values_of(sg, node, SH.qualifiedValueShapesDisjoint)
        )
        pairs: list[tuple[_Shape, list[_Shape]]] = []
        for vs in value_shapes:
            siblings = (
                [self.shape(s) for s in self._siblings(node, vs) if s in self.declared]
                if disjoint
                else []
            )
            pairs.append((self.shape(vs), siblings))
        return _Qualified(shape, pairs, min_count, max_count)

    def _closed(self, shape: _Shape) -> _Closed | None:
        sg, node, where = self.sg, shape.node, term_text(shape.node)
        closed = list(sg.objects(node, SH.closed))
        ignored = list(sg.objects(node, SH.ignoredProperties))
        if len(closed) != 1:
            raise ShapesError(f"{where}: sh:closed needs exactly one value")
        if not isinstance(closed[0], Literal):
            raise ShapesError(f"{where}: sh:closed must be a boolean literal")
        allowed: set[Node] = set()
        for lst in ignored:
            allowed.update(_i(m) for m in sg.items(lst))
        for ps in sg.objects(node, SH.property):
            decl = self.declared.get(ps)
            if decl is None or not decl.is_property or decl.path is None:
                raise ShapesError(f"{where}: sh:property must name a property shape")
            allowed.add(_i(decl.path))
        if not bool(closed[0].value):
            return None
        return _Closed(shape, allowed)


class CompiledShapes:
    """A shapes graph compiled once; ``validate`` is safe to call from any thread."""

    __slots__ = ("_fallback_graph", "_top", "fallback", "shape_count")

    def __init__(
        self,
        top: list[_Shape],
        fallback: Mapping[Node, str],
        fallback_graph: Graph | None,
        shape_count: int,
    ) -> None:
        self._top = top
        # Top-level shapes pySHACL evaluates, with the reason.
        self.fallback = dict(fallback)
        self._fallback_graph = fallback_graph
        self.shape_count = shape_count

    @classmethod
    def compile(cls, shapes: Graph) -> CompiledShapes:
        """Compile ``shapes`` (not modified). Raises ``ShapesError`` for a
        shapes graph pySHACL would refuse."""
        comp = _Compiler(shapes)
        comp.analyse()
        bad = comp.bad_shapes()
        top: list[_Shape] = []
        fallback: dict[Node, str] = {}
        for node in comp.declared:
            has_targets = any(
                True for p in _TARGET_PREDICATES for _ in shapes.objects(node, p)
            ) or any(t in comp.implicit_types for t in shapes.objects(node, RDF.type))
            if node in bad:
                if has_targets:
                    fallback[node] = bad[node]
                continue
            # Every well-formed shape is compiled, so a broken one fails the load.
            compiled = comp.shape(node)
            if has_targets:
                top.append(compiled)
        fallback_graph: Graph | None = None
        if fallback:
            fallback_graph = Graph()
            fallback_graph += shapes
            for s in top:
                for p in _TARGET_PREDICATES:
                    fallback_graph.remove((s.node, p, None))
                for t in comp.implicit_types:
                    fallback_graph.remove((s.node, RDF.type, t))
        for shape in comp.compiled.values():
            shape.finish()
        return cls(top, fallback, fallback_graph, len(comp.declared))

    @property
    def fully_compiled(self) -> bool:
        return not self.fallback

    @property
    def empty(self) -> bool:
        """No shape has targets: every data graph conforms."""
        return not self._top and not self.fallback

    def validate(self, data: DataGraph, rdf_graph: Callable[[], Graph] | None = None) -> Validation:
        """Validate ``data``; ``rdf_graph`` builds the same data as an rdflib
        graph for the fallback (default: from ``data``)."""
        conforms = True
        results: list[Result] = []
        try:
            for shape in self._top:
                ok, found = shape.validate(data, shape.focus_nodes(data))
                conforms = conforms and ok
                results.extend(found)
        except (TypeError, ArithmeticError) as exc:
            # Where pySHACL's own comparison raises (incomparable literals).
            raise ShaclRuntimeError(f"a check could not be evaluated: {exc}") from exc
        if self._fallback_graph is None:
            return Validation(conforms, results)
        graph = rdf_graph() if rdf_graph is not None else data.to_rdflib()
        fallback_ok, report = plain_validate(graph, self._fallback_graph, allow_warnings=False)
        fallback_results, _ = report_results(report)
        return Validation(
            conforms and fallback_ok,
            results + fallback_results,
            tuple(self.fallback),
        )
