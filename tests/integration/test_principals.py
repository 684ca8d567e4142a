"""Issue 11 item 3 through the real daemon: every decision is taken by an
authenticated principal (a token per subject, minted here), never by a name
in the body.

- A proposal declaring signers is refused (403 principal-mismatch): the
  issue's reproducer (``"signers": ["mallory:cfo@finance", …]`` then promote)
  no longer passes FIN-APPROVAL-001.
- Two real principals signing through ``POST …/signatures``, as what their
  tokens say they sign as, pass it.
- One principal cannot meet a relaxation quorum, however many names it
  types; a body naming another approver is 403.
- The receipts of submit, signature, promote, rollback, cycle and every
  relaxation step carry the principal in their signed ``inputs``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import RunningDaemon

pytestmark = pytest.mark.integration

K = "urn:knhk:ontology#"
XSD = "http://www.w3.org/2001/XMLSchema#"
RDF_TYPE = "<http://www.w3.org/1999/02/22-rdf-syntax-ns#type>"
FAST_REVIEW = "[governance.critical]\nquorum = 3\nmin_review_h = 0.0\n"


def _finance(n: int = 1, **extra: Any) -> dict[str, Any]:
    s = f"<urn:knhk:policy:p{n}>"
    return {
        "sector": "finance",
        "description": f"rate-limit logins ({n})",
        "delta": {
            "remove": [],
            "add": [
                [s, RDF_TYPE, f"<{K}RateLimitPolicy>"],
                [s, f"<{K}eventType>", '"login"'],
                [s, f"<{K}sector>", f"<{K}finance>"],
                [s, f"<{K}maxEvents>", f'"5"^^<{XSD}integer>'],
                [s, f"<{K}windowSeconds>", f'"60.0"^^<{XSD}decimal>'],
            ],
        },
        **extra,
    }


def _stage3(answer: dict[str, Any]) -> dict[str, str]:
    stage = next(s for s in answer["validation"]["stages"] if s["stage"] == 3)
    return {v["id"]: v["verdict"] for v in stage["sub_verdicts"]}


def _receipts(c: httpx.Client, kind: str) -> list[dict[str, Any]]:
    res = c.get("/api/v1/receipts", params={"limit": 1000})
    assert res.status_code == 200, res.text
    return [r["body"] for r in res.json()["receipts"] if r["body"]["kind"] == kind]


def test_declared_signers_are_refused_and_cannot_pass_a_doctrine(daemon: RunningDaemon) -> None:
    d = daemon
    with d.as_principal("mallory", "proposer", "operator") as mallory:
        spoofed = mallory.post(
            "/api/v1/proposals",
            json=_finance(signers=["mallory:cfo@finance", "mallory2:auditor@compliance"]),
        )
        assert spoofed.status_code == 403, spoofed.text
        assert spoofed.json()["type"] == "urn:knhkd:problem:principal-mismatch"
        assert spoofed.headers["content-type"] == "application/problem+json"
        dry = mallory.post(
            "/api/v1/proposals/validate", json=_finance(signers=["mallory:cfo@finance"])
        )
        assert dry.status_code == 403, dry.text
        # Unsigned, the same change is stored and held by the doctrine.
        sub = mallory.post("/api/v1/proposals", json=_finance())
        assert sub.status_code == 201, sub.text
        pid = sub.json()["id"]
        assert sub.json()["submitted_by"] == d.principal("mallory")
        r = mallory.post(f"/api/v1/proposals/{pid}/promote")
        assert r.status_code == 422, r.text
        assert r.json()["promoted"] is False
        assert _stage3(r.json())["FIN-APPROVAL-001"] == "failed"
        # Signing it alone, in both capacities its token could claim, is one person.
    with d.as_principal(
        "mallory", "validator", knhkd_signer=["cfo@finance", "auditor@compliance"]
    ) as mallory_signs:
        signed = mallory_signs.post(f"/api/v1/proposals/{pid}/signatures")
        assert signed.status_code == 201, signed.text
    with d.as_principal("mallory", "operator") as mallory:
        r = mallory.post(f"/api/v1/proposals/{pid}/promote")
        assert r.status_code == 422 and _stage3(r.json())["FIN-APPROVAL-001"] == "failed"
        stage = next(s for s in r.json()["validation"]["stages"] if s["stage"] == 3)
        assert "1 distinct signer(s), 2 required" in stage["message"]


def test_two_principals_sign_through_the_api_and_pass_fin_approval(
    daemon: RunningDaemon, tmp_path: Path
) -> None:
    d = daemon
    with d.as_principal("pat", "proposer") as pat:
        sub = pat.post("/api/v1/proposals", json=_finance(2))
        assert sub.status_code == 201, sub.text
    pid = sub.json()["id"]
    with (
        d.as_principal("fiona", "validator", knhkd_signer=["controller@finance"]) as fiona,
        d.as_principal("carl", "validator", knhkd_signer="auditor@compliance") as carl,
        d.as_principal("olga", "operator") as olga,
        d.as_principal("obs", "observer") as obs,
    ):
        # Signing needs GOVERN.
        assert obs.post(f"/api/v1/proposals/{pid}/signatures").status_code == 403
        # A body (none is read) cannot change who signs or as what.
        first = fiona.post(f"/api/v1/proposals/{pid}/signatures")
        assert first.status_code == 201, first.text
        again = fiona.post(f"/api/v1/proposals/{pid}/signatures")
        assert again.status_code == 200 and len(again.json()["signatures"]) == 1
        # One signature: still short.
        r = olga.post(f"/api/v1/proposals/{pid}/promote")
        assert r.status_code == 422 and _stage3(r.json())["FIN-APPROVAL-001"] == "failed"
        both = carl.post(f"/api/v1/proposals/{pid}/signatures")
        assert both.status_code == 201, both.text
        sigs = both.json()["signatures"]
        assert [(s["principal"], s["capacities"]) for s in sigs] == [
            (d.principal("fiona"), ["controller@finance"]),
            (d.principal("carl"), ["auditor@compliance"]),
        ]
        assert olga.post("/api/v1/proposals/nope/signatures").status_code == 404
        r = olga.post(f"/api/v1/proposals/{pid}/promote")
        assert r.status_code == 200, r.text
        assert r.json()["promoted"] is True
        assert _stage3(r.json())["FIN-APPROVAL-001"] == "passed"

        signed = _receipts(olga, "proposal_signed")
        assert [(b["inputs"]["principal"], b["inputs"]["capacities"]) for b in signed] == [
            (d.principal("fiona"), "controller@finance"),
            (d.principal("carl"), "auditor@compliance"),
        ]
        assert all(b["subject_ids"] == [pid] for b in signed)
        submitted = [
            b for b in _receipts(olga, "proposal_generated") if b["subject_ids"][0] == pid
        ]
        assert submitted[0]["inputs"]["principal"] == d.principal("pat")
        judged = [
            b for b in _receipts(olga, "validation_executed") if b["subject_ids"] == [pid]
        ]
        assert {b["inputs"]["principal"] for b in judged} == {d.principal("olga")}
        assert judged[-1]["inputs"]["signatures"] == (
            f"{d.principal('fiona')},{d.principal('carl')}"
        )
        promoted = _receipts(olga, "snapshot_promoted")[-1]
        assert promoted["inputs"]["principal"] == d.principal("olga")

        rolled = olga.post("/api/v1/snapshots/rollback")
        assert rolled.status_code == 200, rolled.text
        back = _receipts(olga, "snapshot_rolled_back")[-1]
        assert back["inputs"]["principal"] == d.principal("olga")

        cycle = olga.post("/api/v1/mape-k/execute")
        assert cycle.status_code == 200, cycle.text
        done = [
            b for b in _receipts(olga, "cycle_completed") if b["inputs"]["trigger"] == "on_demand"
        ]
        assert done[-1]["inputs"]["principal"] == d.principal("olga")
    # Signed fields: the chain, with the principals in it, verifies online,
    # offline from an export and the public keys, and fsck finds nothing.
    res = d.ctl("receipts", "verify-chain", "--format", "json")
    assert res.returncode == 0, res.stdout + res.stderr
    keys, export = tmp_path / "keys.json", tmp_path / "export.json"
    keys.write_text(d.ctl("keys", "export-public").stdout)
    res = d.ctl("receipts", "export", "--out", str(export))
    assert res.returncode == 0, res.stderr
    doc = json.loads(export.read_text())
    records = [base64.b64decode(r) for r in doc["records"]]
    assert sum(b"proposal_signed" in r for r in records) == 2
    res = d.ctl("verify", "--keys", str(keys), str(export))
    assert res.returncode == 0, res.stdout + res.stderr
    # Another principal written into a signed receipt: verification fails.
    i = next(i for i, r in enumerate(records) if b"proposal_signed" in r and b"#carl" in r)
    doc["records"][i] = base64.b64encode(records[i].replace(b"#carl", b"#carm")).decode()
    export.write_text(json.dumps(doc))
    assert d.ctl("verify", "--keys", str(keys), str(export)).returncode == 1
    assert d.stop() == 0
    res = d.ctl("fsck")
    assert res.returncode == 0, res.stdout + res.stderr


def test_one_principal_cannot_meet_a_quorum(make_daemon: Any) -> None:
    d: RunningDaemon = make_daemon(FAST_REVIEW, auth=True)
    with (
        d.as_principal("rita", "operator") as rita,
        d.as_principal("val", "validator") as val,
        d.as_principal("other", "validator") as other,
    ):
        req = rita.post(
            "/api/v1/guards/finance-core/relaxations",
            json={"requester": d.principal("rita"), "reason": "restructure"},
        )
        assert req.status_code == 201, req.text
        base = f"/api/v1/guards/relaxations/{req.json()['id']}"
        # A body naming someone else: 403, nothing recorded.
        for name in ("ann", "ben", d.principal("other")):
            spoof = val.post(f"{base}/approve", json={"approver": name})
            assert spoof.status_code == 403, spoof.text
            assert spoof.json()["type"] == "urn:knhkd:problem:principal-mismatch"
        assert rita.get(base).json()["approvals"] == []
        # The same principal three times: one approval, then refusals.
        assert val.post(f"{base}/approve").status_code == 200
        for _ in range(2):
            dup = val.post(f"{base}/approve", json={"approver": d.principal("val")})
            assert dup.status_code == 409 and dup.json()["type"].endswith("duplicate-approval")
        # The requester approving is refused too.
        assert rita.post(f"{base}/approve").json()["type"].endswith("self-approval")
        record = rita.get(base).json()
        assert record["state"] == "requested" and len(record["approvals"]) == 1
        act = rita.post(f"{base}/activate")
        assert act.status_code == 409 and act.json()["type"].endswith("not-approved")
        # Someone else's actor name on revoke is refused; the requester's own works.
        spoof = other.post(f"{base}/revoke", json={"actor": d.principal("rita")})
        assert spoof.status_code == 403
        assert rita.get(base).json()["state"] == "requested"
        for step, body in (("activate", {"actor": "rita"}), ("approve", {"approver": "x"})):
            assert other.post(f"{base}/{step}", json=body).status_code == 403
        steps = _receipts(rita, "guard_relaxation_step")
        assert [(b["inputs"]["step"], b["inputs"]["principal"]) for b in steps] == [
            ("requested", d.principal("rita")),
            ("approval_recorded", d.principal("val")),
        ]


def test_anonymous_can_neither_govern_nor_sign(make_daemon: Any) -> None:
    d: RunningDaemon = make_daemon()  # authentication off
    with httpx.Client(base_url=d.base, timeout=30.0) as anon:
        r = anon.post("/api/v1/guards/finance-core/relaxations", json={"reason": "x"})
        assert r.status_code == 403, r.text
        r = anon.post("/api/v1/proposals/x/signatures")
        assert r.status_code == 403, r.text
