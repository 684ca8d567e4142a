"""The RDF view of an observation (knhkd/knowledge/observation_rdf.py): the
documented mapping, its determinism, and literals identical to rdflib's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import msgspec
import rdflib.namespace as rns
from hypothesis import given, settings
from hypothesis import strategies as st
from rdflib import BNode, Literal, URIRef
from rdflib.namespace import RDF

from knhkd.knowledge.observation_rdf import (
    datetime_literal,
    event_class,
    field_of,
    key_of,
    meta_predicate,
    observation_graph,
    observation_triples,
    scalar_literal,
    value_predicate,
)
from knhkd.model import ObservationIn

K = "urn:knhk:ontology#"
S0 = URIRef("urn:knhk:obs:pending:0")
S2 = URIRef("urn:knhk:obs:pending:2")


def _item(raw: bytes) -> ObservationIn:
    return msgspec.json.decode(raw, type=ObservationIn)


def test_the_documented_mapping() -> None:
    item = _item(
        b'{"event_type":"transaction.execute","sector":"finance",'
        b'"value":{"amount":50000,"fee":1.25,"tags":["a","b","a"],"ok":true,"none":null},'
        b'"metadata":{"currency":"EUR"},"event_time":"2024-05-01T12:00:00Z"}'
    )
    b = BNode("o2b0")
    assert set(observation_triples(item, 2)) == {
        (S2, RDF.type, URIRef(K + "Observation")),
        (S2, RDF.type, URIRef("urn:knhk:event:transaction.execute")),
        (S2, URIRef(K + "eventType"), Literal("transaction.execute")),
        (S2, URIRef(K + "sector"), URIRef(K + "finance")),
        (S2, URIRef(K + "value"), b),
        (b, URIRef("urn:knhk:value#amount"), Literal("50000", datatype=rns.XSD.integer)),
        (b, URIRef("urn:knhk:value#fee"), Literal("1.25", datatype=rns.XSD.decimal)),
        (b, URIRef("urn:knhk:value#tags"), Literal("a")),
        (b, URIRef("urn:knhk:value#tags"), Literal("b")),
        (b, URIRef("urn:knhk:value#ok"), Literal("true", datatype=rns.XSD.boolean)),
        (S2, URIRef("urn:knhk:meta#currency"), Literal("EUR")),
        (
            S2,
            URIRef(K + "eventTime"),
            Literal("2024-05-01T12:00:00+00:00", datatype=rns.XSD.dateTime),
        ),
    }


def test_scalars_nulls_arrays_and_nesting() -> None:
    v = URIRef(K + "value")
    assert not [t for t in observation_triples(_item(b'{"event_type":"e","sector":"generic"}'), 0)
                if t[1] == v]  # fmt: skip
    plain = observation_triples(_item(b'{"event_type":"e","sector":"generic","value":"x"}'), 0)
    assert (S0, v, Literal("x")) in plain
    nested = observation_triples(
        _item(b'{"event_type":"e","sector":"generic","value":[{"a":{"b":[1,[2,null]]}},{}]}'), 0
    )
    o0, o1, o2 = BNode("o0b0"), BNode("o0b1"), BNode("o0b2")
    a, bp = value_predicate("a"), value_predicate("b")
    assert {t for t in nested if t[0] != S0 or t[1] == v} == {
        (S0, v, o0),
        (o0, a, o1),
        (o1, bp, Literal(1)),
        (o1, bp, Literal(2)),
        (S0, v, o2),  # an empty object is still a node
    }


def test_deterministic() -> None:
    raw = (
        b'{"event_type":"e","sector":"logistics",'
        b'"value":{"x":[{"y":1},{"y":1}]},"metadata":{"k":"v"}}'
    )
    first = observation_triples(_item(raw), 7)
    for _ in range(3):
        assert observation_triples(_item(raw), 7) == first


@given(st.text(max_size=20), st.text(max_size=20))
def test_keys_map_to_distinct_predicates_and_back(k1: str, k2: str) -> None:
    assert key_of(value_predicate(k1)) == ("value", k1)
    assert key_of(meta_predicate(k1)) == ("meta", k1)
    assert (value_predicate(k1) == value_predicate(k2)) == (k1 == k2)
    assert value_predicate(k1) != meta_predicate(k1)


def test_event_types_are_classes() -> None:
    assert event_class("line.tick") == URIRef("urn:knhk:event:line.tick")
    assert event_class("a/b:c-d_e") == URIRef("urn:knhk:event:a/b:c-d_e")


def _same_literal(fast: Literal, slow: Literal) -> None:
    assert str(fast) == str(slow)
    assert fast.datatype == slow.datatype and fast.language == slow.language
    assert fast.value == slow.value and type(fast.value) is type(slow.value)
    assert bool(fast.ill_typed) == bool(slow.ill_typed)
    assert fast == slow and hash(fast) == hash(slow)


@settings(max_examples=300)
@given(
    st.one_of(
        st.integers(-(10**30), 10**30),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=30),
        st.booleans(),
    )
)
def test_literals_are_those_rdflib_builds(x: object) -> None:
    fast = scalar_literal(x)
    slow = Literal(x) if isinstance(x, str) else Literal(str(fast), datatype=fast.datatype)
    _same_literal(fast, slow)


@settings(max_examples=100)
@given(
    st.datetimes(
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=5))]
        )
    )
)
def test_event_time_literals_are_those_rdflib_builds(t: datetime) -> None:
    fast = datetime_literal(t)
    _same_literal(fast, Literal(str(fast), datatype=rns.XSD.dateTime))


def test_decimals_are_positional() -> None:
    assert str(scalar_literal(1e-7)) == "0.0000001"
    assert str(scalar_literal(2.0)) == "2.0"
    assert str(scalar_literal(1e20)) == "100000000000000000000.0"
    assert scalar_literal(0.1).value == Decimal("0.1")


def test_json_paths_of_results() -> None:
    item = _item(
        b'{"event_type":"e","sector":"finance","value":{"lines":[{"qty":1}],"a b":{"c":2}},'
        b'"metadata":{"currency":"eur"}}'
    )
    paths: dict = {}
    observation_graph(item, 0, paths=paths)
    assert paths[S0] == "$"
    assert paths[BNode("o0b0")] == "$.value"
    assert paths[BNode("o0b1")] == "$.value.lines[0]"
    assert paths[BNode("o0b2")] == '$.value["a b"]'
    v = URIRef(K + "value")
    assert field_of(paths, S0, (v, value_predicate("lines"))) == "$.value.lines"
    assert field_of(paths, BNode("o0b1"), (value_predicate("qty"),)) == "$.value.lines[0].qty"
    assert field_of(paths, S0, (meta_predicate("currency"),)) == "$.metadata.currency"
    assert field_of(paths, S0, (URIRef(K + "sector"),)) == "$.sector"
    assert field_of(paths, S0, ()) == "$"
    assert field_of(paths, URIRef("urn:elsewhere"), (v,)) == "$"
