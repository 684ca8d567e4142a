"""The whole loop through the real daemon: burst → pattern → proposal →
validation → promotion, and a receipt chain that verifies."""

from __future__ import annotations

import json
import stat

import pytest

from tests.integration.conftest import RunningDaemon

pytestmark = pytest.mark.integration

OBS = {
    "event_type": "transaction.execute",
    "value": {"amount": 50000},
    "sector": "finance",
    "metadata": {},
}
# Logistics has no approval doctrine: the loop may promote on its own.
TRUCK = {
    "event_type": "truck.depart",
    "value": {"dock": 4},
    "sector": "logistics",
    "metadata": {"shipment_id": "SHP-1001"},
}


def _kinds(d: RunningDaemon) -> list[str]:
    with d.client() as c:
        r = c.get("/api/v1/receipts", params={"limit": 1000})
    assert r.status_code == 200
    return [x["body"]["kind"] for x in r.json()["receipts"]]


def test_burst_detect_plan_validate_promote_and_verify(daemon: RunningDaemon) -> None:
    with daemon.client() as c:
        r = c.post("/api/v1/observations", json=OBS)
        assert r.status_code == 201, r.text
        one = r.json()["id"]
        got = c.get(f"/api/v1/observations/{one}").json()
        assert got["value"] == {"amount": 50000} and got["sector"] == "finance"

        # A burst of one event type, as NDJSON, past the high-frequency threshold.
        body = "\n".join(json.dumps(TRUCK) for _ in range(150))
        r = c.post(
            "/api/v1/observations", content=body, headers={"content-type": "application/x-ndjson"}
        )
        assert r.status_code == 201, r.text
        assert r.json()["count"] == 150 and len(set(r.json()["ids"])) == 150

        genesis = c.get("/api/v1/snapshots/current").json()
        assert genesis["version"] == 0 and genesis["parent_id"] is None

        report = c.post("/api/v1/mape-k/execute").json()
        assert report["outcome"] == "completed"
        assert report["patterns_detected"] >= 1
        assert report["proposals_generated"] >= 1
        assert report["validations_passed"] >= 1
        assert report["snapshots_promoted"] == 1
        assert report["receipt_ids"], "the cycle must name its receipts"

        current = c.get("/api/v1/snapshots/current").json()
        assert current["version"] == 1
        assert current["parent_id"] == genesis["snapshot_id"]
        assert current["snapshot_id"] != genesis["snapshot_id"]
        listed = c.get("/api/v1/snapshots").json()
        assert listed["current"] == current["snapshot_id"]
        assert [s["version"] for s in listed["snapshots"]] == [0, 1]

        patterns = c.get("/api/v1/patterns").json()
        assert any(p["name"] == "high_frequency_truck.depart" for p in patterns)

        # The promoted policy is now knowledge: the same burst plans nothing new.
        again = c.post("/api/v1/mape-k/execute").json()
        assert again["snapshots_promoted"] == 0
        assert c.get("/api/v1/snapshots/current").json()["version"] == 1

    # Each batch receipt names the shapes that accepted it: the digest of the
    # sector's canonical shapes graph.
    from knhkd.knowledge.rdf import canonical_ntriples, content_id, load_turtle
    from tests.integration.conftest import CONF

    shapes = content_id(canonical_ntriples(load_turtle(CONF / "shapes/observations/logistics.ttl")))
    with daemon.client() as c:
        batches = [
            r["body"]
            for r in c.get("/api/v1/receipts", params={"limit": 1000}).json()["receipts"]
            if r["body"]["kind"] == "observation_batch_committed"
            and r["body"]["sector"] == "logistics"
        ]
    assert batches and all(b["inputs"]["shapes_digest"] == shapes for b in batches)

    kinds = _kinds(daemon)
    for kind in (
        "observation_batch_committed",
        "pattern_detected",
        "proposal_generated",
        "validation_executed",
        "snapshot_promoted",
        "cycle_completed",
    ):
        assert kind in kinds, kind

    res = daemon.ctl("receipts", "verify-chain", "--format", "json")
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    # Audit receipts of the requests above may commit between the listing and
    # verify-chain (the auditor flushes every 250 ms): at least every listed one.
    assert rep["total_count"] == rep["verified_count"] >= len(kinds)
    assert rep["signature_failures"] == rep["chain_breaks"] == []
    assert rep["retrocausation_violations"] == []


def test_finance_changes_wait_for_sox_signers(daemon: RunningDaemon) -> None:
    """A finance burst is planned but not promoted: FIN-APPROVAL-001 (SOX)
    wants two signers, one from finance and one from compliance. Signed by
    two principals whose tokens say so, the same stored ΔΣ passes."""
    with daemon.client() as c:
        assert c.post("/api/v1/observations", json=[OBS] * 120).status_code == 201
        report = c.post("/api/v1/mape-k/execute").json()
        assert report["proposals_generated"] == 1 and report["validations_failed"] == 1
        assert report["snapshots_promoted"] == 0
        pats = c.get("/api/v1/patterns").json()
        planned = next(p for p in pats if p["name"] == "high_frequency_transaction.execute")
        receipts = c.get("/api/v1/receipts", params={"limit": 1000}).json()["receipts"]
        judged = [r for r in receipts if r["body"]["kind"] == "validation_executed"][-1]
        assert judged["body"]["outcome"]["status"] == "rejected"
        assert "FIN-APPROVAL-001" in judged["body"]["outcome"]["detail"]
        assert judged["body"]["inputs"]["doctrines_digest"]
        pid = judged["body"]["subject_ids"][0]
        proposal = c.get(f"/api/v1/proposals/{pid}").json()["proposal"]
        assert proposal["pattern_id"] == planned["id"]
        for who, capacity in (("alice", "controller@finance"), ("bob", "auditor@compliance")):
            with daemon.as_principal(who, "validator", knhkd_signer=[capacity]) as signer:
                r = signer.post(f"/api/v1/proposals/{pid}/signatures")
                assert r.status_code == 201, r.text
        done = c.post(f"/api/v1/proposals/{pid}/promote")
        assert done.status_code == 200, done.text
        assert done.json()["snapshot"]["version"] == 1


def test_schema_drift_is_learned_and_then_quiet(daemon: RunningDaemon) -> None:
    drift = {**TRUCK, "metadata": {"shipment_id": "SHP-1001", "terminal_id": "T-9"}}
    with daemon.client() as c:
        assert c.post("/api/v1/observations", json=[drift] * 3).status_code == 201
        first = c.post("/api/v1/mape-k/execute").json()
        assert first["snapshots_promoted"] == 1, first
        pats = c.get("/api/v1/patterns").json()
        drifted = [p for p in pats if p["kind"] == "schema_mismatch"]
        assert drifted and drifted[0]["metadata_keys"] == ["terminal_id"]
        # The key is part of the finance schema now: no drift, no proposal.
        second = c.post("/api/v1/mape-k/execute").json()
        assert second["proposals_generated"] == 0
        assert second["snapshots_promoted"] == 0


def test_admin_socket_commands(daemon: RunningDaemon) -> None:
    sock = daemon.data_dir / "admin.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(daemon.data_dir.stat().st_mode) == 0o700
    key = daemon.data_dir / "keys" / "signing.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    st = daemon.ctl("status", "--format", "json")
    assert st.returncode == 0, st.stderr
    status = json.loads(st.stdout)
    assert status["current_snapshot"]["version"] == 0
    assert set(status["actors"]) >= {
        "ingest",
        "analyzer",
        "planner",
        "executor",
        "receipt_writer",
        "scheduler",
    }
    assert all(a["state"] == "running" for a in status["actors"].values())
    assert "observations:" in daemon.ctl("status").stdout

    cyc = daemon.ctl("cycle", "run")
    assert cyc.returncode == 0 and json.loads(cyc.stdout)["outcome"] == "completed"

    lst = daemon.ctl("receipts", "list", "--limit", "2", "--format", "json")
    assert lst.returncode == 0 and len(json.loads(lst.stdout)) == 2
    table = daemon.ctl("receipts", "list", "--limit", "5")
    assert table.stdout.splitlines()[0].split() == [
        "SEQ",
        "TIME",
        "KIND",
        "OUTCOME",
        "SECTOR",
        "HASH",
    ]

    snaps = daemon.ctl("snapshots", "list", "--format", "json")
    assert len(json.loads(snaps.stdout)["snapshots"]) == 1

    ring = json.loads(daemon.ctl("keys", "export-public").stdout)
    on_disk = json.loads((daemon.data_dir / "keys" / "public.json").read_text())
    assert ring == on_disk and ring["format"] == "knhkd-keyring-v1"
    assert ring["keys"][0]["key_id"] == status["key_id"]

    refused = daemon.ctl("snapshots", "rollback")
    assert refused.returncode == 2
    assert "genesis" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_rollback_after_promotion_is_receipted(daemon: RunningDaemon) -> None:
    with daemon.client() as c:
        c.post("/api/v1/observations", json=[TRUCK] * 120)
        assert c.post("/api/v1/mape-k/execute").json()["snapshots_promoted"] == 1
        v1 = c.get("/api/v1/snapshots/current").json()
        r = c.post("/api/v1/snapshots/rollback")
        assert r.status_code == 200 and r.json()["version"] == 0
        assert r.json()["snapshot_id"] == v1["parent_id"]
        again = c.post("/api/v1/snapshots/rollback")
        assert again.status_code == 409
        assert again.headers["content-type"] == "application/problem+json"
    assert "snapshot_rolled_back" in _kinds(daemon)
    assert daemon.ctl("receipts", "verify-chain").returncode == 0


def test_health_ready_and_metrics(daemon: RunningDaemon) -> None:
    with daemon.client() as c:
        h = c.get("/health")
        assert h.status_code == 200
        body = h.json()
        assert body["status"] == "healthy"
        assert set(body) >= {"status", "timestamp", "uptime_seconds", "dependencies"}
        assert body["dependencies"]["storage"] == "healthy"
        assert c.get("/ready").json() == {"ready": True}
        c.post("/api/v1/observations", json=OBS)
        m = c.get("/metrics").text
        assert 'knhk_observations_ingested_total{sector="finance"} 1.0' in m
        assert "knhk_health_status 1.0" in m
        assert "knhk_requests_total" in m
