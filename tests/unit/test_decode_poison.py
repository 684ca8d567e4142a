"""Values that cannot be stored are refused at decode time, never at commit.

Integers outside int64, non-finite numbers and nesting past MAX_VALUE_DEPTH
(including past msgspec's own recursion limit) are 422 field errors naming
``$.value`` and the item's index; proposals' ``estimated_ticks`` is int64.
"""

from __future__ import annotations

import math

import msgspec
import pytest

from knhkd.model import ProposalIn
from knhkd.monitor.decode import (
    INT64_MAX,
    INT64_MIN,
    MAX_VALUE_DEPTH,
    DecodeFailed,
    decode_body,
    decode_detect,
    split_array,
    value_problem,
)
from knhkd.plan.proposals import make_proposal

HEAD = b'{"event_type":"a.b","sector":"generic","metadata":{},"value":'
OK = HEAD + b"1}"


def obs(value: bytes) -> bytes:
    return HEAD + value + b"}"


def nested(n: int) -> bytes:
    return b"[" * n + b"]" * n


def refusal(body: bytes, ctype: str = "application/json") -> DecodeFailed:
    with pytest.raises(DecodeFailed) as info:
        decode_body(body, ctype, max_items=100)
    return info.value


@pytest.mark.parametrize("n", [INT64_MIN, INT64_MAX, 0, -1])
def test_int64_ends_are_accepted(n: int) -> None:
    assert decode_body(obs(str(n).encode()), "application/json", max_items=1).items[0].value == n


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (b"18446744073709551616", "$.value"),
        (b"-9223372036854775809", "$.value"),
        # uint64 would still pack as MessagePack, but not as int64.
        (b"9223372036854775808", "$.value"),
        (b"1" + b"0" * 400, "$.value"),
        (b'{"a":[1,{"b":9223372036854775808}]}', "$.value[...][1][...]"),
        (b"[0,1,-9223372036854775809]", "$.value[2]"),
    ],
)
def test_integers_outside_int64_are_refused(value: bytes, field: str) -> None:
    exc = refusal(obs(value))
    assert exc.status == 422
    assert [(e.field, e.index) for e in exc.errors] == [(field, None)]
    assert "out of range" in exc.errors[0].message


@pytest.mark.parametrize(
    ("value", "field"), [(b"1e999", "$.value"), (b"-1e999", "$.value"), (b"[1e999]", "$.value[0]")]
)
def test_json_numbers_beyond_float_are_refused(value: bytes, field: str) -> None:
    # msgspec refuses these itself; the answer is still a 422 on the field.
    exc = refusal(obs(value))
    assert exc.status == 422 and exc.errors[0].field == field


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_floats_are_refused_when_built_in_python(bad: float) -> None:
    assert value_problem({"x": [1.5, bad]}) == ("$.value[...][1]", "number must be finite")
    assert value_problem(1.5e308) is None


def test_depth_bound_is_exact_for_arrays_and_objects() -> None:
    d = decode_body(obs(nested(MAX_VALUE_DEPTH)), "application/json", max_items=1)
    assert d.items[0].value is not None
    exc = refusal(obs(nested(MAX_VALUE_DEPTH + 1)))
    assert exc.status == 422
    assert exc.errors[0].field == "$.value" + "[0]" * MAX_VALUE_DEPTH
    assert "nested deeper than 32" in exc.errors[0].message
    objs = b'{"k":' * MAX_VALUE_DEPTH + b"1" + b"}" * MAX_VALUE_DEPTH
    decode_body(obs(objs), "application/json", max_items=1)
    deeper = b'{"k":' * (MAX_VALUE_DEPTH + 1) + b"1" + b"}" * (MAX_VALUE_DEPTH + 1)
    assert refusal(obs(deeper)).errors[0].message.startswith("nested deeper")


@pytest.mark.parametrize("depth", [500, 2000, 100_000])
def test_nesting_past_msgspecs_recursion_limit_is_a_field_error(depth: int) -> None:
    exc = refusal(obs(nested(depth)))
    assert exc.status == 422
    assert len(exc.errors) == 1 and exc.errors[0].index is None
    # Below msgspec's limit the path goes down to the first level too deep.
    assert exc.errors[0].field in ("$.value", "$.value" + "[0]" * MAX_VALUE_DEPTH)


def test_deep_items_in_an_array_are_named_by_index() -> None:
    # The array split itself hits msgspec's recursion limit here: every item
    # is still judged on its own, the good ones pass, the bad ones are named.
    body = b"[" + b",".join(
        [OK, obs(nested(2000)), OK, obs(b"1e999"), obs(b"20000000000000000000")]
    )
    body += b"]"
    exc = refusal(body)
    assert exc.status == 422
    assert [(e.index, e.field) for e in exc.errors] == [
        (1, "$.value"),
        (3, "$.value"),
        (4, "$.value"),
    ]


def test_deep_items_in_ndjson_are_named_by_index() -> None:
    body = OK + b"\n" + obs(nested(5000)) + b"\n" + obs(b"[18446744073709551616]") + b"\n"
    exc = refusal(body, "application/x-ndjson")
    assert [(e.index, e.field) for e in exc.errors] == [(1, "$.value"), (2, "$.value[0]")]


def test_deep_array_that_is_not_json_is_malformed() -> None:
    for body in (b"[" * 5000, b"[" + nested(5000) + b"] x", b"[" + b"[" * 5000 + b'"open'):
        assert refusal(body).status == 400


def test_value_check_is_iterative() -> None:
    deep: list[object] = []
    for _ in range(200_000):  # far past the interpreter's recursion limit
        deep = [deep]
    got = value_problem(deep)
    assert got is not None and got[1].startswith("nested deeper")


def test_split_array_respects_strings() -> None:
    items = [b'{"a":"],[{\\"\\\\"}', b' {"b":"\\\\"} ', b"[1,[2,3]]", b"4"]
    assert split_array(b" [" + b",".join(items) + b"] \n") == items
    assert split_array(b"[]") == []
    assert split_array(b"[1,]") == [b"1", b""]
    for bad in (b"{}", b"x[1]", b"[1] 2", b"[1", b'["a]'):
        assert split_array(bad) is None


def test_detect_applies_the_same_checks() -> None:
    assert decode_detect(b"") == [] and decode_detect(b" [] ") == []
    assert len(decode_detect(b"[" + OK + b"," + OK + b"]")) == 2
    for bad, field in (
        (obs(nested(2000)), "$.value"),
        (obs(b"18446744073709551616"), "$.value"),
        (obs(nested(MAX_VALUE_DEPTH + 1)), "$.value" + "[0]" * MAX_VALUE_DEPTH),
    ):
        with pytest.raises(DecodeFailed) as info:
            decode_detect(b"[" + OK + b"," + bad + b"]")
        assert info.value.status == 422
        assert [(e.index, e.field) for e in info.value.errors] == [(1, field)]
    with pytest.raises(DecodeFailed) as info:
        decode_detect(OK)
    assert info.value.status == 422
    for malformed in (b"{nope", b"[" * 3000):
        with pytest.raises(DecodeFailed) as info:
            decode_detect(malformed)
        assert info.value.status == 400
    with pytest.raises(DecodeFailed) as info:
        decode_detect(b'{"a":' * 3000)
    assert info.value.status == 422


PROPOSAL = b'{"sector":"generic","description":"d","delta":{"remove":[],"add":[]}'


def test_estimated_ticks_is_int64() -> None:
    dec = msgspec.json.Decoder(ProposalIn)
    for ticks in (2**63, 2**70):
        with pytest.raises(msgspec.ValidationError, match=r"\$\.estimated_ticks"):
            dec.decode(PROPOSAL + b',"estimated_ticks":' + str(ticks).encode() + b"}")
    p = dec.decode(PROPOSAL + b',"estimated_ticks":' + str(INT64_MAX).encode() + b"}")
    # The largest accepted value hashes (content_hash is MessagePack).
    assert len(make_proposal(p, "0" * 64, 1).id) == 64
