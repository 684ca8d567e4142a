"""Health, readiness and metrics; and the no-op route bench/ measures the
stack against (registered only with ``http.noop_endpoint``).

Guarantees: ``/health`` is 503 when degraded; ``/ready`` is 503
``not-ready`` while starting or draining, and 503 with
``{"ready": false, "reads": true, "writes": false, "refused": {cause: detail}}``
while the store refuses writes (storage full, ...): a balancer stops sending
work, an operator sees that reads are served and why writes are not;
``/metrics`` refreshes ``knhk_health_status`` before it renders.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

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
    # Only while the store refuses writes (503): reads are served, writes
    # are not, and why (cause -> detail).
    reads: NotRequired[bool]
    writes: NotRequired[bool]
    refused: NotRequired[dict[str, str]]


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
        summary="Readiness: 503 while starting or draining, or while writes are refused",
        answers=(
            Answer(200, "Ready", Readiness),
            Answer(503, "The store refuses writes (reads are served): why", Readiness),
        ),
        problems=((503, "not-ready"),),
        tags=("operations",),
    )
)
async def ready() -> Response:
    d = daemon()
    if not d.ready or d.draining:
        raise NotReady("knhkd is starting or draining")
    refused = d.writes_refused()
    if refused:
        answer: Readiness = {"ready": False, "reads": True, "writes": False, "refused": refused}
        return json(answer, 503)
    answer = {"ready": True}
    return json(answer)


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
