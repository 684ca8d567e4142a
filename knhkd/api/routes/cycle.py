"""The MAPE-K loop on demand: run one cycle now and answer with its report
(500 ``cycle-failed`` with the reason if it could not complete); its
``cycle_completed`` receipt names the caller."""

from __future__ import annotations

from quart import Blueprint, Response

from knhkd.api.routes.base import current_principal, daemon, json
from knhkd.api.routes.doc import Answer, RouteDoc, documented
from knhkd.model import CycleReport

bp = Blueprint("cycle", __name__)


@bp.post("/api/v1/mape-k/execute")
@documented(
    RouteDoc(
        summary="Run one MAPE-K cycle now",
        answers=(Answer(200, "The cycle's report", CycleReport),),
        problems=((500, "cycle-failed"),),
        writes=True,
        tags=("cycle",),
    )
)
async def run_cycle() -> Response:
    return json(await daemon().run_cycle(current_principal()))
