"""A daemon-shaped stand-in: the HTTP stack of knhkd with no storage behind it.

Serves the same stack as the daemon (QuartTrio on Hypercorn's trio worker, served
programmatically, shutdown on SIGTERM) with the command line of ``knhkd run``, so
``bench/ingest.py --daemon-cmd "python bench/standin_app.py"`` measures the HTTP
ceiling on this machine: what ingest could reach if durability cost nothing.

- ``GET /ready`` → 200; ``POST /api/v1/_noop`` → 200 ``{}``;
- ``POST /api/v1/observations`` decodes the body as one ``ObservationIn`` (msgspec,
  as the daemon does) and answers 201 ``{"id": ...}`` without storing anything.

Must never be mistaken for the daemon: it stores nothing and its 201 is a lie
that only a benchmark may be told.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import signal
import sys

import hypercorn.trio
import msgspec
import trio
from hypercorn.config import Config as HypercornConfig
from quart import Response, request
from quart_trio import QuartTrio

from knhkd.model import ObservationIn

JSON = "application/json"


def create_app() -> QuartTrio:
    app = QuartTrio("standin")
    decoder = msgspec.json.Decoder(ObservationIn)
    seq = itertools.count(1)

    @app.get("/ready")
    async def ready() -> Response:
        return Response(b'{"ready":true}', status=200, content_type=JSON)

    @app.post("/api/v1/_noop")
    async def noop() -> Response:
        await request.get_data(cache=False, as_text=False)
        return Response(b"{}", status=200, content_type=JSON)

    @app.post("/api/v1/observations")
    async def ingest() -> Response:
        body = await request.get_data(cache=False, as_text=False)
        try:
            decoder.decode(body)
        except msgspec.ValidationError as exc:
            return Response(msgspec.json.encode({"detail": str(exc)}), 422, content_type=JSON)
        except msgspec.DecodeError as exc:
            return Response(msgspec.json.encode({"detail": str(exc)}), 400, content_type=JSON)
        return Response(msgspec.json.encode({"id": f"standin-{next(seq)}"}), 201, content_type=JSON)

    return app


async def serve(bind: str) -> None:
    cfg = HypercornConfig()
    cfg.bind = [bind]
    cfg.accesslog = None

    async def shutdown_trigger() -> None:
        # hypercorn.trio.serve installs no signal handlers (PLATFORM_NOTES).
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                return

    # As the daemon does after start-up (PLATFORM_NOTES, CPython GC).
    gc.collect()
    gc.freeze()
    await hypercorn.trio.serve(create_app(), cfg, shutdown_trigger=shutdown_trigger)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="standin_app")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--config", help="ignored (accepted for knhkd compatibility)")
    run.add_argument("--data-dir", help="ignored: the stand-in stores nothing")
    run.add_argument("--http-bind", default="127.0.0.1:8080")
    args = p.parse_args(argv)
    trio.run(serve, args.http_bind)
    return 0


if __name__ == "__main__":
    sys.exit(main())
