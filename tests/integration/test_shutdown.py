"""SIGTERM: idle connections do not hold it, writers get answers, not resets."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from typing import Any

import pytest

from tests.integration.conftest import RunningDaemon, read_until_eof

pytestmark = pytest.mark.integration

# The graceful timeout is far longer than the test waits: exiting within the
# wait proves the idle connection did not hold the shutdown.
SLOW_GRACE = "[http]\ngraceful_timeout_s = 30\n[shutdown]\ntimeout_s = 60\n"
OBSERVATION = json.dumps(
    {"event_type": "drain.test", "sector": "generic", "value": 1, "metadata": {}}
).encode()


def _post_head(length: int) -> bytes:
    return (
        "POST /api/v1/observations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _wait_draining(d: RunningDaemon) -> None:
    deadline = time.monotonic() + 30
    while "shutting down" not in d.log():
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.05)


def test_an_idle_keep_alive_connection_does_not_hold_sigterm(make_daemon: Any) -> None:
    d: RunningDaemon = make_daemon(SLOW_GRACE)
    with socket.create_connection(("127.0.0.1", d.port)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        s.settimeout(30.0)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        try:
            assert d.proc.wait(timeout=20) == 0
        except subprocess.TimeoutExpired:
            pytest.fail("an idle keep-alive connection held SIGTERM")
        read_until_eof(s)  # the rest of the answer, then EOF: closed, not reset


def test_writers_during_drain_get_answers_not_resets(make_daemon: Any) -> None:
    d: RunningDaemon = make_daemon(SLOW_GRACE)
    assert d.proc is not None
    half = len(OBSERVATION) // 2
    with (
        socket.create_connection(("127.0.0.1", d.port)) as early,
        socket.create_connection(("127.0.0.1", d.port)) as held,
    ):
        # In flight when SIGTERM arrives: headers and half the body.
        early.sendall(_post_head(len(OBSERVATION)) + OBSERVATION[:half])
        time.sleep(0.2)  # let the daemon take the request in (not asserted)
        held.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        held.settimeout(30.0)
        assert held.recv(65536).startswith(b"HTTP/1.1 200")
        d.proc.send_signal(signal.SIGTERM)
        _wait_draining(d)
        # A new writer while draining streams its body in two parts, the
        # second after the daemon has answered: it reads the whole answer.
        with socket.create_connection(("127.0.0.1", d.port)) as late:
            late.sendall(_post_head(len(OBSERVATION)) + OBSERVATION[:half])
            late.settimeout(30.0)
            first = late.recv(65536, socket.MSG_PEEK)
            assert first.startswith(b"HTTP/1.1 503"), first
            late.sendall(OBSERVATION[half:])
            answer = read_until_eof(late)
        assert b"urn:knhkd:problem:draining" in answer
        assert b"connection: close" in answer.lower()
        # The request in flight at SIGTERM completes, and its answer says the
        # connection closes after it.
        early.sendall(OBSERVATION[half:])
        answer = read_until_eof(early)
        assert answer.startswith((b"HTTP/1.1 201", b"HTTP/1.1 503")), answer
        assert b"connection: close" in answer.lower(), answer
        if answer.startswith(b"HTTP/1.1 503"):
            assert b"draining" in answer
        # The idle keep-alive connection was closed, not reset.
        read_until_eof(held)
    assert d.proc.wait(timeout=30) == 0
