"""Health, readiness and metrics; and the no-op route bench/ measures the
stack against (registered only with ``http.noop_endpoint``).

Guarantees: ``/health`` is 503 when degraded; ``/ready`` is 503
``not-ready`` while starting or draining; ``/metrics`` refreshes
``knhk_health_status`` before it renders.
"""

from __future__ import annotations

from typing import TypedDict

from prometheus_client import CONTENT_TYPE_LATEST
from quart import Blueprint, Response, request

from knhkd.api.problems import NotReady
from knhkd.api.routes.base import JSON, daemon, json
from knhkd.api.routes.doc import Answer, RouteDoc, documented
from knhkd.model import Health

bp = Blueprint("health", __name__)
bench = Blueprint("bench", __name__)


class Readiness(TypedDict):
    ready: bool


@bp.get("/health")
@documented(
    RouteDoc(
        summary="Health: the daemon's dependencies and actors",
        answers=(
            Answer(200, "Healthy", Health),
            Answer(503, "Degraded (the same document)", Health),
        ),
        tags=("operations",),
    )
)
async def health() -> Response:
    report = daemon().health()
    return json(report, 200 if report.status == "healthy" else 503)


@bp.get("/ready")
@documented(
    RouteDoc(
        summary="Readiness: 503 while starting or draining",
        answers=(Answer(200, "Ready", Readiness),),
        problems=((503, "not-ready"),),
        tags=("operations",),
    )
)
async def ready() -> Response:
    d = daemon()
    if d.ready and not d.draining:
        answer: Readiness = {"ready": True}
        return json(answer)
    raise NotReady("knhkd is starting or draining")


@bp.get("/metrics")
@documented(
    RouteDoc(
        summary="Prometheus metrics (text exposition format)",
        answers=(Answer(200, "The metrics", str, CONTENT_TYPE_LATEST),),
        tags=("operations",),
    )
)
async def metrics() -> Response:
    return Response(daemon().metrics_text(), status=200, content_type=CONTENT_TYPE_LATEST)


@bench.post("/api/v1/_noop")
@documented(
    RouteDoc(
        summary="No work: the stack's baseline for bench/ (only with http.noop_endpoint)",
        answers=(Answer(200, "An empty object", dict[str, str]),),
        tags=("operations",),
    )
)
async def noop() -> Response:
    # The stack's baseline for bench/: same server, no work.
    await request.get_data(cache=False, as_text=False)
    return Response(b"{}", status=200, content_type=JSON)
