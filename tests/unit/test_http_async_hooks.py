"""Every hook, error handler and view of the HTTP app is a coroutine function.

Quart runs a plain function given to it in a trio worker thread, on every
request it applies to: one sync ``before_request`` hook cost a third of a
no-op request's CPU (a thread hand-off each way, and the GIL between them).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import msgspec

from knhkd.api.http import create_app
from knhkd.api.worker import LaneClient, WorkerFront
from knhkd.config import Config


def _callables(app: Any) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for kind in (
        "before_request_funcs",
        "after_request_funcs",
        "teardown_request_funcs",
        "url_value_preprocessors",
    ):
        for scope, funcs in getattr(app, kind).items():
            found += [(f"{kind}[{scope}] {f.__qualname__}", f) for f in funcs]
    for scope, by_code in app.error_handler_spec.items():
        for code, handlers in by_code.items():
            found += [(f"errorhandler[{scope}][{code}] {h.__qualname__}", h)
                      for h in handlers.values()]  # fmt: skip
    found += [(f"view {name}", f) for name, f in app.view_functions.items()]
    return found


def test_every_hook_and_view_is_async() -> None:
    cfg = Config()
    cfg = msgspec.structs.replace(cfg, http=msgspec.structs.replace(cfg.http, noop_endpoint=True))
    app = create_app(WorkerFront(cfg, LaneClient(Path("/nonexistent/lane.sock"))))
    found = _callables(app)
    names = [name for name, _ in found]
    # The app's own hooks are all seen (else this test checks nothing).
    assert any("_started" in n for n in names) and any("_route_attribute" in n for n in names)
    assert any("_count" in n for n in names) and any(n.startswith("view bench.") for n in names)
    sync = [name for name, f in found if not inspect.iscoroutinefunction(f)]
    assert sync == []
