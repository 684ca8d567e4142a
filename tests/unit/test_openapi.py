"""The OpenAPI document describes every route of the app, and the committed
copy (docs/openapi.json) is the one the code generates.

Regenerate after changing a route or a type:
    .venv/bin/python -m knhkd.cli.openapi > docs/openapi.json
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from quart import Blueprint

from knhkd.api.http import route_app
from knhkd.api.openapi import document
from knhkd.cli.openapi import generate
from knhkd.config import build

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
IGNORED = {"HEAD", "OPTIONS"}


def test_committed_copy_is_the_generated_one() -> None:
    assert COMMITTED.read_bytes() == generate(), (
        "docs/openapi.json is stale: .venv/bin/python -m knhkd.cli.openapi > docs/openapi.json"
    )


@pytest.mark.parametrize("noop", [False, True])
def test_every_route_and_method_is_described(noop: bool) -> None:
    cfg = build({"http": {"noop_endpoint": noop}}, env={})
    app = route_app(cfg)
    doc = document(app, cfg)
    routes = {
        (rule.rule.replace("<", "{").replace(">", "}"), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in (rule.methods or set()) - IGNORED
    }
    described = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert routes == described
    assert ("/api/v1/_noop", "post") in described if noop else True
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            statuses = set(op["responses"])
            assert any(s.startswith("2") for s in statuses), (path, method)
            assert {"403", "500"} <= statuses, (path, method)
            if "requestBody" in op:
                assert {"400", "413", "415"} <= statuses, (path, method)
            for status, response in op["responses"].items():
                if int(status) >= 400 and "x-problem-types" in response:
                    schema = response["content"]["application/problem+json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Problem"}


def test_an_undescribed_route_fails_the_document() -> None:
    cfg = build({}, env={})
    app = route_app(cfg)
    extra = Blueprint("extra", __name__)

    @extra.get("/api/v1/forgotten")
    async def forgotten() -> str:
        return "{}"

    app.register_blueprint(extra)
    with pytest.raises(LookupError, match="/api/v1/forgotten"):
        document(app, cfg)


def test_bounds_and_configured_limits_are_in_the_schemas() -> None:
    cfg = build({"limits": {"metadata_max_entries": 7, "rdf_max_length": 99}}, env={})
    schemas = document(route_app(cfg), cfg)["components"]["schemas"]
    obs = schemas["ObservationIn"]["properties"]
    assert obs["metadata"]["maxProperties"] == 7
    assert schemas["RdfPayload"]["properties"]["data"]["maxLength"] == 99
    assert obs["event_type"]["maxLength"] == 256
    ticks = schemas["ProposalIn"]["properties"]["estimated_ticks"]
    assert ticks["maximum"] == 2**63 - 1 and ticks["minimum"] == 0
    committed = json.loads(COMMITTED.read_text())
    assert committed["openapi"] == "3.1.0"
    assert committed["components"]["schemas"]["ObservationIn"]["properties"]["metadata"][
        "maxProperties"
    ] == 64
