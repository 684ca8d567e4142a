"""Knowledge snapshots: the list, the current one, a diff, and rollback to the
current one's parent (409 ``rollback-refused`` at genesis; its receipt names
the caller)"""

from __future__ import annotations

from typing import TypedDict

from quart import Blueprint, Response

from knhkd.api.routes.base import current_principal, daemon, json
from knhkd.api.routes.doc import Answer, RouteDoc, documented
from knhkd.model import Snapshot, Triple

bp = Blueprint("snapshots", __name__)


class SnapshotList(TypedDict):
    current: str
    snapshots: list[Snapshot]


# The keys of Daemon.snapshot_diff's answer ("from" is a keyword: the
# functional form).
SnapshotDiff = TypedDict(
    "SnapshotDiff",
    {"from": Snapshot, "to": Snapshot, "removed": list[Triple], "added": list[Triple]},
)


@bp.get("/api/v1/snapshots")
@documented(
    RouteDoc(
        summary="Every knowledge snapshot, and which is current",
        answers=(Answer(200, "The snapshots", SnapshotList),),
        tags=("snapshots",),
    )
)
async def list_snapshots() -> Response:
    d = daemon()
    answer: SnapshotList = {
        "current": d.knowledge.current.snapshot_id,
        "snapshots": d.list_snapshots(),
    }
    return json(answer)


@bp.get("/api/v1/snapshots/current")
@documented(
    RouteDoc(
        summary="The current snapshot",
        answers=(Answer(200, "The snapshot", Snapshot),),
        tags=("snapshots",),
    )
)
async def current_snapshot() -> Response:
    return json(daemon().knowledge.current)


@bp.post("/api/v1/snapshots/rollback")
@documented(
    RouteDoc(
        summary="Make the current snapshot's parent current",
        answers=(Answer(200, "The snapshot now current", Snapshot),),
        problems=((409, "rollback-refused"),),
        writes=True,
        tags=("snapshots",),
    )
)
async def rollback() -> Response:
    return json(await daemon().rollback(current_principal()))


@bp.get("/api/v1/snapshots/<a>/diff/<b>")
@documented(
    RouteDoc(
        summary="Triples removed and added between two snapshots",
        answers=(Answer(200, "The difference", SnapshotDiff),),
        problems=((404, "not-found"),),
        tags=("snapshots",),
    )
)
async def snapshot_diff(a: str, b: str) -> Response:
    return json(daemon().snapshot_diff(a, b))
