"""Bad input gets problem+json naming the field, and stores nothing."""

from __future__ import annotations

import pytest

from tests.integration.conftest import RunningDaemon, stored_counts

pytestmark = pytest.mark.integration

GOOD = {"event_type": "sensor.read", "value": 1, "sector": "manufacturing", "metadata": {}}
PROBLEM = "application/problem+json"


def _count(d: RunningDaemon) -> tuple[int, int]:
    return stored_counts(d)


@pytest.mark.parametrize(
    ("body", "ctype", "status", "field"),
    [
        (b"{nope", "application/json", 400, None),
        (b'{"event_type": 5, "sector": "finance"}', "application/json", 422, "$.event_type"),
        (b'{"event_type": "a", "sector": "moon"}', "application/json", 422, "$.sector"),
        (b'{"event_type": "a", "sector": "finance", "extra": 1}', "application/json", 422, "$"),
        (b"[]", "application/json", 422, None),
        (
            b'{"event_type":"a","sector":"finance"}\n{"event_type":"a"}',
            "application/x-ndjson",
            422,
            "$",
        ),
    ],
)
def test_rejected_bodies(
    daemon: RunningDaemon, body: bytes, ctype: str, status: int, field: str | None
) -> None:
    before = _count(daemon)
    with daemon.client() as c:
        r = c.post("/api/v1/observations", content=body, headers={"content-type": ctype})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    p = r.json()
    assert p["status"] == status and p["type"].startswith("urn:knhkd:problem:")
    if field:
        assert p["errors"][0]["field"] == field
    assert _count(daemon) == before


def test_one_bad_item_rejects_the_whole_batch(daemon: RunningDaemon) -> None:
    before = _count(daemon)
    batch = [GOOD, GOOD, {**GOOD, "sector": 3}, GOOD]
    with daemon.client() as c:
        r = c.post("/api/v1/observations", json=batch)
    assert r.status_code == 422
    assert [(e["index"], e["field"]) for e in r.json()["errors"]] == [(2, "$.sector")]
    assert _count(daemon) == before


def test_a_large_bad_batch_lists_the_first_errors_and_counts_the_rest(
    daemon: RunningDaemon,
) -> None:
    before = _count(daemon)
    batch = [{**GOOD, "sector": "moon"}] * 150 + [GOOD]
    with daemon.client() as c:
        r = c.post("/api/v1/observations", json=batch)
    assert r.status_code == 422
    p = r.json()
    assert [e["index"] for e in p["errors"]] == list(range(100))
    assert p["errors_omitted"] == 50
    assert _count(daemon) == before


def test_oversize_body_is_413_problem(make_daemon) -> None:  # type: ignore[no-untyped-def]
    d = make_daemon("[http]\nmax_body_bytes = 2048\n")
    before = _count(d)
    with d.client() as c:
        r = c.post("/api/v1/observations", json=[GOOD] * 100)
        assert r.status_code == 413
        assert r.headers["content-type"] == PROBLEM
        assert c.post("/api/v1/observations", json=GOOD).status_code == 201
    assert _count(d)[0] == before[0] + 1


def test_unknown_routes_and_ids_are_problems(daemon: RunningDaemon) -> None:
    with daemon.client() as c:
        for r, status in (
            (c.get("/api/v1/nothing"), 404),
            (c.get("/api/v1/observations/01HZZZZZZZZZZZZZZZZZZZZZZZ"), 404),
            (c.get("/api/v1/observations/garbage"), 404),
            (c.delete("/api/v1/observations"), 405),
            (c.get("/api/v1/receipts", params={"limit": "x"}), 400),
        ):
            assert r.status_code == status
            assert r.headers["content-type"] == PROBLEM
