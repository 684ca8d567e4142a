"""The auditor's coalescing (loop/auditor.py ``drafts_of``): identical records
of one flush become one receipt draft with their count and first/last time;
any difference keeps them apart; nothing is lost or reordered."""

from __future__ import annotations

from knhkd.loop.auditor import drafts_of
from knhkd.model import AuditRecord


def rec(**kw: object) -> AuditRecord:
    base: dict[str, object] = {
        "event": "authz",
        "principal": "iss#alice",
        "route": "POST /api/v1/observations",
        "decision": "allow",
        "reason": "INGEST",
        "peer": "127.0.0.1",
    }
    base.update(kw)
    return AuditRecord(**base)  # type: ignore[arg-type]


def test_identical_records_in_one_flush_become_one_draft_with_their_count() -> None:
    drafts = drafts_of([(rec(), 10), (rec(peer="10.0.0.2"), 11), (rec(), 12), (rec(), 15)])
    assert len(drafts) == 2
    first, second = drafts
    assert first.kind == "audit" and first.outcome.status == "approved"
    assert first.inputs["count"] == "3"
    assert (first.inputs["first_ns"], first.inputs["last_ns"]) == ("10", "15")
    assert second.inputs["peer"] == "10.0.0.2" and second.inputs["count"] == "1"


def test_details_and_decisions_keep_records_apart() -> None:
    drafts = drafts_of(
        [
            (rec(detail={"justification": "treatment"}), 1),
            (rec(detail={"justification": "billing"}), 2),
            (rec(decision="deny", reason="needs INGEST"), 3),
        ]
    )
    assert [d.inputs.get("detail.justification") for d in drafts] == [
        "treatment",
        "billing",
        None,
    ]
    assert drafts[2].outcome.status == "rejected"
    assert drafts[2].outcome.detail == "needs INGEST"
