"""The RDF view of an observation: one deterministic mapping from JSON to triples.

This is what a sector's shapes (``conf/shapes/observations/<sector>.ttl``) see
when an observation arrives. For the item at ``index`` in a request, with
``S = <urn:knhk:obs:pending:{index}>`` (ids are assigned at commit, so the
subject is a per-request placeholder; the index is also what an error names):

    S  rdf:type        knhk:Observation
    S  rdf:type        <urn:knhk:event:{event_type}>     the event type as a class
    S  knhk:eventType  "{event_type}"
    S  knhk:sector     knhk:{sector}
    S  knhk:value      V(value)          absent when value is null
    S  km:{key}        "{metadata value}"              one per metadata entry
    S  knhk:eventTime  "{event_time}"^^xsd:dateTime    when given

with ``knhk: <urn:knhk:ontology#>``, ``kv: <urn:knhk:value#>`` and
``km: <urn:knhk:meta#>``. ``V`` maps JSON values to RDF terms:

- string: a plain literal (``xsd:string``);
- integer: ``xsd:integer``; a non-integral number: ``xsd:decimal`` written in
  positional notation, shortest round trip (``1e-7`` -> ``"0.0000001"``,
  ``2.0`` -> ``"2.0"``); a number outside the double range never gets here
  (the decoder refuses it);
- ``true``/``false``: ``xsd:boolean``;
- object: a blank node ``_:o{index}b{n}`` (``n`` counts objects depth first, in
  key order as received) with one ``kv:{key}`` triple per member whose value is
  not null;
- array: one value per element, for the same subject and predicate, nested
  arrays flattened: ``{"tags": ["a", "b"]}`` is ``_:b kv:tags "a", "b"``. RDF is
  a set of triples, so array order and repeated equal scalars are not visible
  to shapes (an object element is always its own blank node);
- null: no triple.

Keys become IRIs by percent-encoding every character outside
``[A-Za-z0-9._~-]`` as UTF-8 (RFC 3986 unreserved characters stay), so every
key maps to exactly one predicate and back: ``value.amount`` is
``kv:amount``, metadata ``patient_id`` is ``km:patient_id``, a key ``"a b"``
is ``<urn:knhk:value#a%20b>``.

Guarantees: the triples are a function of the observation and the index only;
literals are built exactly as ``rdflib.Literal(lexical, datatype=...)`` builds
them (same lexical form, datatype, value; checked by
tests/unit/test_observation_rdf.py), so pySHACL and the compiled validator see
identical terms. ``json_paths`` gives, for each node of the view, the JSON path
of the member it came from (``$``, ``$.value``, ``$.value.items[1]``), which
is how a violation is reported against a field.

Must never: read a clock, look anything up outside the observation, or give
two different JSON keys the same predicate.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote, unquote

from rdflib import BNode, Literal, URIRef
from rdflib.namespace import RDF, XSD
from rdflib.term import Node

from knhkd.knowledge.shacl import DataGraph, intern_iri, interned
from knhkd.model import SECTORS, ObservationIn

KNHK_NS = "urn:knhk:ontology#"
VALUE_NS = "urn:knhk:value#"
META_NS = "urn:knhk:meta#"
EVENT_NS = "urn:knhk:event:"
SUBJECT_PREFIX = "urn:knhk:obs:pending:"

# Interned (shacl.intern_iri): the compiled shapes hold the same objects,
# which keeps their index lookups off rdflib's Python-level __eq__.
OBSERVATION = intern_iri(URIRef(KNHK_NS + "Observation"))
EVENT_TYPE = intern_iri(URIRef(KNHK_NS + "eventType"))
SECTOR = intern_iri(URIRef(KNHK_NS + "sector"))
VALUE = intern_iri(URIRef(KNHK_NS + "value"))
EVENT_TIME = intern_iri(URIRef(KNHK_NS + "eventTime"))
SECTOR_IRIS: dict[str, URIRef] = {s: intern_iri(URIRef(KNHK_NS + s)) for s in SECTORS}

Triple = tuple[Node, Node, Node]

# Predicates and subjects recur from request to request: build each URIRef
# once. Bounded, so hostile keys cannot grow the process without limit.
_CACHE_LIMIT = 8192
_value_preds: dict[str, URIRef] = {}
_meta_preds: dict[str, URIRef] = {}
_event_classes: dict[str, URIRef] = {}
_subjects: list[URIRef] = [URIRef(f"{SUBJECT_PREFIX}{i}") for i in range(1024)]
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _cached(cache: dict[str, URIRef], prefix: str, key: str, safe: str = "") -> URIRef:
    iri = cache.get(key)
    if iri is None:
        text = prefix + quote(key, safe=safe)
        iri = interned(text) or URIRef(text)
        if len(cache) < _CACHE_LIMIT:
            cache[key] = iri
    return iri


def value_predicate(key: str) -> URIRef:
    """``kv:{key}``: the predicate of a member of a JSON object in ``value``."""
    return _cached(_value_preds, VALUE_NS, key)


def meta_predicate(key: str) -> URIRef:
    """``km:{key}``: the predicate of a metadata entry."""
    return _cached(_meta_preds, META_NS, key)


def event_class(event_type: str) -> URIRef:
    """``<urn:knhk:event:{event_type}>``: the class of every observation of that type."""
    return _cached(_event_classes, EVENT_NS, event_type, safe=":/")


def subject_of(index: int) -> URIRef:
    """The placeholder subject of the item at ``index`` in its request."""
    return _subjects[index] if index < len(_subjects) else URIRef(f"{SUBJECT_PREFIX}{index}")


def key_of(predicate: Node) -> tuple[str, str] | None:
    """The inverse of ``value_predicate``/``meta_predicate``: ("value"|"meta", key)."""
    if isinstance(predicate, URIRef):
        text = str(predicate)
        if text.startswith(VALUE_NS):
            return "value", unquote(text[len(VALUE_NS) :])
        if text.startswith(META_NS):
            return "meta", unquote(text[len(META_NS) :])
    return None


# --------------------------------------------------------------------------- #
# Literals, built as rdflib builds them but without re-parsing what we know
# --------------------------------------------------------------------------- #


def _typed(lexical: str, datatype: URIRef, value: Any) -> Literal:
    # rdflib.Literal(lexical, datatype=dt) parses the lexical form back into a
    # value (~5-15 µs); here the value is already known. The four slots are
    # exactly those the constructor sets (rdflib 7.6; pinned by
    # tests/unit/test_observation_rdf.py against the constructor).
    lit = str.__new__(Literal, lexical)
    lit._language = None
    lit._datatype = datatype
    lit._value = value
    lit._ill_typed = False
    return lit


def string_literal(text: str) -> Literal:
    lit = str.__new__(Literal, text)
    lit._language = None
    lit._datatype = None
    lit._value = text
    lit._ill_typed = None
    return lit


# rdflib's namespace attributes cost ~1.7 µs per access: bind them once.
_RDF_TYPE = intern_iri(RDF.type)
_XSD_INTEGER = intern_iri(XSD.integer)
_XSD_DECIMAL = intern_iri(XSD.decimal)
_XSD_DATETIME = intern_iri(XSD.dateTime)
_TRUE = Literal("true", datatype=XSD.boolean)
_FALSE = Literal("false", datatype=XSD.boolean)


def decimal_lexical(x: float) -> str:
    """A finite float in xsd:decimal positional notation, shortest round trip."""
    text = format(Decimal(repr(x)), "f")
    return text if "." in text else text + ".0"


def scalar_literal(x: object) -> Literal:
    """The literal of a JSON scalar (str, int, float, bool)."""
    if isinstance(x, str):
        return string_literal(x)
    if isinstance(x, bool):
        return _TRUE if x else _FALSE
    if isinstance(x, int):
        return _typed(str(x), _XSD_INTEGER, x)
    if isinstance(x, float):
        if not math.isfinite(x):
            raise ValueError(f"{x} has no xsd:decimal form")
        lexical = decimal_lexical(x)
        return _typed(lexical, _XSD_DECIMAL, Decimal(lexical))
    raise TypeError(f"not a JSON scalar: {type(x).__name__}")


def datetime_literal(t: datetime) -> Literal:
    return _typed(t.isoformat(), _XSD_DATETIME, t)


# --------------------------------------------------------------------------- #
# The view
# --------------------------------------------------------------------------- #


class _Builder:
    """Builds the subject -> predicate -> objects index of the view directly:
    JSON object keys are distinct and map to distinct predicates, so only
    arrays need de-duplication (and the hashing it costs)."""

    __slots__ = ("count", "index", "paths", "spo")

    def __init__(
        self,
        index: int,
        spo: dict[Node, dict[Node, Collection[Node]]],
        paths: dict[Node, str] | None,
    ) -> None:
        self.index = index
        self.spo = spo
        self.paths = paths
        self.count = 0

    def objects(self, x: Any, path: str) -> tuple[Node, ...]:
        """The RDF objects JSON value ``x`` contributes (none for null)."""
        if x is None:
            return ()
        kind = type(x)
        if kind is str:
            return (string_literal(x),)
        if kind is int:
            return (_typed(str(x), _XSD_INTEGER, x),)
        if isinstance(x, dict):
            node = BNode(f"o{self.index}b{self.count}")
            self.count += 1
            paths = self.paths
            if paths is not None:
                paths[node] = path
            po: dict[Node, Collection[Node]] = {}
            for k, v in x.items():
                objs = self.objects(v, _member(path, k) if paths is not None else "")
                if objs:
                    po[value_predicate(k)] = objs
            if po:
                self.spo[node] = po
            return (node,)
        if isinstance(x, list):
            found: list[Node] = []
            for i, v in enumerate(x):
                found.extend(self.objects(v, f"{path}[{i}]" if self.paths is not None else ""))
            return tuple(dict.fromkeys(found)) if len(found) > 1 else tuple(found)
        return (scalar_literal(x),)


def _member(path: str, key: str) -> str:
    if _IDENT.fullmatch(key):
        return f"{path}.{key}"
    escaped = key.replace("\\", "\\\\").replace('"', '\\"')
    return f'{path}["{escaped}"]'


def observation_graph(
    item: ObservationIn, index: int, *, paths: dict[Node, str] | None = None
) -> DataGraph:
    """The RDF view of ``item`` at ``index`` (see the module docstring), indexed.

    When ``paths`` is given it receives the JSON path of the subject and of
    every blank node."""
    s = subject_of(index)
    po: dict[Node, Collection[Node]] = {
        _RDF_TYPE: (OBSERVATION, event_class(item.event_type)),
        EVENT_TYPE: (string_literal(item.event_type),),
        SECTOR: (SECTOR_IRIS[item.sector],),
    }
    spo: dict[Node, dict[Node, Collection[Node]]] = {s: po}
    if paths is not None:
        paths[s] = "$"
    if item.value is not None:
        objs = _Builder(index, spo, paths).objects(item.value, "$.value")
        if objs:
            po[VALUE] = objs
    for k, v in item.metadata.items():
        po[meta_predicate(k)] = (string_literal(v),)
    if item.event_time is not None:
        po[EVENT_TIME] = (datetime_literal(item.event_time),)
    return DataGraph(spo)


def observation_triples(
    item: ObservationIn, index: int, *, paths: dict[Node, str] | None = None
) -> list[Triple]:
    """The RDF view of ``item`` at ``index`` as a list of triples."""
    return list(observation_graph(item, index, paths=paths).triples())


def field_of(paths: dict[Node, str], focus: Node, steps: Iterable[Node]) -> str:
    """The JSON path a result points at: the focus node's path, extended by
    the predicates of a simple (predicate or sequence) result path."""
    base = paths.get(focus)
    if base is None:
        return "$"
    for step in steps:
        if step == VALUE and base == "$":
            base = "$.value"
            continue
        if step == EVENT_TYPE and base == "$":
            return "$.event_type"
        if step == SECTOR and base == "$":
            return "$.sector"
        if step == EVENT_TIME and base == "$":
            return "$.event_time"
        known = key_of(step)
        if known is None:
            break
        kind, key = known
        if kind == "meta":
            if base != "$":
                break
            base = _member("$.metadata", key)
        else:
            base = _member(base, key)
    return base
