"""Operator proposals through the real daemon: submit, dry-run validate,
promote, and the refusals (shape violation at stage 1, stale parent)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import RunningDaemon

pytestmark = pytest.mark.integration

K = "urn:knhk:ontology#"
RDF_TYPE = "<http://www.w3.org/1999/02/22-rdf-syntax-ns#type>"
XSD = "http://www.w3.org/2001/XMLSchema#"


def policy(event_type: str, max_events: str = "500") -> dict[str, Any]:
    s = f"<urn:knhk:policy:rate-limit:logistics:{event_type}>"
    return {
        "sector": "logistics",
        "description": f"rate-limit {event_type}",
        "delta": {
            "remove": [],
            "add": [
                [s, RDF_TYPE, f"<{K}RateLimitPolicy>"],
                [s, f"<{K}eventType>", f'"{event_type}"'],
                [s, f"<{K}maxEvents>", f'"{max_events}"^^<{XSD}integer>'],
                [s, f"<{K}windowSeconds>", f'"60.0"^^<{XSD}decimal>'],
                [s, f"<{K}sector>", f"<{K}logistics>"],
            ],
        },
    }


def test_submit_validate_promote(daemon: RunningDaemon) -> None:
    with daemon.client() as c:
        v0 = c.get("/api/v1/snapshots/current").json()
        dry = c.post("/api/v1/proposals/validate", json=policy("truck.depart"))
        assert dry.status_code == 200 and dry.json()["passed"] is True
        assert c.get("/api/v1/snapshots/current").json() == v0

        r = c.post("/api/v1/proposals", json=policy("truck.depart"))
        assert r.status_code == 201
        pid = r.json()["id"]
        assert r.json()["parent_snapshot_id"] == v0["snapshot_id"]
        # The same change again is the same proposal.
        again = c.post("/api/v1/proposals", json=policy("truck.depart"))
        assert again.status_code == 200 and again.json()["id"] == pid

        shown = c.get(f"/api/v1/proposals/{pid}").json()
        assert shown["proposal"]["id"] == pid and shown["validation"] is None

        done = c.post(f"/api/v1/proposals/{pid}/promote")
        assert done.status_code == 200, done.text
        body = done.json()
        assert body["promoted"] is True and body["snapshot"]["version"] == 1
        assert body["snapshot"]["parent_id"] == v0["snapshot_id"]
        assert c.get(f"/api/v1/proposals/{pid}").json()["validation"]["passed"] is True

        # Promoting it twice: it is now against a snapshot that is not current.
        assert c.post(f"/api/v1/proposals/{pid}/promote").status_code == 409
        stale = {**policy("truck.arrive"), "parent_snapshot_id": v0["snapshot_id"]}
        assert c.post("/api/v1/proposals", json=stale).status_code == 409
        assert c.get("/api/v1/proposals/nope").status_code == 404
    assert daemon.ctl("receipts", "verify-chain").returncode == 0


def test_shape_violation_is_rejected_at_stage_1(daemon: RunningDaemon) -> None:
    with daemon.client() as c:
        bad = policy("truck.depart", max_events="-5")
        pid = c.post("/api/v1/proposals", json=bad).json()["id"]
        r = c.post(f"/api/v1/proposals/{pid}/promote")
        assert r.status_code == 422
        report = r.json()["validation"]
        assert report["passed"] is False
        failed = [s for s in report["stages"] if s["verdict"] == "failed"]
        assert failed[0]["stage"] == 1 and "maxEvents" in failed[0]["message"]
        assert r.json()["snapshot"]["version"] == 0
        malformed = c.post("/api/v1/proposals", json={"sector": "logistics"})
        assert malformed.status_code == 422
        assert malformed.headers["content-type"] == "application/problem+json"


def test_proposals_from_the_cli(daemon: RunningDaemon, tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    f.write_text(json.dumps(policy("van.load")))
    dry = daemon.ctl("proposals", "validate", str(f))
    assert dry.returncode == 0 and json.loads(dry.stdout)["passed"] is True
    sub = daemon.ctl("proposals", "submit", str(f))
    assert sub.returncode == 0, sub.stderr
    pid = json.loads(sub.stdout)["proposal"]["id"]
    assert json.loads(daemon.ctl("proposals", "show", pid).stdout)["proposal"]["id"] == pid
    prom = daemon.ctl("proposals", "promote", pid)
    assert prom.returncode == 0 and json.loads(prom.stdout)["promoted"] is True
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(policy("van.unload", max_events="0")))
    pid2 = json.loads(daemon.ctl("proposals", "submit", str(bad)).stdout)["proposal"]["id"]
    assert daemon.ctl("proposals", "promote", pid2).returncode == 1
    nope = daemon.ctl("proposals", "show", "nope")
    assert nope.returncode == 2 and "no proposal" in nope.stderr
