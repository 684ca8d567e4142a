"""The sizes of ``[limits]`` are checked at decode: each over-limit part of an
observation is a 422 field error naming its path, and at the limit it passes."""

from __future__ import annotations

import json

import pytest

from knhkd.config import LimitsConfig, build
from knhkd.monitor.decode import DecodeFailed, decode_body, decode_detect

SMALL = LimitsConfig(
    value_max_string_length=8, value_max_members=3, metadata_max_entries=2, rdf_max_length=16
)
RDF_OK = {"format": "turtle", "data": "<a> <b> <c> ."}


def body(**fields: object) -> bytes:
    doc = {"event_type": "a.b", "sector": "generic", "value": None, "metadata": {}, **fields}
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"value": "x" * 9}, "$.value"),
        ({"value": {"k": ["ok", "y" * 9]}}, "$.value[...][1]"),
        ({"value": {"k" * 9: 1}}, "$.value"),
        ({"value": [1, 2, 3, 4]}, "$.value"),
        ({"value": {"a": {"b": 1, "c": 2, "d": 3, "e": 4}}}, "$.value[...]"),
        ({"metadata": {"a": "1", "b": "2", "c": "3"}}, "$.metadata"),
        ({"rdf": {"format": "turtle", "data": "<a> <b> <c> . # 17"}}, "$.rdf.data"),
    ],
)
def test_over_a_limit_is_422_naming_the_field(fields: dict[str, object], field: str) -> None:
    with pytest.raises(DecodeFailed) as info:
        decode_body(body(**fields), "application/json", max_items=10, limits=SMALL)
    assert info.value.status == 422
    assert [e.field for e in info.value.errors] == [field]
    # The same in a batch, named with the item's index, and by /patterns/detect.
    batch = b"[" + body() + b"," + body(**fields) + b"]"
    for decode in (
        lambda: decode_body(batch, "application/json", max_items=10, limits=SMALL),
        lambda: decode_detect(batch, SMALL),
    ):
        with pytest.raises(DecodeFailed) as info:
            decode()
        assert [(e.index, e.field) for e in info.value.errors] == [(1, field)]


def test_at_the_limits_is_accepted() -> None:
    doc = body(
        value={"k" * 8: ["x" * 8, 1, 2]},
        metadata={"a": "1", "b": "2"},
        rdf={"format": "turtle", "data": "<a> <b> <c> . #1"},
    )
    assert decode_body(doc, "application/json", max_items=1, limits=SMALL).items[0].value


def test_limits_are_configuration_with_documented_defaults() -> None:
    cfg = build({"limits": {"value_max_members": 5}}, env={})
    assert cfg.limits.value_max_members == 5
    assert build({}, env={}).limits == LimitsConfig()
    with pytest.raises(Exception, match="rdf_max_length"):
        build({"limits": {"rdf_max_length": 65537}}, env={})
