"""One implementation of each SHACL Core constraint check, with pySHACL 0.40's
pass conditions.

The compiled validator (``compiler``) and the incremental certifier
(``incremental``) both judge value nodes with these functions, so the two
cannot drift apart: a check is fixed here, once, for both.

Guarantees:
- Each check answers exactly as pySHACL 0.40's component does for one value
  node (or, for the counting components, one value set), including its
  departures from the SHACL text: ``sh:pattern`` honours only the ``i`` and
  ``m`` flags and decides by ``search``; ``sh:languageIn`` matches a language
  tag's primary subtag; value ranges compare through pySHACL's
  ``compare_literal`` (rdflib's ordering; strings only with strings); a zero
  ``sh:minLength`` passes even a blank node.
- The per-value factories (``datatype``, ``node_kind``, ``length``,
  ``language_in``, ``member_of``, ``in_range``, ``matches``) decide what
  depends only on the parameter once, and return a ``ValueCheck``; none of
  them raises on any value node.
- ``instance_of`` reads the graph only through ``objects(s, p)``, so it works
  on the compiled validator's ``DataGraph`` and on a ΔΣ's ``DeltaView`` alike.

Must never: build results or messages (the callers word them), read the
shapes graph other than in ``compile_patterns``, or import the compiler, the
certifier or pySHACL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from datetime import date, datetime, time
from decimal import Decimal
from typing import Protocol

from rdflib import BNode, Graph, Literal
from rdflib.namespace import RDF, RDFS, SH, XSD
from rdflib.term import Node

from knhkd.knowledge.shacl.errors import ShapesError
from knhkd.knowledge.shacl.terms import intern_iri, term_text, values_of

ValueCheck = Callable[[Node], bool]


class ReadsObjects(Protocol):
    """What ``instance_of`` needs of a graph."""

    def objects(self, s: Node, p: Node) -> Iterable[Node]: ...


# rdflib's namespace attributes cost ~1.7 µs per access: bind the hot ones once.
_TYPE = intern_iri(RDF.type)
_SUBCLASS = intern_iri(RDFS.subClassOf)
_LANGSTRING = RDF.langString
_XSD_STRING = XSD.string
_RDFS_LITERAL = RDFS.Literal
_RDFS_DATATYPE = RDFS.Datatype

_NUMERIC_TYPES = frozenset(
    intern_iri(XSD[n])
    for n in (
        "integer", "decimal", "double", "float", "byte", "int", "long", "negativeInteger",
        "nonNegativeInteger", "nonPositiveInteger", "positiveInteger", "short",
        "unsignedByte", "unsignedInt", "unsignedLong", "unsignedShort",
    )
)  # fmt: skip

# pySHACL's _assert_actual_datatype: the Python type rdflib gives a
# well-formed value of the datatype; other datatypes pass.
_PYTHON_TYPES: dict[Node, type | tuple[type, ...]] = {
    _XSD_STRING: (str, bytes),
    _LANGSTRING: (str, bytes),
    XSD.integer: int,
    XSD.float: float,
    XSD.decimal: Decimal,
    XSD.boolean: bool,
    XSD.date: date,
    XSD.time: time,
    XSD.dateTime: datetime,
}

_NODE_KINDS: dict[Node, tuple[bool, bool, bool]] = {
    # rule: (matches blank nodes, matches literals, matches IRIs)
    SH.BlankNode: (True, False, False),
    SH.IRI: (False, False, True),
    SH.Literal: (False, True, False),
    SH.BlankNodeOrIRI: (True, False, True),
    SH.BlankNodeOrLiteral: (True, True, False),
    SH.IRIOrLiteral: (False, True, True),
}

# The value-range components by parameter local name: which comparison
# outcomes pass (compare_literal's -1/0/1 of value against bound), and the
# operator pySHACL's messages name.
RANGES: dict[str, tuple[Callable[[int], bool], str]] = {
    "minExclusive": (lambda c: c > 0, ">"),
    "minInclusive": (lambda c: c >= 0, ">="),
    "maxExclusive": (lambda c: c < 0, "<"),
    "maxInclusive": (lambda c: c <= 0, "<="),
}


# --------------------------------------------------------------------------- #
# Literal helpers that mirror pySHACL exactly
# --------------------------------------------------------------------------- #


def compare_literal(l1: Literal, l2: Literal) -> int:
    """pySHACL's ``rdfutil.compare.compare_literal``, on rdflib's own operators."""
    if l1.eq(l2):
        return 0
    if l1.value.__class__ in (datetime, time):
        if l1.value == l2.value:
            return 0
        if l1.value > l2.value:
            return 1
    elif l1 > l2:
        return 1
    return -1


def string_of(v: Node) -> str:
    """pySHACL's ``value_node_to_string``."""
    if isinstance(v, Literal):
        if v.value is not None and v.datatype in (None, _LANGSTRING, _XSD_STRING):
            return str(v.value)
        return str(v)
    return str(v)


# --------------------------------------------------------------------------- #
# Value-node checks
# --------------------------------------------------------------------------- #


def datatype(rule: Node) -> ValueCheck:
    """sh:datatype (pySHACL's DatatypeConstraintComponent)."""
    expected = _PYTHON_TYPES.get(rule)
    is_literal = rule == _RDFS_LITERAL
    is_datatype = rule == _RDFS_DATATYPE
    is_string = rule == _XSD_STRING
    is_langstring = rule == _LANGSTRING

    def ok(v: Node) -> bool:
        if not isinstance(v, Literal):
            return False
        dt = v.datatype
        if dt is rule or dt == rule:
            if getattr(v, "ill_typed", None) is True:
                return False
            return expected is None or isinstance(v.value, expected)
        if is_literal:
            return True
        if is_datatype and dt:
            return True
        lang = v.language
        if is_string and dt is None and lang is None:
            return expected is None or isinstance(v.value, expected)
        if is_langstring and lang:
            return expected is None or isinstance(v.value, expected)
        return False

    return ok


def node_kind(rule: Node) -> ValueCheck:
    """sh:nodeKind; an unknown kind matches nothing."""
    blank, literal, iri = _NODE_KINDS.get(rule, (False, False, False))

    def ok(v: Node) -> bool:
        if isinstance(v, BNode):
            return blank
        if isinstance(v, Literal):
            return literal
        return iri

    return ok


def length(n: int, *, is_min: bool) -> ValueCheck:
    """sh:minLength / sh:maxLength: blank nodes fail, except against a zero minimum."""
    if is_min:
        if n == 0:
            return lambda v: True
        return lambda v: not isinstance(v, BNode) and len(string_of(v)) >= n
    return lambda v: not isinstance(v, BNode) and len(string_of(v)) <= n


def language_in(languages: Collection[str]) -> ValueCheck:
    """sh:languageIn, ``languages`` lower-cased; a tag passes on its primary subtag too."""
    wildcard = "*" in languages

    def ok(v: Node) -> bool:
        if not isinstance(v, Literal):
            return False
        lang = v.language
        if not lang:
            return False
        if wildcard:
            return True
        lower = str(lang).lower()
        return lower in languages or lower.split("-")[0] in languages

    return ok


def member_of(members: Collection[Node]) -> ValueCheck:
    """sh:in."""
    return members.__contains__


def in_range(bound: Literal, accept: Callable[[int], bool]) -> ValueCheck:
    """One bound of sh:min/maxInclusive/Exclusive (``accept`` from ``RANGES``):
    non-literals fail, strings compare only with strings, incomparable
    literals fail."""
    bound_is_string = isinstance(bound.value, str)
    bound_numeric = (
        bound.datatype in _NUMERIC_TYPES and not bound.ill_typed and bound.value is not None
    )
    other = bound.value

    def ok(v: Node) -> bool:
        if not isinstance(v, Literal):
            return False
        value = v.value
        if isinstance(value, str) != bound_is_string:
            return False
        try:
            if (
                bound_numeric
                and v.datatype in _NUMERIC_TYPES
                and not v.ill_typed
                and value is not None
            ):
                # rdflib's own fast path for two numeric literals, which is
                # what Literal.eq and Literal.__gt__ take in compare_literal.
                cmp = 0 if value == other else (1 if value > other else -1)
            else:
                cmp = compare_literal(v, bound)
            return accept(cmp)
        except (TypeError, NotImplementedError):
            return False

    return ok


def matches(regex: re.Pattern[str]) -> ValueCheck:
    """One sh:pattern: pySHACL tries match() then search(), so search() decides."""
    return lambda v: not isinstance(v, BNode) and regex.search(string_of(v)) is not None


def compile_patterns(sg: Graph, node: Node) -> list[tuple[re.Pattern[str], str]]:
    """The sh:pattern regexes of ``node`` with its sh:flags, as pySHACL's
    PatternConstraintComponent compiles them, each with its text for the
    message. Raises ``ShapesError`` for a pattern pySHACL cannot use."""
    patterns = list(sg.objects(node, SH.pattern))
    if not all(isinstance(p, Literal) for p in patterns):
        raise ShapesError(f"{term_text(node)}: sh:pattern must be a literal")
    flags_found = values_of(sg, node, SH.flags)
    re_flags = 0
    if flags_found:
        flags = next(iter(flags_found))
        text = str(flags.value if isinstance(flags, Literal) else flags).lower()
        # pySHACL honours only i and m.
        if "i" in text:
            re_flags |= re.I
        if "m" in text:
            re_flags |= re.M
    compiled: list[tuple[re.Pattern[str], str]] = []
    for p in patterns:
        assert isinstance(p, Literal)
        if p.value is not None and not isinstance(p.value, str):
            raise ShapesError(f"{term_text(node)}: sh:pattern must be a string")
        source = str(p.value) if p.value is not None and len(p.value) > 1 else str(p)
        try:
            compiled.append((re.compile(source, re_flags), str(p.value)))
        except re.error as exc:
            raise ShapesError(f"{term_text(node)}: bad sh:pattern {source!r}: {exc}") from None
    return compiled


# --------------------------------------------------------------------------- #
# Checks on a value node in its graph, or on a focus node's value set
# --------------------------------------------------------------------------- #


def instance_of(g: ReadsObjects, v: Node, cls: Node) -> bool:
    """sh:class: ``v`` is not a literal and one of its types is ``cls`` or a
    subclass of it (rdfs:subClassOf, transitively)."""
    if isinstance(v, Literal):
        return False
    for t in g.objects(v, _TYPE):
        if t == cls:
            return True
        seen = {t}
        stack = [t]
        while stack:
            for sup in g.objects(stack.pop(), _SUBCLASS):
                if sup == cls:
                    return True
                if sup not in seen:
                    seen.add(sup)
                    stack.append(sup)
    return False


def min_count_ok(values: Collection[Node], n: int) -> bool:
    """sh:minCount."""
    return len(values) >= n


def max_count_ok(values: Collection[Node], n: int) -> bool:
    """sh:maxCount."""
    return len(values) <= n


def has_value(values: Iterable[Node], required: Node) -> bool:
    """sh:hasValue."""
    return any(v == required for v in values)
