"""A connection is closed only when the answer before the close says so.

RFC 9112 §9.6: a server that closes a connection after an answer sends
``Connection: close`` in it; a keep-alive client otherwise sends its next
request into the close and loses it. Hypercorn closes whenever it answers
before the client has sent the request's whole body, and says nothing
(api/server.py ``_AnnouncedClose`` says it). The daemon reads and drops the
body of a 404 or 405 (api/http.py), as a worker reads every body it
forwards, so those keep the connection whatever the timing.

Black box, raw sockets (a client library would hide a close or retry): the
answers a connection gets, whether each says ``close``, and whether the
daemon then closed it.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any

import pytest

from tests.integration.conftest import RunningDaemon
from tests.integration.test_workers import _with_workers

pytestmark = pytest.mark.integration

OBS = b'{"event_type":"a.b","sector":"generic","value":1,"metadata":{}}'
NEXT = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _head(method: str, path: str, length: int) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


class _Conn:
    """One raw connection; ``answers`` parses what it has received so far."""

    def __init__(self, d: RunningDaemon) -> None:
        self.sock = socket.create_connection(("127.0.0.1", d.port), timeout=10.0)
        self.data = b""
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_answers(self, n: int, quiet_s: float = 5.0) -> list[tuple[int, bool]]:
        """Read until ``n`` whole answers are in (or the daemon closes, or is
        quiet for ``quiet_s`` after the last byte): [(status, says close)]."""
        deadline = time.monotonic() + 15.0
        while len(_answers(self.data)) < n and not self.eof and time.monotonic() < deadline:
            self.sock.settimeout(quiet_s if self.data else 10.0)
            try:
                got = self.sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                self.eof = True
                break
            if not got:
                self.eof = True
            self.data += got
        return _answers(self.data)

    def closed_by_daemon(self) -> bool:
        """Whether the daemon closes the connection within a few seconds."""
        if self.eof:
            return True
        self.sock.settimeout(3.0)
        try:
            while got := self.sock.recv(65536):
                self.data += got
        except TimeoutError:
            return False
        except ConnectionResetError:
            pass
        self.eof = True
        return True

    def close(self) -> None:
        self.sock.close()


def _answers(data: bytes) -> list[tuple[int, bool]]:
    out = []
    while data.startswith(b"HTTP/1.1 "):
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        headers = [line.split(b":", 1) for line in lines[1:]]
        fields = {k.strip().lower(): v.strip().lower() for k, v in headers}
        length = int(fields.get(b"content-length", b"0"))
        if len(rest) < length:
            break
        out.append((int(lines[0].split()[1]), fields.get(b"connection") == b"close"))
        data = rest[length:]
    return out


@pytest.fixture(params=[1, 2], ids=["daemon", "workers"])
def daemon(request: Any, make_daemon: Any) -> RunningDaemon:
    if request.param == 1:
        return make_daemon()  # type: ignore[no-any-return]
    return _with_workers(make_daemon)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("PUT", "/api/v1/observations", 405), ("POST", "/api/v1/nowhere", 404)],
)
def test_a_404_or_405_with_a_late_body_keeps_the_connection(
    daemon: RunningDaemon, method: str, path: str, status: int
) -> None:
    """The body's second half arrives after the daemon has routed the
    request: the answer waits for it, and the connection serves the next
    request."""
    c = _Conn(daemon)
    try:
        c.send(_head(method, path, len(OBS)) + OBS[:10])
        time.sleep(0.3)
        c.send(OBS[10:] + NEXT)
        assert c.read_answers(2) == [(status, False), (200, False)]
        assert not c.eof
    finally:
        c.close()


def test_an_answer_before_the_body_says_close_and_closes(make_daemon: Any) -> None:
    """A route that never reads a body (``GET /health``) answers while the
    client is still sending one: the answer says ``Connection: close``, and
    the daemon closes. (With workers, a worker reads the whole body before it
    forwards: nothing is answered early there.)"""
    d = make_daemon()
    c = _Conn(d)
    try:
        c.send(_head("GET", "/health", 1000) + b"x" * 10)
        assert c.read_answers(1) == [(200, True)]
        assert c.closed_by_daemon()
    finally:
        c.close()


def test_no_connection_is_closed_unannounced(daemon: RunningDaemon) -> None:
    """Whatever the timing of body and answer (refusals before the body,
    routing errors, accepted writes, a body too large), every answer either
    says ``close`` and is the last, or the connection answers the next
    request."""
    too_big = b"x" * (2 * 1_048_576)
    ingest = _head("POST", "/api/v1/observations", len(OBS)) + OBS
    cases = [
        (ingest, 201),
        (_head("POST", "/api/v1/observations", 5) + b"{nope", 400),
        (_head("PUT", "/api/v1/observations", len(OBS)) + OBS, 405),
        (_head("POST", "/api/v1/nowhere", len(OBS)) + OBS, 404),
        (ingest.replace(b"application/json", b"text/plain"), 415),
        (_head("POST", "/api/v1/observations", len(too_big)) + too_big, 413),
        (_head("GET", "/health", len(OBS)) + OBS, 200),
    ]
    for round_ in range(5):
        for request, want in cases:
            c = _Conn(daemon)
            try:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
                    c.send(request + NEXT)  # refused mid-upload: see what was answered
                got = c.read_answers(2)
                where = f"round {round_}, {want}: {got}"
                assert got and got[0][0] == want, where
                if got[0][1]:  # says close
                    assert len(got) == 1 and c.closed_by_daemon(), where
                else:
                    assert got[1:] == [(200, False)], where
            finally:
                c.close()
