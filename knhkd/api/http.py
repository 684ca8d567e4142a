"""The HTTP API (quart-trio on Hypercorn's trio worker, inside the daemon's run).

Guarantees:
- ``POST /api/v1/observations`` answers 201 only after the observations are
  durably committed; a batch (JSON array or NDJSON) is all-or-nothing.
- With ``[ingest] shacl`` on, a request holding an observation that violates
  its sector's shapes gets 422 ``urn:knhkd:problem:shacl-violation``, whose
  ``errors`` give per offending item its index, field, focus node, path,
  constraint and message; nothing of it is stored (monitor/shapes.py).
- Every error is ``application/problem+json`` (api/problems.py); bodies over
  ``http.max_body_bytes`` get 413 before they are read whole.
- While the daemon drains (SIGTERM), ingest answers 503 with ``Retry-After``
  and ``/ready`` answers 503; ``/health`` answers 503 when degraded.
- Hypercorn is served programmatically with a shutdown trigger: the Hypercorn
  CLI exits 0 when its worker crashes, and installs no signal handling in
  ``serve`` (PLATFORM_NOTES, Hypercorn).

Must never: open LMDB transactions itself (it calls ``Daemon``), or send a
success status for data that was not committed.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import hypercorn.trio
import msgspec
import trio
from hypercorn.config import Config as HypercornConfig
from prometheus_client import CONTENT_TYPE_LATEST
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from knhkd.api.problems import (
    InvalidParameter,
    InvalidProposal,
    MalformedJson,
    NotReady,
    problem_response,
)
from knhkd.errors import KnhkdError, NotFound
from knhkd.loop.daemon import Daemon
from knhkd.model import (
    FieldError,
    IngestAccepted,
    IngestBatchAccepted,
    ProposalIn,
    encode_json,
)
from knhkd.monitor.decode import decode_body, decode_detect, field_of

log = logging.getLogger("knhkd.http")

JSON = "application/json"
_proposal_decoder = msgspec.json.Decoder(ProposalIn)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(encode_json(obj), status=status, content_type=JSON)


def _int_arg(name: str, default: int, *, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidParameter(f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise InvalidParameter(f"{name} must be between {lo} and {hi}")
    return value


def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


async def _body() -> bytes:
    data = await request.get_data(cache=False, as_text=False)
    return data if isinstance(data, bytes) else data.encode()


def create_app(daemon: Daemon) -> QuartTrio:
    app = QuartTrio("knhkd")
    app.config["MAX_CONTENT_LENGTH"] = daemon.cfg.http.max_body_bytes
    metrics = daemon.metrics

    @app.errorhandler(KnhkdError)
    async def _problem(exc: KnhkdError) -> Response:
        if type(exc).problem == KnhkdError.problem:
            log.exception("internal error in %s %s", request.method, request.path)
        return problem_response(exc)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        response = problem_response(exc)
        if exc.code == 413:
            # The rest of the body was never read: the connection cannot carry
            # another request, so say so rather than leave the client waiting.
            response.headers["Connection"] = "close"
        return response

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem_response(exc)

    @app.after_request
    async def _count(response: Response) -> Response:
        if response.status_code < 400:
            metrics.requests_success.inc()
        elif response.status_code < 500:
            metrics.requests_client_error.inc()
        else:
            metrics.requests_error.inc()
        return response

    # ---------------------------------------------------------------- ingest

    @app.post("/api/v1/observations")
    async def ingest() -> Response:
        daemon.check_accepting()
        body = await _body()
        decoded = decode_body(body, request.mimetype, max_items=daemon.cfg.http.max_batch_items)
        ids = await daemon.ingest(decoded)
        if decoded.single:
            return _json(IngestAccepted(id=ids[0]), 201)
        return _json(IngestBatchAccepted(ids=ids, count=len(ids)), 201)

    @app.get("/api/v1/observations/<obs_id>")
    async def get_observation(obs_id: str) -> Response:
        return _json(daemon.get_observation(obs_id))

    if daemon.cfg.http.noop_endpoint:

        @app.post("/api/v1/_noop")
        async def noop() -> Response:
            # The stack's baseline for bench/: same server, no work.
            await request.get_data(cache=False, as_text=False)
            return Response(b"{}", status=200, content_type=JSON)

    # ---------------------------------------------------------------- analyze

    @app.post("/api/v1/patterns/detect")
    async def detect() -> Response:
        return _json(daemon.detect(decode_detect(await _body())))

    @app.get("/api/v1/patterns")
    async def patterns() -> Response:
        return _json(daemon.list_patterns(limit=_int_arg("limit", 100, lo=1, hi=1000)))

    # ---------------------------------------------------------------- knowledge

    @app.get("/api/v1/snapshots")
    async def snapshots() -> Response:
        return _json(
            {
                "current": daemon.knowledge.current.snapshot_id,
                "snapshots": daemon.list_snapshots(),
            }
        )

    @app.get("/api/v1/snapshots/current")
    async def current_snapshot() -> Response:
        return _json(daemon.knowledge.current)

    @app.post("/api/v1/snapshots/rollback")
    async def rollback() -> Response:
        return _json(await daemon.rollback())

    # ---------------------------------------------------------------- proposals

    async def _proposal_in() -> ProposalIn:
        try:
            return _proposal_decoder.decode(await _body())
        except msgspec.ValidationError as exc:
            field, msg = field_of(exc)
            errors = [FieldError(field=field, message=msg)]
            raise InvalidProposal(f"{field}: {msg}", errors) from None
        except msgspec.DecodeError as exc:
            raise MalformedJson(str(exc)) from None
        except RecursionError:
            # Only an unknown member of ``delta`` (ignored, but skipped by
            # recursion) can nest this deep: everything else is typed.
            raise InvalidProposal(
                "$.delta: nested too deeply",
                [FieldError(field="$.delta", message="nested too deeply")],
            ) from None

    @app.post("/api/v1/proposals")
    async def submit_proposal() -> Response:
        p = await _proposal_in()
        proposal, created = await daemon.submit_proposal(p)
        return _json(proposal, 201 if created else 200)

    @app.post("/api/v1/proposals/validate")
    async def validate_proposal() -> Response:
        p = await _proposal_in()
        return _json(await daemon.validate_dry(p))

    @app.get("/api/v1/proposals/<proposal_id>")
    async def get_proposal(proposal_id: str) -> Response:
        proposal, report = daemon.get_proposal(proposal_id)
        return _json({"proposal": proposal, "validation": report})

    @app.post("/api/v1/proposals/<proposal_id>/promote")
    async def promote_proposal(proposal_id: str) -> Response:
        report, promoted = await daemon.promote_proposal(proposal_id)
        body = {
            "promoted": promoted,
            "validation": report,
            "snapshot": daemon.knowledge.current,
        }
        return _json(body, 200 if promoted else 422)

    # ---------------------------------------------------------------- governance

    async def _step_body() -> dict[str, str]:
        body = await _body()
        try:
            doc = msgspec.json.decode(body or b"{}", type=dict[str, str])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise MalformedJson(f"expected an object of strings: {exc}") from None
        return doc

    @app.get("/api/v1/guards")
    async def guards() -> Response:
        return _json(daemon.guards_overview())

    @app.get("/api/v1/doctrines")
    async def doctrines() -> Response:
        return _json(daemon.doctrines_overview())

    # Identity is a declared field until authentication lands (its own issue):
    # the caller vouches for ``requester``, ``approver`` and ``actor``.
    @app.post("/api/v1/guards/<guard_id>/relaxations")
    async def request_relaxation(guard_id: str) -> Response:
        doc = await _step_body()
        record = await daemon.request_relaxation(
            guard_id, doc.get("requester", ""), doc.get("reason", "")
        )
        return _json(record, 201)

    @app.get("/api/v1/guards/relaxations/<relaxation_id>")
    async def get_relaxation(relaxation_id: str) -> Response:
        return _json(daemon.relaxation(relaxation_id))

    @app.post("/api/v1/guards/relaxations/<relaxation_id>/approve")
    async def approve_relaxation(relaxation_id: str) -> Response:
        doc = await _step_body()
        return _json(await daemon.approve_relaxation(relaxation_id, doc.get("approver", "")))

    @app.post("/api/v1/guards/relaxations/<relaxation_id>/activate")
    async def activate_relaxation(relaxation_id: str) -> Response:
        doc = await _step_body()
        return _json(await daemon.activate_relaxation(relaxation_id, doc.get("actor", "")))

    @app.post("/api/v1/guards/relaxations/<relaxation_id>/revoke")
    async def revoke_relaxation(relaxation_id: str) -> Response:
        doc = await _step_body()
        actor, reason = doc.get("actor", ""), doc.get("reason", "")
        return _json(await daemon.revoke_relaxation(relaxation_id, actor, reason))

    @app.get("/api/v1/snapshots/<a>/diff/<b>")
    async def snapshot_diff(a: str, b: str) -> Response:
        return _json(daemon.snapshot_diff(a, b))

    # ---------------------------------------------------------------- loop

    @app.post("/api/v1/mape-k/execute")
    async def execute() -> Response:
        return _json(await daemon.run_cycle())

    # ---------------------------------------------------------------- receipts

    @app.get("/api/v1/receipts")
    async def receipts() -> Response:
        after = _int_arg("after", -1, lo=-1, hi=2**63 - 1)
        limit = _int_arg("limit", 100, lo=1, hi=1000)
        items = daemon.list_receipts(after=after, limit=limit)
        return _json({"receipts": items, "next_after": items[-1].body.seq if items else None})

    @app.get("/api/v1/checkpoint")
    async def checkpoint_latest() -> Response:
        cp = daemon.latest_checkpoint()
        if cp is None:
            raise NotFound("no checkpoint signed yet", title="No checkpoint yet")
        # C2SP tlog-checkpoint signed note, as text.
        return Response(cp.text, status=200, content_type="text/plain; charset=utf-8")

    @app.get("/api/v1/proofs/inclusion")
    async def proof_inclusion() -> Response:
        size = _int_arg("tree_size", -1, lo=-1, hi=2**63 - 1)
        if size < 0:
            cp = daemon.latest_checkpoint()
            size = cp.size if cp else 0
        index = _int_arg("index", -1, lo=0, hi=2**63 - 1)
        hashes = daemon.inclusion_proof(index, size)
        return _json({"index": index, "tree_size": size, "hashes": _b64(hashes)})

    @app.get("/api/v1/proofs/consistency")
    async def proof_consistency() -> Response:
        first = _int_arg("from", 0, lo=0, hi=2**63 - 1)
        second = _int_arg("to", 0, lo=0, hi=2**63 - 1)
        hashes = daemon.consistency_proof(first, second)
        return _json({"from": first, "to": second, "hashes": _b64(hashes)})

    # ---------------------------------------------------------------- operations

    @app.get("/health")
    async def health() -> Response:
        report = daemon.health()
        return _json(report, 200 if report.status == "healthy" else 503)

    @app.get("/ready")
    async def ready() -> Response:
        if daemon.ready and not daemon.draining:
            return _json({"ready": True})
        raise NotReady("knhkd is starting or draining")

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        daemon.health()  # refresh knhk_health_status
        return Response(metrics.render(), status=200, content_type=CONTENT_TYPE_LATEST)

    return app


def hypercorn_config(daemon: Daemon) -> HypercornConfig:
    cfg = daemon.cfg.http
    hc = HypercornConfig()
    hc.bind = [cfg.bind]
    hc.graceful_timeout = cfg.graceful_timeout_s
    hc.keep_alive_timeout = cfg.keep_alive_timeout_s
    hc.accesslog = None
    hc.errorlog = logging.getLogger("knhkd.hypercorn")
    return hc


async def serve_http(
    daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until the daemon asks to shut down; Hypercorn drains in-flight requests."""
    app = create_app(daemon)
    try:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(
                lambda task_status: hypercorn.trio.serve(
                    app,
                    hypercorn_config(daemon),
                    shutdown_trigger=daemon.shutdown_requested.wait,
                    task_status=task_status,
                )
            )
            daemon.http_bound = list(bound)
            task_status.started()
    finally:
        daemon.http_done.set()
