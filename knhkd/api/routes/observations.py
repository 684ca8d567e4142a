"""Observations: ingest (one, a JSON array, or NDJSON) and read one back.

Guarantees: ``POST /api/v1/observations`` answers 201 only after the
observations are durably committed; a batch is all-or-nothing; with
``[ingest] shacl`` on, an observation that violates its sector's shapes is 422
``shacl-violation`` naming each offending item and nothing is stored; while
the daemon drains, 503 ``draining`` with ``Retry-After`` before the body is
read.
Reading a healthcare observation takes a justification header and a fresh
token (api/phi.py).
"""

from __future__ import annotations

from quart import Blueprint, Response, request

from knhkd.api.context import Front
from knhkd.api.phi import check_phi_read
from knhkd.api.routes.base import body, current_principal, daemon, front, json
from knhkd.api.routes.doc import Answer, RouteDoc, documented
from knhkd.errors import Invalid, Malformed, PayloadTooLarge
from knhkd.model import IngestAccepted, IngestBatchAccepted, Observation, ObservationIn
from knhkd.monitor.decode import NDJSON_TYPES, Decoded, decode_body

bp = Blueprint("observations", __name__)


@bp.post("/api/v1/observations")
@documented(
    RouteDoc(
        summary="Ingest one observation (a JSON object), or a batch (a JSON array or NDJSON)",
        body=ObservationIn | list[ObservationIn],
        extra_media=tuple(sorted(NDJSON_TYPES)),
        answers=(
            Answer(201, "Durably committed; one id, or the ids in order for a batch",
                   (IngestAccepted, IngestBatchAccepted)),
        ),
        problems=(
            (400, "malformed-json"),
            (413, "batch-too-large"),
            (422, "invalid-observation"),
            (422, "shacl-violation"),
            (422, "unstorable"),
            (503, "overloaded"),
        ),
        writes=True,
        tags=("observations",),
    )
)
async def ingest() -> Response:
    d = front()  # served by the worker processes too (api/worker.py)
    d.check_accepting()
    decoded = decode(d, await body(), request.mimetype)
    return json(await accept(d, decoded), 201)


def decode(d: Front, raw: bytes, mimetype: str) -> Decoded:
    """The route's reading of a body (this view's and api/edge.py's): bounded
    by the configuration, each refusal counted by its reason."""
    try:
        return decode_body(
            raw, mimetype, max_items=d.cfg.http.max_batch_items, limits=d.cfg.limits
        )
    except (Invalid, Malformed, PayloadTooLarge) as exc:
        d.count_refused("too_large" if isinstance(exc, PayloadTooLarge) else "invalid")
        raise


async def accept(d: Front, decoded: Decoded) -> IngestAccepted | IngestBatchAccepted:
    """The 201's document, once ``d`` has durably committed ``decoded``."""
    ids = await d.ingest(decoded)
    if decoded.single:
        return IngestAccepted(id=ids[0])
    return IngestBatchAccepted(ids=ids, count=len(ids))


@bp.get("/api/v1/observations/<obs_id>")
@documented(
    RouteDoc(
        summary="One stored observation",
        answers=(Answer(200, "The observation", Observation),),
        problems=(
            (401, "token-too-old"),
            (403, "justification-required"),
            (404, "not-found"),
            # api/phi.py: a healthcare read whose audit record cannot be queued.
            (503, "audit-unavailable"),
        ),
        tags=("observations",),
    )
)
async def get_observation(obs_id: str) -> Response:
    d = daemon()
    found = d.get_observation(obs_id)
    cfg = d.cfg.auth
    check_phi_read(
        cfg, current_principal(), found, request.headers.get(cfg.phi_justification_header)
    )
    return json(found)
