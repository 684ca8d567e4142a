"""Fuzzing the live daemon: schemathesis over its own /openapi.json, and
hypothesis over hostile observation and proposal bodies.

Each test runs against one real daemon subprocess (real LMDB, HTTP over
loopback) with a fixed seed (``derandomize``) and a bounded case budget:
``KNHKD_FUZZ_BUDGET`` cases per test (default 600, what ``make test`` runs in
well under a minute on 2 cores; ``make fuzz`` runs 10,000). What must hold, case by case
and at the end:

- never a 5xx; every answer's status and content type are among those the
  document lists for the route, and a JSON body conforms to its schema;
- the daemon process is alive and answering afterwards, and no actor was
  restarted (``/health``: every actor's ``restarts`` is 0);
- nothing of a refused request was stored: the daemon holds exactly as many
  observations as were acked with a 201.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from knhkd.cli.openapi import generate
from tests.integration.conftest import RunningDaemon

pytestmark = pytest.mark.integration

BUDGET = int(os.environ.get("KNHKD_FUZZ_BUDGET", "600"))
# Small enough that oversize bodies are cheap to send.
MAX_BODY = 65536
CONFIG = f"""
[http]
max_body_bytes = {MAX_BODY}
max_batch_items = 64
"""
NDJSON = ("application/x-ndjson", "application/jsonl", "application/json-seq")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
SETTINGS = settings(
    max_examples=BUDGET,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)


@schemathesis.serializer(*NDJSON)
def _ndjson(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    # The document gives NDJSON bodies as strings; anything else as JSON lines.
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    items = value if isinstance(value, list) else [value]
    return b"\n".join(json.dumps(i).encode() for i in items)


@dataclass
class Ledger:
    """Observations acked with a 201: what the store must hold, exactly."""

    acked: int = 0

    def record(self, method: str, path: str, status: int, body: bytes) -> None:
        if method == "POST" and path == "/api/v1/observations" and status == 201:
            doc = json.loads(body)
            self.acked += doc.get("count", 1)


def _observation_count(d: RunningDaemon) -> int:
    return int(json.loads(d.ctl("status", "--format", "json").stdout)["observations"])


def _assert_unharmed(d: RunningDaemon, ledger: Ledger, before: int) -> None:
    assert d.proc is not None and d.proc.poll() is None, d.log()
    with d.client() as c:
        health = c.get("/health").json()
        assert c.get("/ready").status_code == 200
    restarted = {name: a["restarts"] for name, a in health["actors"].items() if a["restarts"]}
    assert restarted == {}, (restarted, d.log()[-4000:])
    assert _observation_count(d) == before + ledger.acked


@pytest.fixture
def fuzzed(make_daemon) -> RunningDaemon:  # type: ignore[no-untyped-def]
    # With an issuer, and an administrator's token on every request: the fuzz
    # reaches every route's own handling, not just the 401/403 at the door.
    return make_daemon(CONFIG, auth=True)  # type: ignore[no-any-return]


def test_schemathesis_over_the_served_document(fuzzed: RunningDaemon) -> None:
    with fuzzed.client() as c:
        served = c.get("/openapi.json")
    assert served.status_code == 200
    # The fuzz configuration changes no [limits]: the served routes and
    # schemas are the committed ones, so what is fuzzed is what is published.
    committed = json.loads(generate())
    for part in ("paths", "components"):
        assert served.json()[part] == committed[part]
    schema = schemathesis.openapi.from_dict(served.json())
    strategy = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)
    )
    ledger = Ledger()
    before = _observation_count(fuzzed)
    statuses: dict[int, int] = {}
    admin = fuzzed.headers("administrator")

    @SETTINGS
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=fuzzed.base, timeout=30, headers=admin)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        ledger.record(case.method.upper(), case.path, response.status_code, response.content)
        case.validate_response(response, checks=CHECKS)

    run()
    print("schemathesis statuses", sorted(statuses.items()), "acked", ledger.acked)
    _assert_unharmed(fuzzed, ledger, before)
    # The fuzz reached past the edge: some requests were accepted.
    assert any(200 <= s < 300 for s in statuses), statuses


# --------------------------------------------------------------------------- #
# Hostile bodies
# --------------------------------------------------------------------------- #

GOOD = {"event_type": "fuzz.ok", "sector": "generic", "value": 1, "metadata": {}}


def _obs(value: bytes) -> bytes:
    return b'{"event_type":"fuzz.v","sector":"generic","metadata":{},"value":' + value + b"}"


ints = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=2**63, max_value=2**200),
    st.integers(min_value=-(2**200), max_value=-(2**63) - 1),
).map(lambda n: str(n).encode())
literals = st.sampled_from(
    [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"nan", b"1e308", b"-0.0"]
)
strings = st.one_of(
    st.sampled_from(
        [b'"\\ud800"', b'"\\udc00"', b'"a\\ud800b"', b'"\\ud83d\\ude00"', b'"\xff"',
         b'"\xed\xa0\x80"', b'"\xc0\xaf"', b'"\x00"', b'"\\u0000"']
    ),
    st.text(max_size=40).map(lambda s: json.dumps(s).encode()),
)


def nested(depth: int, leaf: bytes, obj: bool) -> bytes:
    if obj:
        return b'{"k":' * depth + leaf + b"}" * depth
    return b"[" * depth + leaf + b"]" * depth


deep = st.builds(nested, st.integers(1, 3000), st.one_of(ints, literals, strings), st.booleans())
values = st.one_of(ints, literals, strings, deep)


@st.composite
def hostile(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """(path, content type, body) of one hostile request."""
    kind = draw(
        st.sampled_from(["one", "array", "ndjson", "detect", "proposal", "oversize", "media"])
    )
    value = draw(values)
    good = json.dumps(GOOD).encode()
    if kind == "one":
        return "/api/v1/observations", "application/json", _obs(value)
    if kind == "array":
        items = [good] * draw(st.integers(0, 3)) + [_obs(value)]
        return "/api/v1/observations", "application/json", b"[" + b",".join(items) + b"]"
    if kind == "ndjson":
        lines = [good] * draw(st.integers(1, 4))
        lines.insert(draw(st.integers(0, len(lines))), _obs(value) if draw(st.booleans())
                     else draw(st.binary(max_size=30)))
        return "/api/v1/observations", draw(st.sampled_from(NDJSON)), b"\n".join(lines)
    if kind == "detect":
        return "/api/v1/patterns/detect", "application/json", b"[" + _obs(value) + b"]"
    if kind == "proposal":
        field = draw(st.sampled_from(["estimated_ticks", "confidence", "description", "zz"]))
        body = (b'{"sector":"generic","description":"fuzz","delta":{"remove":[],"add":[]},"'
                + field.encode() + b'":' + value + b"}")
        path = draw(st.sampled_from(["/api/v1/proposals", "/api/v1/proposals/validate"]))
        return path, "application/json", body
    if kind == "media":
        # A valid body a browser could send across sites: never taken.
        ctype = draw(st.sampled_from(
            ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b",
             "application/json; charset=utf-16", "application/xml", ""]
        ))
        return "/api/v1/observations", ctype, good
    filler = b" " * (MAX_BODY + draw(st.integers(1, 4096)))
    return "/api/v1/observations", "application/json", good[:-1] + filler + b"}"


def test_hostile_bodies_are_refused_and_harm_nothing(fuzzed: RunningDaemon) -> None:
    ledger = Ledger()
    before = _observation_count(fuzzed)
    seen: dict[int, int] = {}

    with fuzzed.client() as c:

        @SETTINGS
        @given(request=hostile())
        def run(request: tuple[str, str, bytes]) -> None:
            path, ctype, body = request
            r = c.post(path, content=body, headers={"content-type": ctype} if ctype else {})
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert r.status_code < 500, (r.status_code, r.text, body[:200])
            if r.status_code >= 400:
                assert r.headers["content-type"] == "application/problem+json"
            ledger.record("POST", path, r.status_code, r.content)

        run()
    print("hostile statuses", sorted(seen.items()), "acked", ledger.acked)
    _assert_unharmed(fuzzed, ledger, before)
    # Both kinds of answer were exercised.
    assert any(s >= 400 for s in seen) and any(s < 300 for s in seen), seen
