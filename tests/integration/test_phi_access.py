"""Issue 11 item 8 (seed §6.2) through the real daemon: reading a healthcare
observation takes an ``X-Access-Justification`` header and a fresh token;
the read is logged by ``knhkd.access`` with the justification, never the
observation's content."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.integration.conftest import RunningDaemon, wait_for_log

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
SECRET_WARD = "ward-7f3a-oncology"
HEALTH = {
    "event_type": "admit",
    "sector": "healthcare",
    "value": {"ward": SECRET_WARD},
    "metadata": {"patient_id": "P-1"},
}
FINANCE = {"event_type": "transaction.execute", "sector": "finance", "value": {"amount": 5}}
HEADER = "X-Access-Justification"


def _ingest(d: RunningDaemon, body: dict[str, Any]) -> str:
    with d.client("producer") as c:
        r = c.post("/api/v1/observations", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


def test_healthcare_reads_need_a_justification_and_a_fresh_token(
    make_daemon: Any,
) -> None:
    d: RunningDaemon = make_daemon(auth=True)
    hid, fid = _ingest(d, HEALTH), _ingest(d, FINANCE)
    with d.as_principal("nora", "observer") as nora:
        # Another sector: no justification needed.
        assert nora.get(f"/api/v1/observations/{fid}").status_code == 200
        missing = nora.get(f"/api/v1/observations/{hid}")
        assert missing.status_code == 403, missing.text
        assert missing.headers["content-type"] == PROBLEM
        assert missing.json()["type"] == "urn:knhkd:problem:justification-required"
        assert SECRET_WARD not in missing.text
        for bad in ("", "x" * 513):
            r = nora.get(f"/api/v1/observations/{hid}", headers={HEADER: bad})
            assert r.status_code == 403, (len(bad), r.text)
        ok = nora.get(f"/api/v1/observations/{hid}", headers={HEADER: "treating P-1, ticket 42"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["value"]["ward"] == SECRET_WARD
    wait_for_log(d, "allow phi read of observation")
    line = next(x for x in d.log().splitlines() if "allow phi read of observation" in x)
    assert hid in line and d.principal("nora") in line and "treating P-1, ticket 42" in line
    assert SECRET_WARD not in d.log()

    # A token issued 16 minutes ago (still valid for other reads): 401.
    old = int(time.time()) - 960
    with d.as_principal("nora", "observer", iat=old) as stale:
        assert stale.get(f"/api/v1/observations/{fid}").status_code == 200
        r = stale.get(f"/api/v1/observations/{hid}", headers={HEADER: "treating P-1"})
        assert r.status_code == 401, r.text
        assert r.json()["type"] == "urn:knhkd:problem:token-too-old"
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
        assert SECRET_WARD not in r.text


def test_healthcare_reads_need_a_justification_with_authentication_off(
    make_daemon: Any,
) -> None:
    d: RunningDaemon = make_daemon(
        '[auth]\nphi_justification_header = "X-Why"\n'
    )
    hid = _ingest(d, HEALTH)
    with httpx.Client(base_url=d.base, timeout=30.0) as anon:
        r = anon.get(f"/api/v1/observations/{hid}", headers={HEADER: "the default name"})
        assert r.status_code == 403 and r.json()["type"].endswith("justification-required")
        assert "X-Why" in r.json()["detail"]
        r = anon.get(f"/api/v1/observations/{hid}", headers={"X-Why": "audit sample 3"})
        assert r.status_code == 200, r.text
