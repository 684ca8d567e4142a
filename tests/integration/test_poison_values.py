"""Poison values cannot stop the daemon: each is a 4xx naming its field.

Integers outside int64, nesting past any bound and an oversize
``estimated_ticks`` used to reach MessagePack (OverflowError at commit, failing
the whole group commit and costing the ingest actor a restart) or recursion
(RecursionError): a 500 each, and six within a minute exhausted the
supervisor's restart budget. Here each arrives many times in one concurrent
burst with valid observations, against the real daemon.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.conftest import RunningDaemon

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
HEAD = b'{"event_type":"a.b","sector":"generic","metadata":{},"value":'
DEEP = b"[" * 2000 + b"]" * 2000
PROPOSAL = b'{"sector":"generic","description":"poison","delta":{"remove":[],"add":[]}'

# (path, body, field the problem must name, item index or None)
POISON: list[tuple[str, bytes, str, int | None]] = [
    ("/api/v1/observations", HEAD + b"18446744073709551616}", "$.value", None),
    ("/api/v1/observations", HEAD + b"-9223372036854775809}", "$.value", None),
    ("/api/v1/observations", HEAD + DEEP + b"}", "$.value", None),
    ("/api/v1/observations", b"[" + HEAD + b"1}," + HEAD + DEEP + b"}]", "$.value", 1),
    ("/api/v1/observations", HEAD + b'{"n":[1e999]}}', "$.value[...][0]", None),
    ("/api/v1/patterns/detect", b"[" + HEAD + DEEP + b"}]", "$.value", 0),
    ("/api/v1/patterns/detect", b"[" + HEAD + b"[18446744073709551616]}]", "$.value[0]", 0),
    (
        "/api/v1/proposals",
        PROPOSAL + b',"estimated_ticks":1180591620717411303424}',
        "$.estimated_ticks",
        None,
    ),
    (
        "/api/v1/proposals/validate",
        PROPOSAL + b',"estimated_ticks":1180591620717411303424}',
        "$.estimated_ticks",
        None,
    ),
    ("/api/v1/proposals", PROPOSAL[:-1] + b',"zz":' + DEEP + b"}}", "$.delta", None),
]
REPEAT = 7


def _post(c: httpx.Client, path: str, body: bytes) -> httpx.Response:
    return c.post(path, content=body, headers={"content-type": "application/json"})


def test_poison_bodies_are_4xx_and_valid_ones_still_commit(daemon: RunningDaemon) -> None:
    goods = [
        json.dumps(
            {"event_type": "a.b", "sector": "generic", "metadata": {}, "value": {"n": i}}
        ).encode()
        for i in range(REPEAT)
    ]
    jobs: list[tuple[str, bytes, str | None, int | None]] = []
    for _ in range(REPEAT):
        jobs += POISON
    # Valid observations interleaved, so they share group commits with the
    # requests that used to fail them.
    for i, good in enumerate(goods):
        jobs.insert(i * len(POISON), ("/api/v1/observations", good, None, None))

    with daemon.client() as c, ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda j: _post(c, j[0], j[1]), jobs))

        ids: dict[str, int] = {}
        for (path, body, field, index), r in zip(jobs, answers, strict=True):
            if field is None:
                assert r.status_code == 201, r.text
                ids[r.json()["id"]] = json.loads(body)["value"]["n"]
                continue
            assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
            assert r.headers["content-type"] == PROBLEM
            p = r.json()
            assert p["status"] == r.status_code == 422
            assert p["type"].startswith("urn:knhkd:problem:invalid-")
            assert [(e["field"], e.get("index")) for e in p["errors"]] == [(field, index)], p

        assert len(ids) == REPEAT
        for obs_id, n in ids.items():
            got = c.get(f"/api/v1/observations/{obs_id}")
            assert got.status_code == 200 and got.json()["value"] == {"n": n}

        assert c.get("/health").status_code == 200
        # Still taking work after the burst.
        assert _post(c, "/api/v1/observations", goods[0]).status_code == 201

    assert daemon.proc is not None and daemon.proc.poll() is None
    log = daemon.log()
    assert "unhandled error" not in log and "OverflowError" not in log, log[-4000:]
    status = json.loads(daemon.ctl("status", "--format", "json").stdout)
    assert status["observations"] == REPEAT + 1
