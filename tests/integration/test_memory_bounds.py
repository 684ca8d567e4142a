"""Slow uploads cannot pin the daemon's memory; connections are limited.

Each reproducer talks raw HTTP/1.1 to the real daemon on 127.0.0.1 and reads
its resident memory with psutil. Bounds follow from the configured limits
(README.md, "Memory"), never from timings.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from typing import Any

import httpx
import psutil
import pytest

from tests.integration.conftest import RunningDaemon, read_until_eof

pytestmark = pytest.mark.integration

MIB = 1_048_576
BODY = 1_000_000
UPLOADS = 100
MAX_CONNECTIONS = 64
BUDGET = 8 * MIB
# README.md, "Memory": growth under held uploads stays within
# 2 x max_inflight_body_bytes + max_connections x 256 KiB, plus this much for
# the interpreter's own churn (measured growth here: ~16 MiB).
SLACK = 16 * MIB
BOUND = 2 * BUDGET + MAX_CONNECTIONS * 256 * 1024 + SLACK
# After they close: back near the baseline (measured: 1-5 MiB over it; the
# daemon without the limits kept ~60 MiB).
RETURNED = 32 * MIB


def _rss(d: RunningDaemon) -> int:
    assert d.proc is not None
    return int(psutil.Process(d.proc.pid).memory_info().rss)


def _head(length: int) -> bytes:
    return (
        "POST /api/v1/observations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


class _Upload:
    """One connection sending a body one byte short of its Content-Length."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setblocking(False)
        self.sock.connect_ex(("127.0.0.1", port))
        self.pending = memoryview(_head(BODY + 1) + b" " * BODY)
        self.answer = b""

    def pump(self) -> None:
        try:
            while self.pending:
                self.pending = self.pending[self.sock.send(self.pending[:65536]) :]
        except (BlockingIOError, OSError):
            pass
        with contextlib.suppress(BlockingIOError, OSError):
            self.answer += self.sock.recv(65536)


def _pump_for(uploads: list[_Upload], seconds: float, d: RunningDaemon, peak: int) -> int:
    sel = selectors.DefaultSelector()
    for u in uploads:
        sel.register(u.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, u)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=0.05):
            key.data.pump()
        peak = max(peak, _rss(d))
    sel.close()
    return peak


def test_slow_uploads_do_not_pin_memory(make_daemon: Any) -> None:
    d: RunningDaemon = make_daemon(
        f"[http]\nmax_connections = {MAX_CONNECTIONS}\nmax_inflight_body_bytes = {BUDGET}\n"
    )
    with d.client() as c:
        assert c.get("/health").status_code == 200
    baseline = _rss(d)
    uploads = [_Upload(d.port) for _ in range(UPLOADS)]
    try:
        peak = _pump_for(uploads, 3.0, d, baseline)
        # A normal request is served during the flood (it may wait for a slot).
        with d.client() as c:
            assert c.get("/health").status_code == 200
        peak = _pump_for(uploads, 1.0, d, peak)
        answers = [u.answer for u in uploads]
    finally:
        for u in uploads:
            u.sock.close()
    assert peak - baseline < BOUND, f"RSS grew {(peak - baseline) / MIB:.0f} MiB"
    refused = [a for a in answers if a]
    # Only what fits the budget is held; the rest was refused before its body was read.
    assert len(answers) - len(refused) <= BUDGET // BODY
    assert all(a.startswith(b"HTTP/1.1 503") and b"overloaded" in a for a in refused)
    assert all(b"retry-after" in a.lower() and b"connection: close" in a.lower() for a in refused)
    # Memory goes back once the uploads are gone.
    deadline = time.monotonic() + 30
    while _rss(d) > baseline + RETURNED and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _rss(d) <= baseline + RETURNED, f"RSS {(_rss(d) - baseline) / MIB:.0f} MiB over baseline"
    with d.client() as c:
        assert c.get("/health").status_code == 200


def test_connections_past_the_limit_wait_for_a_slot(make_daemon: Any) -> None:
    d: RunningDaemon = make_daemon("[http]\nmax_connections = 2\n")
    idle = [socket.create_connection(("127.0.0.1", d.port)) for _ in range(2)]
    waiting = socket.create_connection(("127.0.0.1", d.port))
    try:
        waiting.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        waiting.settimeout(1.0)
        with pytest.raises(socket.timeout):
            waiting.recv(100)  # not accepted while two connections are open
        idle[0].close()
        waiting.settimeout(30.0)
        assert waiting.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        for s in (*idle, waiting):
            s.close()


def test_a_body_over_the_cap_is_refused_before_it_is_read(make_daemon: Any) -> None:
    d: RunningDaemon = make_daemon("[http]\nmax_body_bytes = 65536\n")
    with socket.create_connection(("127.0.0.1", d.port)) as s:
        s.sendall(_head(10 * MIB))  # announced, never sent
        answer = read_until_eof(s)
    assert answer.startswith(b"HTTP/1.1 413") and b"payload-too-large" in answer
    # Chunked: cut off at the cap, and the client still writing reads its answer.
    with socket.create_connection(("127.0.0.1", d.port)) as s:
        s.sendall(
            b"POST /api/v1/observations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (32768, b" " * 32768)
        s.sendall(chunk * 4)  # 128 KiB, over the cap, and more of it unread
        answer = read_until_eof(s)
    assert answer.startswith(b"HTTP/1.1 413") and b"payload-too-large" in answer
    assert httpx.get(d.base + "/health", timeout=30).status_code == 200
