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

from prometheus_client import CONTENT_TYPE_LATEST
from quart import Blueprint, Response, request

from knhkd.api.problems import NotReady
from knhkd.api.routes.base import JSON, daemon, json

bp = Blueprint("health", __name__)
bench = Blueprint("bench", __name__)


@bp.get("/health")
async def health() -> Response:
    report = daemon().health()
    return json(report, 200 if report.status == "healthy" else 503)


@bp.get("/ready")
async def ready() -> Response:
    d = daemon()
    if not d.ready or d.draining:
        raise NotReady("knhkd is starting or draining")
    refused = d.writes_refused()
    if refused:
        return json({"ready": False, "reads": True, "writes": False, "refused": refused}, 503)
    return json({"ready": True})


@bp.get("/metrics")
async def metrics() -> Response:
    return Response(daemon().metrics_text(), status=200, content_type=CONTENT_TYPE_LATEST)


@bench.post("/api/v1/_noop")
async def noop() -> Response:
    # The stack's baseline for bench/: same server, no work.
    await request.get_data(cache=False, as_text=False)
    return Response(b"{}", status=200, content_type=JSON)
