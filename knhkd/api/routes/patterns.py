"""Patterns: the loop's detections, and a dry run of the detectors over a
request's own observations (nothing stored)."""

from __future__ import annotations

from quart import Blueprint, Response

from knhkd.api.routes.base import body, daemon, int_arg, json
from knhkd.api.routes.doc import Answer, Param, RouteDoc, documented
from knhkd.model import DetectedPattern, ObservationIn
from knhkd.monitor.decode import decode_detect

bp = Blueprint("patterns", __name__)


@bp.post("/api/v1/patterns/detect")
@documented(
    RouteDoc(
        summary="Run the detectors over these observations alone (nothing stored)",
        body=list[ObservationIn],
        body_optional=True,
        answers=(Answer(200, "The patterns found", list[DetectedPattern]),),
        problems=((400, "malformed-json"), (422, "invalid-observation")),
        tags=("patterns",),
    )
)
async def detect() -> Response:
    d = daemon()
    return json(d.detect(decode_detect(await body(), d.cfg.limits)))


@bp.get("/api/v1/patterns")
@documented(
    RouteDoc(
        summary="Patterns the loop detected, newest first",
        params=(Param("limit", "How many at most", 1, 1000, 100),),
        answers=(Answer(200, "The patterns", list[DetectedPattern]),),
        problems=((400, "invalid-parameter"),),
        tags=("patterns",),
    )
)
async def list_patterns() -> Response:
    return json(daemon().list_patterns(limit=int_arg("limit", 100, lo=1, hi=1000)))
