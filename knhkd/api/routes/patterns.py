"""Patterns: the loop's detections, and a dry run of the detectors over a
request's own observations (nothing stored)."""

from __future__ import annotations

from quart import Blueprint, Response

from knhkd.api.routes.base import body, daemon, int_arg, json
from knhkd.monitor.decode import decode_detect

bp = Blueprint("patterns", __name__)


@bp.post("/api/v1/patterns/detect")
async def detect() -> Response:
    return json(daemon().detect(decode_detect(await body())))


@bp.get("/api/v1/patterns")
async def list_patterns() -> Response:
    return json(daemon().list_patterns(limit=int_arg("limit", 100, lo=1, hi=1000)))
