"""Parity of the producers' lean path (api/edge.py: ``POST
/api/v1/observations`` and the bench's ``POST /api/v1/_noop`` served without
Quart) with the Quart app's route, three ways: a single-process daemon
(``http.workers = 1``: the edge in front of the daemon's app), a daemon with
two workers (``http.workers = 2``: the edge in each worker, in front of the
lane), and the Quart app itself of another such daemon, reached on its
private socket (api/workers.py ``http.sock``, where a worker forwards what it
does not serve: the route runs there through Quart's hooks and view).

Black box: the same requests, over real HTTP (httpx, and a raw socket where
httpx cannot say it), to real daemons on the same configuration; per
request the status, the problem document (or the 201/200 body with ids
replaced), the headers a client acts on (content-type, retry-after,
www-authenticate, allow, connection: close) and whether the connection still
carries a next request. Then, what the requests left behind: the audit
trail, the request / ingest / refusal counters of /metrics, and the access
and authorization log lines.

Left out (timing, not behaviour): the audit trail's order, times, peers and
folding, and the log lines' durations and trace ids. The peer
of a request on the private socket is ``<local>``, not 127.0.0.1: peers are
left out of the audit records and log lines compared.
"""

from __future__ import annotations

import glob
import json
import os
import re
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import RunningDaemon
from tests.integration.issuer import Issuer
from tests.integration.test_workers import _eventually, _with_workers

pytestmark = pytest.mark.integration

OBS = {"event_type": "line.tick", "value": {"n": 1}, "sector": "manufacturing", "metadata": {}}
INGEST = "/api/v1/observations"
NOOP = "/api/v1/_noop"
JSON_CT = {"content-type": "application/json"}
MAX_BATCH = 5
MAX_BODY = 4096
LIMITED = "limited"  # the subject whose bucket holds two requests
EXTRA = f"""
[http]
noop_endpoint = true
max_batch_items = {MAX_BATCH}
max_body_bytes = {MAX_BODY}

[auth.rate_limit]
rate_per_s = 0.0

[[auth.rate_limit.overrides]]
subject = "https://idp.test/realms/knhkd#{LIMITED}"
rate_per_s = 0.001
burst = 2

[telemetry]
access_log = true
# Every line is compared: none left out for the budget.
access_log_max_per_s = 0.0
"""
HEADERS = ("content-type", "retry-after", "www-authenticate", "allow")
# ULIDs (observation ids) and hex digests (receipt hashes) differ per daemon.
_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$|^[0-9a-f]{32,128}$")
# What differs between two runs of the same request in a log line.
_VARIES = re.compile(
    r"\b\d+(\.\d+)?ms\b|trace=[0-9a-f-]+|peer=\S+|\[worker \d+\]|(?<= from )\S+(?=: )"
)


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, str) and _ID.match(value):
        return "<id>"
    return value


def _port_of(r: httpx.Response) -> int | None:
    """The connection an answer came on (its socket's inode, TCP or Unix)."""
    stream = r.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    try:
        return os.fstat(sock.fileno()).st_ino if sock is not None else None
    except OSError:
        return None  # closed by then


def _seen(r: httpx.Response) -> dict[str, Any]:
    """What a client acts on in one answer."""
    try:
        body = r.json()
    except ValueError:
        body = r.text
    return {
        "status": r.status_code,
        "body": _scrub(body),
        "headers": {h: r.headers.get(h) for h in HEADERS},
        "close": r.headers.get("connection", "").lower() == "close",
    }


class Cases:
    """Every case is one fresh connection (with workers, any worker may take
    it): the request(s), then ``GET /health`` on the same client, which tells
    whether the connection was kept (the same local port) and still answers."""

    def __init__(self, d: RunningDaemon, issuer: Issuer, uds: str | None = None) -> None:
        self.d = d
        self.issuer = issuer
        self.uds = uds

    def token(self, *roles: str, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.issuer.token(*roles, **claims)}"}

    def one(self, send: Callable[[httpx.Client], list[httpx.Response]]) -> dict[str, Any]:
        transport = httpx.HTTPTransport(uds=self.uds) if self.uds else None
        with httpx.Client(base_url=self.d.base, timeout=30.0, transport=transport) as c:
            answers = send(c)
            port = _port_of(answers[-1])
            after = c.get("/health")
            kept = port is not None and _port_of(after) == port
        return {"answers": [_seen(r) for r in answers], "kept": kept, "next": after.status_code}

    def post(self, path: str = INGEST, role: str | None = "producer", **kw: Any) -> dict[str, Any]:
        headers = {**(self.token(role) if role else {}), **kw.pop("headers", {})}
        return self.one(lambda c: [c.post(path, headers=headers, **kw)])


def _chunks(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), 1000):
        yield data[i : i + 1000]


def _connect(d: RunningDaemon, uds: str | None) -> socket.socket:
    if uds is None:
        return socket.create_connection(("127.0.0.1", d.port), timeout=10.0)
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10.0)
    s.connect(uds)
    return s


def _raw(d: RunningDaemon, request: bytes, uds: str | None = None) -> list[tuple[str, str]]:
    """Status lines and bodies of every answer to ``request`` (which may hold
    several pipelined requests), until the daemon closes or goes quiet."""
    out = b""
    with _connect(d, uds) as s:
        s.sendall(request)
        s.settimeout(3.0)
        try:
            while data := s.recv(65536):
                out += data
                if out.count(b"HTTP/1.1 ") >= request.count(b" HTTP/1.1\r\n"):
                    # Every answer's head is in: read on until its body is.
                    s.settimeout(0.5)
        except TimeoutError:
            pass
    answers = []
    for part in out.split(b"HTTP/1.1 ")[1:]:
        head, _, body = part.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
        try:
            doc = _scrub(json.loads(body)) if body else None
        except ValueError:
            doc = body.decode("latin-1")
        answers.append(
            (lines[0], json.dumps([doc, {h: fields.get(h) for h in (*HEADERS, "connection")}]))
        )
    return answers


def _run(d: RunningDaemon, uds: str | None = None) -> dict[str, Any]:
    assert d.issuer is not None
    k = Cases(d, d.issuer, uds)
    one = json.dumps(OBS).encode()
    out: dict[str, Any] = {}
    # Accepted.
    out["single"] = k.post(json=OBS)
    out["array of 3"] = k.post(json=[OBS] * 3)
    out["ndjson of 2"] = k.post(
        content=one + b"\n" + one, headers={"content-type": "application/x-ndjson"}
    )
    out["charset utf-8"] = k.post(
        content=one, headers={"content-type": "application/json; charset=utf-8"}
    )
    out["+json"] = k.post(content=one, headers={"content-type": "application/foo+json"})
    out["query string"] = k.post(INGEST + "?x=1", json=OBS)
    # Refused for the body.
    out["empty"] = k.post(content=b"", headers=JSON_CT)
    out["malformed"] = k.post(content=b"{nope", headers=JSON_CT)
    out["missing field"] = k.post(json={"event_type": "x"})
    out["one bad in batch"] = k.post(json=[OBS, OBS, {**OBS, "sector": 3}, OBS])
    out["empty array"] = k.post(json=[])
    out["too many items"] = k.post(json=[OBS] * (MAX_BATCH + 1))
    out["bad ndjson line"] = k.post(
        content=one + b'\n{"event_type":"a"}', headers={"content-type": "application/x-ndjson"}
    )
    big = json.dumps([{**OBS, "value": "x" * 900}] * 5).encode()
    assert len(big) > MAX_BODY
    out["over max_body_bytes"] = k.post(content=big, headers=JSON_CT)
    out["over max_body_bytes chunked"] = k.post(content=_chunks(big), headers=JSON_CT)
    out["chunked, fits"] = k.post(content=_chunks(one), headers=JSON_CT)
    out["NUL in a string"] = k.post(json={**OBS, "event_type": "a\u0000b"})
    out["deep nesting"] = k.post(
        content=b'{"event_type":"a","sector":"generic","metadata":{},"value":'
        + b"[" * 200
        + b"]" * 200
        + b"}",
        headers=JSON_CT,
    )
    out["huge number"] = k.post(
        content=b'{"event_type":"a","sector":"generic","metadata":{},"value":1' + b"0" * 400 + b"}",
        headers=JSON_CT,
    )
    out["unknown sector"] = k.post(json={**OBS, "sector": "moon"})
    out["extra field"] = k.post(json={**OBS, "extra": 1})
    # Refused for the media type.
    out["text/plain"] = k.post(content=one, headers={"content-type": "text/plain"})
    out["no content type"] = k.post(content=one)
    out["charset latin-1"] = k.post(
        content=one, headers={"content-type": "application/json; charset=latin-1"}
    )
    # Refused at the edge.
    out["foreign host"] = k.post(json=OBS, headers={"Host": "evil.example"})
    out["foreign origin"] = k.post(json=OBS, headers={"Origin": "https://evil.example"})
    # Refused for who asks.
    out["no token"] = k.post(json=OBS, role=None)
    out["malformed authorization"] = k.post(
        json=OBS, role=None, headers={"Authorization": "Bearer"}
    )
    out["basic authorization"] = k.post(
        json=OBS, role=None, headers={"Authorization": "Basic dXNlcjpwdw=="}
    )
    out["garbage token"] = k.post(
        json=OBS, role=None, headers={"Authorization": "Bearer not.a.token"}
    )
    out["expired token"] = k.post(
        json=OBS, role=None, headers=k.token("producer", exp=int(time.time()) - 3600)
    )
    stranger = Issuer(name="https://idp.test/realms/knhkd", kid="k-unknown")
    out["unknown key"] = k.post(
        json=OBS, role=None, headers={"Authorization": f"Bearer {stranger.token('producer')}"}
    )
    out["lacks INGEST"] = k.post(json=OBS, role="observer")
    limited = k.token("producer", sub=LIMITED)
    # On one connection (the workers' shared buckets are
    # test_workers.py's test_a_principals_rate_limit_holds_across_the_workers).
    out["rate limited"] = k.one(
        lambda c: [c.post(INGEST, json=OBS, headers=limited) for _ in range(3)]
    )
    # The bench's no-op.
    out["noop"] = k.post(NOOP, json=OBS)
    out["noop no token"] = k.post(NOOP, json=OBS, role=None)
    out["noop text/plain"] = k.post(NOOP, content=one, headers={"content-type": "text/plain"})
    # Neighbours of the route (forwarded by a worker; here for completeness).
    out["GET"] = k.one(lambda c: [c.get(INGEST, headers=k.token("administrator"))])
    # A 405 or 404 with a body: the daemon reads and drops the body before it
    # answers (api/http.py), as a worker reads every body it forwards, so the
    # connection is kept in every mode.
    out["PUT"] = k.one(lambda c: [c.put(INGEST, json=OBS, headers=k.token("administrator"))])
    out["trailing slash"] = k.post(INGEST + "/", json=OBS)
    # Pipelined requests on one connection: a refusal that read the body keeps
    # it, the next request is answered; HTTP/1.0 ends with the answer.
    auth = f"Authorization: Bearer {k.issuer.token('producer')}\r\n".encode()
    head = b"POST " + INGEST.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth
    bad = b"{nope"
    out["raw pipelined"] = _raw(
        d,
        head + b"Content-Type: application/json\r\nContent-Length: 5\r\n\r\n" + bad
        + head + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(one) + one,
        uds,
    )  # fmt: skip
    # A request refused before its body was read, with a request pipelined
    # behind it: the refusal is answered (``Connection: close``), the next
    # request is not (api/server.py).
    out["raw refused, pipelined"] = _raw(
        d,
        head + b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(one) + one
        + head + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(one) + one,
        uds,
    )  # fmt: skip
    out["raw http/1.0"] = _raw(
        d,
        b"POST " + INGEST.encode() + b" HTTP/1.0\r\nHost: 127.0.0.1\r\n" + auth
        + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(one) + one,
        uds,
    )  # fmt: skip
    return out


COUNTED = (
    "knhk_requests_total",
    "knhk_observations_ingested_total",
    "knhk_ingest_rejected_total",
    "knhk_ingest_shacl_failures_total",
)


def _metrics(d: RunningDaemon) -> dict[str, float]:
    with d.client("operator") as c:
        text = c.get("/metrics").text
    found = {}
    for line in text.splitlines():
        if line.startswith(COUNTED):
            key, value = line.rsplit(" ", 1)
            found[key] = float(value)
    # Each look at /metrics (and the /health after each case) is a success
    # counted after it answered: the success class is compared through the
    # access log instead.
    return {k: v for k, v in found.items() if 'status="success"' not in k}


def _delta(now: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in now.items() if v != before.get(k, 0.0)}


def _grown(d: RunningDaemon, before: dict[str, float]) -> dict[str, float]:
    return _delta(_metrics(d), before)


def _audits(d: RunningDaemon) -> list[str]:
    """The HTTP entries of the audit trail, one per decision: the auditor
    folds identical decisions that meet in one group commit into one entry
    with a count, and how they meet is timing, not behaviour."""
    listed = d.ctl("audit", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    out = []
    for e in json.loads(listed.stdout):
        if e["route"].startswith("admin "):
            continue
        # When, where from (an ephemeral port), in which order (seq, the
        # receipt id) and folded with what: timing.
        kept = {
            k: v for k, v in e.items() if k not in ("id", "seq", "timestamp_ns", "peer", "count")
        }
        out += [json.dumps(kept, sort_keys=True)] * int(e["count"])
    return sorted(out)


def _settle(what: Callable[[], Any]) -> Any:
    """``what()`` once two looks a second apart agree (audit records are
    group-committed, a worker's counts come with its next lane message)."""
    last = what()
    deadline = time.monotonic() + 15.0
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = what()
        if now == last:
            return now
        last = now
    return last


def _log_lines(path: Path, start: int, end: int) -> Counter[str]:
    with path.open("rb") as fh:
        fh.seek(start)
        text = fh.read(end - start).decode(errors="replace")
    lines: Counter[str] = Counter()
    for line in text.splitlines():
        # The test's own looks at /metrics, as many as it took to settle.
        if " /metrics " in line:
            continue
        if " knhkd.http.access" in line or " knhkd.access" in line:
            lines[_VARIES.sub("", line).strip()] += 1
    return lines


def _private_socket(d: RunningDaemon) -> str:
    """The daemon's own app, where its workers forward (api/pool.py's
    runtime directory, named with the daemon's pid)."""
    assert d.proc is not None
    found = glob.glob(f"{tempfile.gettempdir()}/knhkd-front-{d.proc.pid}-*/http.sock")
    assert len(found) == 1, found
    return found[0]


def _through(
    d: RunningDaemon, uds: str | None, lane: bool, want: tuple[Any, ...] | None
) -> tuple[dict[str, Any], dict[str, float], list[str], Counter[str]]:
    """The answers ``d`` gives (on ``uds`` when given) and what they left
    behind: counter deltas, new audit entries, access and decision lines."""
    assert d.log_path is not None
    audits_before = Counter(_settle(partial(_audits, d)))
    before = _metrics(d)
    start = d.log_path.stat().st_size
    seen = _run(d, uds)

    def new_audits() -> list[str]:
        return sorted((Counter(_audits(d)) - audits_before).elements())

    if lane and want is not None:
        # A worker's counts and audit records reach the daemon with its
        # next lane message, just after its answer.
        delta = _eventually(partial(_grown, d, before), want[1])
        audits = _eventually(new_audits, want[2])
    else:
        delta = _settle(partial(_grown, d, before))
        audits = _settle(new_audits)
    # Every line is written before its answer is sent: all are in by now.
    logged = _log_lines(d.log_path, start, d.log_path.stat().st_size)
    return seen, delta, audits, logged


def test_the_lean_path_answers_and_leaves_traces_as_the_quart_app(make_daemon: Any) -> None:
    # The Quart app's own route first: what the others must match. On a
    # daemon of its own: the daemon's app and its workers share one table of
    # rate-limit buckets, and each path must meet the limited principal new.
    behind = _with_workers(make_daemon, extra_config=EXTRA, auth=True)
    quart = _through(behind, _private_socket(behind), lane=False, want=None)
    assert behind.stop() == 0
    through = _with_workers(make_daemon, extra_config=EXTRA, auth=True)
    alone: RunningDaemon = make_daemon(EXTRA, auth=True)
    got = {
        "the daemon alone": _through(alone, None, lane=False, want=quart),
        "a worker": _through(through, None, lane=True, want=quart),
    }
    assert quart[1] and quart[2] and quart[3]
    # What every path must match, held on its own where a mistake would be shared.
    refused = quart[0]["raw refused, pipelined"]
    assert [(status, json.loads(rest)[1]["connection"]) for status, rest in refused] == [
        ("415 ", "close")
    ]
    assert quart[0]["PUT"]["kept"] and quart[0]["trailing slash"]["kept"]
    for who, (seen, delta, audits, logged) in got.items():
        differ = {case: (quart[0][case], seen.get(case)) for case in quart[0]
                  if quart[0][case] != seen.get(case)}  # fmt: skip
        assert not differ, f"{who}: " + json.dumps(differ, indent=1)
        assert delta == quart[1], who
        assert audits == quart[2], who
        assert logged == quart[3], who
    assert through.stop() == 0
