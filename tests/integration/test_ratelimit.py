"""Per-principal rate limits through the real daemon: a small burst, then 429
with Retry-After for that principal only; a role's override; nothing else
slowed."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import RunningDaemon

pytestmark = pytest.mark.integration

LIMITS = """
[auth.rate_limit]
rate_per_s = 0.01
burst = 3

[[auth.rate_limit.overrides]]
role = "operator"
rate_per_s = 0.01
burst = 6
"""


def test_a_principal_over_its_burst_gets_429_and_others_do_not(make_daemon: Any) -> None:
    d: RunningDaemon = make_daemon(LIMITS, auth=True)
    with d.client("observer") as alice, d.client("analyst") as bob, d.client("operator") as op:
        codes = [alice.get("/api/v1/snapshots/current").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = alice.get("/api/v1/receipts")
        assert r.status_code == 429
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"] == "urn:knhkd:problem:too-many-requests"
        assert int(r.headers["retry-after"]) >= 1
        # Another principal has its own bucket; the operator role its own burst.
        assert bob.get("/api/v1/snapshots/current").status_code == 200
        ops = [op.get("/api/v1/snapshots/current").status_code for _ in range(7)]
        assert ops == [200] * 6 + [429]
        # Public routes are not counted.
        assert alice.get("/health").status_code == 200
    assert "deny GET /api/v1/receipts by" in d.log() and "rate limited" in d.log()
