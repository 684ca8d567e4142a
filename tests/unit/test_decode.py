"""Producer input decoding: all-or-nothing, errors name index and field."""

from __future__ import annotations

import pytest

from knhkd.monitor.decode import DecodeFailed, decode_body

OK = (
    b'{"event_type":"transaction.execute","value":{"amount":50000},'
    b'"sector":"finance","metadata":{}}'
)


def test_single_object() -> None:
    d = decode_body(OK, "application/json", max_items=10)
    assert d.single and d.items[0].event_type == "transaction.execute"
    assert d.items[0].value == {"amount": 50000}


def test_array_and_ndjson_keep_order() -> None:
    arr = b"[" + OK + b"," + OK.replace(b"finance", b"logistics") + b"]"
    d = decode_body(arr, "application/json", max_items=10)
    assert not d.single and [i.sector for i in d.items] == ["finance", "logistics"]
    nd = OK + b"\n\n" + OK.replace(b"finance", b"healthcare") + b"\n"
    d = decode_body(nd, "application/x-ndjson", max_items=10)
    assert [i.sector for i in d.items] == ["finance", "healthcare"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, "$"),
        (b"", 400, None),
        (b'{"event_type":"x","sector":"mars"}', 422, "$.sector"),
        (b'{"event_type":7,"sector":"finance"}', 422, "$.event_type"),
        (b'{"event_type":"x","sector":"finance","metadata":{"k":1}}', 422, "$.metadata[...]"),
        (b'{"event_type":"x","sector":"finance","surprise":1}', 422, "$"),
        (b'{"event_type":"","sector":"finance"}', 422, "$.event_type"),
        (b"[]", 422, None),
    ],
)
def test_bad_single_bodies(body: bytes, status: int, field: str | None) -> None:
    with pytest.raises(DecodeFailed) as info:
        decode_body(body, "application/json", max_items=10)
    assert info.value.status == status
    if field is not None:
        assert info.value.errors[0].field == field


def test_batch_is_all_or_nothing_with_per_item_errors() -> None:
    body = b"[" + OK + b',{"event_type":"x","sector":"nowhere"},' + OK + b',{"sector":"finance"}]'
    with pytest.raises(DecodeFailed) as info:
        decode_body(body, "application/json", max_items=10)
    assert info.value.status == 422
    assert [(e.index, e.field) for e in info.value.errors] == [(1, "$.sector"), (3, "$")]
    assert "none was stored" in info.value.detail


def test_item_limit() -> None:
    body = b"[" + b",".join([OK] * 5) + b"]"
    with pytest.raises(DecodeFailed) as info:
        decode_body(body, "application/json", max_items=4)
    assert info.value.status == 413
