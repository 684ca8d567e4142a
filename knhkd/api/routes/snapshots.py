"""Knowledge snapshots: the list, the current one, a diff, and rollback to the
current one's parent (409 ``rollback-refused`` at genesis)."""

from __future__ import annotations

from quart import Blueprint, Response

from knhkd.api.routes.base import daemon, json

bp = Blueprint("snapshots", __name__)


@bp.get("/api/v1/snapshots")
async def list_snapshots() -> Response:
    d = daemon()
    return json({"current": d.knowledge.current.snapshot_id, "snapshots": d.list_snapshots()})


@bp.get("/api/v1/snapshots/current")
async def current_snapshot() -> Response:
    return json(daemon().knowledge.current)


@bp.post("/api/v1/snapshots/rollback")
async def rollback() -> Response:
    return json(await daemon().rollback())


@bp.get("/api/v1/snapshots/<a>/diff/<b>")
async def snapshot_diff(a: str, b: str) -> Response:
    return json(daemon().snapshot_diff(a, b))
