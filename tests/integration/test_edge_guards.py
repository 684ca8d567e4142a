"""The edge refuses what a browser page (or a mislabelled client) could send,
before any route reads it, and stores nothing: bodies that are not JSON (415),
a foreign Host (DNS rebinding, 403), a foreign Origin on a mutating route
(403); and the configured ``[limits]`` name the field over them (422)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.integration.conftest import RunningDaemon, stored_counts

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
OBS = b'{"event_type":"a.b","sector":"generic","value":1,"metadata":{}}'
PROPOSAL = b'{"sector":"generic","description":"x","delta":{"remove":[],"add":[]}}'
JSON_BODIES = [
    ("/api/v1/observations", OBS),
    ("/api/v1/patterns/detect", b"[" + OBS + b"]"),
    ("/api/v1/proposals", PROPOSAL),
    ("/api/v1/proposals/validate", PROPOSAL),
    ("/api/v1/guards/finance-core/relaxations", b'{"requester":"rita","reason":"x"}'),
]
NOT_JSON = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "text/json",
    "application/json; charset=latin-1",
    None,
]
EXTRA = """
[http]
allowed_origins = ["https://ops.example"]

[limits]
value_max_string_length = 8
value_max_members = 3
metadata_max_entries = 2
rdf_max_length = 32
"""


def _status(d: RunningDaemon) -> tuple[int, int]:
    return stored_counts(d)


def _problem(r: httpx.Response, status: int, slug: str) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    doc: dict[str, object] = r.json()
    assert doc["type"] == f"urn:knhkd:problem:{slug}", doc
    return doc


@pytest.fixture
def guarded(make_daemon) -> RunningDaemon:  # type: ignore[no-untyped-def]
    return make_daemon(EXTRA, auth=True)  # type: ignore[no-any-return]


def test_json_routes_refuse_other_media_types_and_store_nothing(guarded: RunningDaemon) -> None:
    before = _status(guarded)
    with guarded.client() as c:
        for path, body in JSON_BODIES:
            for ctype in NOT_JSON:
                headers = {} if ctype is None else {"content-type": ctype}
                # httpx sends no content type for raw bytes unless told.
                r = c.post(path, content=body, headers=headers)
                _problem(r, 415, "unsupported-media-type")
        # NDJSON only where the route reads it.
        _problem(
            c.post("/api/v1/proposals", content=PROPOSAL,
                   headers={"content-type": "application/x-ndjson"}),
            415, "unsupported-media-type",
        )
        assert _status(guarded) == before
        # The same bodies as JSON (or +json, or NDJSON for observations) pass.
        ok = {"content-type": "application/json; charset=utf-8"}
        assert c.post("/api/v1/observations", content=OBS, headers=ok).status_code == 201
        vnd = {"content-type": "application/vnd.knhkd+json"}
        assert c.post("/api/v1/observations", content=OBS, headers=vnd).status_code == 201
        nd = {"content-type": "application/x-ndjson"}
        assert c.post("/api/v1/observations", content=OBS, headers=nd).status_code == 201
        # A route that reads no body, or a body-less step, needs no content type.
        assert c.post("/api/v1/mape-k/execute").status_code == 200
        r = c.post("/api/v1/guards/relaxations/nope/approve")
        _problem(r, 404, "unknown-relaxation")  # read as {}: the caller approves
    assert _status(guarded)[0] == before[0] + 3


def test_a_foreign_host_is_refused(guarded: RunningDaemon) -> None:
    before = _status(guarded)
    with guarded.client() as c:
        for host in ("evil.example", f"evil.example:{guarded.port}", "localhost:1"):
            _problem(c.get("/health", headers={"Host": host}), 403, "host-not-allowed")
            r = c.post("/api/v1/observations", content=OBS,
                       headers={"Host": host, "content-type": "application/json"})
            _problem(r, 403, "host-not-allowed")
        for host in ("localhost", f"localhost:{guarded.port}", f"[::1]:{guarded.port}"):
            assert c.get("/health", headers={"Host": host}).status_code == 200
    assert _status(guarded) == before


def test_a_browser_origin_may_not_mutate_unless_configured(guarded: RunningDaemon) -> None:
    before = _status(guarded)
    evil = {"Origin": "https://evil.example", "content-type": "application/json"}
    with guarded.client() as c:
        _problem(c.post("/api/v1/observations", content=OBS, headers=evil), 403,
                 "origin-not-allowed")
        _problem(c.post("/api/v1/snapshots/rollback", headers=evil), 403, "origin-not-allowed")
        assert _status(guarded) == before
        # Reads are not refused for their Origin; a configured origin may write.
        assert c.get("/api/v1/snapshots/current", headers=evil).status_code == 200
        ops = {**evil, "Origin": "https://ops.example"}
        assert c.post("/api/v1/observations", content=OBS, headers=ops).status_code == 201


def test_configured_limits_name_the_field(guarded: RunningDaemon) -> None:
    before = _status(guarded)
    bad = [
        ({"value": "123456789"}, "$.value"),
        ({"value": [1, 2, 3, 4]}, "$.value"),
        ({"metadata": {"a": "1", "b": "2", "c": "3"}}, "$.metadata"),
        ({"rdf": {"format": "turtle", "data": "<urn:a> <urn:b> <urn:c> . # ....."}},
         "$.rdf.data"),
        ({"event_type": "e" * 257}, "$.event_type"),
        ({"metadata": {"k" * 129: "v"}}, "$.metadata"),
    ]
    with guarded.client() as c:
        for fields, field in bad:
            obs = {"event_type": "a.b", "sector": "generic", "value": 1, "metadata": {}, **fields}
            doc = _problem(c.post("/api/v1/observations", json=obs), 422, "invalid-observation")
            assert [e["field"] for e in doc["errors"]] == [field]  # type: ignore[attr-defined]
        # Governance step bodies are typed and bounded too.
        step = "/api/v1/guards/finance-core/relaxations"
        for body, field in (
            ({"requester": "rita", "reason": "x", "extra": 1}, "$"),
            ({"requester": "r" * 257, "reason": "x"}, "$.requester"),
            ({"requester": 5}, "$.requester"),
        ):
            doc = _problem(c.post(step, json=body), 422, "invalid-body")
            assert [e["field"] for e in doc["errors"]] == [field]  # type: ignore[attr-defined]
        # Proposal fields the model bounds.
        p = json.loads(PROPOSAL)
        for extra, field in (
            ({"signers": ["a"] * 65}, "$.signers"),
            ({"resources": {f"r{i}": 1.0 for i in range(65)}}, "$.resources"),
            ({"pattern_id": "p" * 129}, "$.pattern_id"),
        ):
            doc = _problem(c.post("/api/v1/proposals", json={**p, **extra}), 422,
                           "invalid-proposal")
            assert [e["field"] for e in doc["errors"]] == [field]  # type: ignore[attr-defined]
    assert _status(guarded) == before


def test_wrong_method_names_the_allowed_ones(guarded: RunningDaemon) -> None:
    with guarded.client() as c:
        r = c.delete("/api/v1/observations")
        _problem(r, 405, "method-not-allowed")
        assert "POST" in r.headers["allow"]


def test_the_served_openapi_document_carries_the_running_limits(guarded: RunningDaemon) -> None:
    with guarded.client() as c:
        r = c.get("/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["openapi"] == "3.1.0"
    schemas = doc["components"]["schemas"]
    assert schemas["ObservationIn"]["properties"]["metadata"]["maxProperties"] == 2
    assert schemas["RdfPayload"]["properties"]["data"]["maxLength"] == 32
    assert "/openapi.json" in doc["paths"]
