"""SHACL at ingest, end to end: the real daemon with the shipped sector shapes
(conf/shapes/observations) refuses observations that violate them with 422
problem+json and stores nothing of the request; the failure counter moves."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import CONF, RunningDaemon

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
SH = "http://www.w3.org/ns/shacl#"
VALID = {
    "event_type": "admit",
    "sector": "healthcare",
    "value": {"ward": "A"},
    "metadata": {"patient_id": "P-1"},
}
NO_PATIENT = {"event_type": "admit", "sector": "healthcare", "value": {"ward": "A"}}
NEGATIVE = {"event_type": "transaction.execute", "sector": "finance", "value": {"amount": -10}}


def _stored(d: RunningDaemon) -> int:
    return int(json.loads(d.ctl("status", "--format", "json").stdout)["observations"])


def _failures(d: RunningDaemon, sector: str) -> float:
    with d.client() as c:
        text = c.get("/metrics").text
    m = re.search(rf'^knhk_ingest_shacl_failures_total{{sector="{sector}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def _problem(r: Any) -> dict[str, Any]:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    assert body["type"] == "urn:knhkd:problem:shacl-violation"
    return body


def test_violations_are_422_and_store_nothing(daemon: RunningDaemon) -> None:
    before = _stored(daemon)
    with daemon.client() as c:
        # One observation violating its sector's shapes.
        p = _problem(c.post("/api/v1/observations", json=NEGATIVE))
        (error,) = p["errors"]
        assert error["field"] == "$.value.amount"
        assert error["focus_node"] == "<urn:knhk:obs:pending:0>"
        assert error["path"] == "(<urn:knhk:ontology#value>/<urn:knhk:value#amount>)"
        assert error["constraint"] == SH + "MinInclusiveConstraintComponent"
        assert error["severity"] == "Violation"
        assert "value.amount" in error["message"]
        assert "index" not in error  # a single object, not a batch
        assert _stored(daemon) == before

        # A batch with one violating item is rejected whole.
        batch = [VALID, VALID, NO_PATIENT, VALID]
        p = _problem(c.post("/api/v1/observations", json=batch))
        assert [(e["index"], e["field"], e["constraint"]) for e in p["errors"]] == [
            (2, "$.metadata.patient_id", SH + "MinCountConstraintComponent")
        ]
        assert p["errors"][0]["focus_node"] == "<urn:knhk:obs:pending:2>"
        assert "1 of 4" in p["detail"]
        # NDJSON batches too.
        nd = "\n".join(json.dumps(o) for o in (VALID, NEGATIVE))
        p = _problem(
            c.post(
                "/api/v1/observations",
                content=nd,
                headers={"content-type": "application/x-ndjson"},
            )
        )
        assert [e["index"] for e in p["errors"]] == [1]
        assert _stored(daemon) == before

        # Valid observations are accepted.
        r = c.post("/api/v1/observations", json=[VALID, VALID])
        assert r.status_code == 201, r.text
        r = c.post(
            "/api/v1/observations",
            json={"event_type": "transaction.execute", "sector": "finance", "value": {"amount": 5}},
        )
        assert r.status_code == 201, r.text
    assert _stored(daemon) == before + 3
    # Counted per offending observation, by sector.
    assert _failures(daemon, "finance") == 2.0
    assert _failures(daemon, "healthcare") == 1.0
    assert _failures(daemon, "generic") == 0.0


def test_rdf_payloads(daemon: RunningDaemon) -> None:
    tx = "<urn:knhk:ontology#Transaction>"
    good = {
        "event_type": "tx.described",
        "sector": "finance",
        "rdf": {
            "format": "turtle",
            "data": f'<urn:ex:t1> a {tx} ; <urn:knhk:ontology#transaction_id> "T-1" .',
        },
    }
    bad = {
        "event_type": "tx.described",
        "sector": "finance",
        "rdf": {"format": "json-ld", "data": json.dumps({"@id": "urn:ex:t2", "@type": tx[1:-1]})},
    }
    broken = {"event_type": "e", "sector": "generic", "rdf": {"format": "turtle", "data": "<a"}}
    before = _stored(daemon)
    with daemon.client() as c:
        p = _problem(c.post("/api/v1/observations", json=[good, bad]))
        assert [(e["index"], e["field"], e["focus_node"]) for e in p["errors"]] == [
            (1, "$.rdf.data", "<urn:ex:t2>")
        ]
        p = _problem(c.post("/api/v1/observations", json=broken))
        assert p["errors"][0]["field"] == "$.rdf.data"
        assert _stored(daemon) == before
        r = c.post("/api/v1/observations", json=good)
        assert r.status_code == 201, r.text
        stored = c.get(f"/api/v1/observations/{r.json()['id']}").json()
        assert stored["rdf"] == good["rdf"]


def test_a_broken_shapes_file_stops_start_up_naming_it(make_daemon: Any, tmp_path: Path) -> None:
    shapes = tmp_path / "obs-shapes"
    shapes.mkdir()
    for f in (CONF / "shapes" / "observations").glob("*.ttl"):
        (shapes / f.name).write_text(f.read_text())
    (shapes / "logistics.ttl").write_text("@prefix sh: <http://www.w3.org/ns/shacl#> .\n<a> sh:")
    d = make_daemon(f'[ingest]\nobservation_shapes_dir = "{shapes}"\n', start=False)
    d.start(wait=False)
    assert d.proc is not None
    deadline = time.monotonic() + 30
    while d.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.proc.returncode not in (None, 0), d.log()
    assert "observation_shapes" in d.log() and "logistics.ttl" in d.log(), d.log()
