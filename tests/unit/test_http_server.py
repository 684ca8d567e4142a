"""knhkd/api/server.py leans on Hypercorn internals: fail loudly when they move."""

from __future__ import annotations

import inspect
from importlib.metadata import version

from hypercorn.trio import run as hypercorn_run
from hypercorn.trio import tcp_server
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.worker_context import WorkerContext

from knhkd.api import server


def test_hypercorn_is_the_pinned_version() -> None:
    assert version("hypercorn") == server.HYPERCORN_VERSION, (
        "Hypercorn changed: re-read hypercorn/trio/tcp_server.py and run.py against "
        "knhkd/api/server.py, then move HYPERCORN_VERSION"
    )


def test_the_internals_server_py_overrides_still_have_their_shape() -> None:
    tcp = tcp_server.TCPServer
    assert list(inspect.signature(tcp.__init__).parameters) == [
        "self", "app", "config", "context", "state", "stream",
    ]  # fmt: skip
    for name in ("run", "protocol_send", "_read_data", "_close", "_idle_timeout",
                 "_initiate_server_close"):  # fmt: skip
        assert inspect.iscoroutinefunction(getattr(tcp, name)), name
    source = inspect.getsource(tcp.run)
    # run() starts the idle watcher once, from the connection's task, then reads.
    assert "self.idle_task.restart(self._task_group, self._idle_timeout)" in source
    assert "await self._read_data()" in source and "await self._close()" in source
    assert tcp_server.MAX_RECV == 2**16
    assert list(inspect.signature(Lifespan.__init__).parameters) == [
        "self", "app", "config", "state",
    ]  # fmt: skip
    context = WorkerContext(None)
    assert hasattr(context, "terminated") and hasattr(context, "terminate")
    # serve() re-does worker_serve: its listeners, TCPServer and graceful timeout.
    worker = inspect.getsource(hypercorn_run.worker_serve)
    for piece in ("trio.serve_listeners", "TCPServer", "context.terminated.set()",
                  "config.graceful_timeout", "lifespan.wait_for_shutdown()"):  # fmt: skip
        assert piece in worker, piece


def test_body_reservation() -> None:
    cap = 1000
    assert server.body_reservation([], cap) == 0
    assert server.body_reservation([(b"content-length", b"10")], cap) == 10
    assert server.body_reservation([(b"Content-Length", b"1000")], cap) == 1000
    # Over the cap: refused by Quart before it is buffered.
    assert server.body_reservation([(b"content-length", b"1001")], cap) == 0
    assert server.body_reservation([(b"transfer-encoding", b"chunked")], cap) == cap
