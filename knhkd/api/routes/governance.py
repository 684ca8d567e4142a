"""Governance: guards and their relaxations, doctrines.

Guarantees: each relaxation step the rules refuse is a problem named after
the rule (``urn:knhkd:problem:self-approval`` …): 404 for an unknown guard or
relaxation, 422 for a missing identity, 409 otherwise; nothing was changed.
Identity is a declared field until authentication lands (its own issue): the
caller vouches for ``requester``, ``approver`` and ``actor``.
"""

from __future__ import annotations

import msgspec
from quart import Blueprint, Response

from knhkd.api.problems import MalformedJson
from knhkd.api.routes.base import body, daemon, json

bp = Blueprint("governance", __name__)


async def _step_body() -> dict[str, str]:
    raw = await body()
    try:
        doc = msgspec.json.decode(raw or b"{}", type=dict[str, str])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedJson(f"expected an object of strings: {exc}") from None
    return doc


@bp.get("/api/v1/guards")
async def guards() -> Response:
    return json(daemon().guards_overview())


@bp.get("/api/v1/doctrines")
async def doctrines() -> Response:
    return json(daemon().doctrines_overview())


@bp.post("/api/v1/guards/<guard_id>/relaxations")
async def request_relaxation(guard_id: str) -> Response:
    doc = await _step_body()
    record = await daemon().request_relaxation(
        guard_id, doc.get("requester", ""), doc.get("reason", "")
    )
    return json(record, 201)


@bp.get("/api/v1/guards/relaxations/<relaxation_id>")
async def get_relaxation(relaxation_id: str) -> Response:
    return json(daemon().relaxation(relaxation_id))


@bp.post("/api/v1/guards/relaxations/<relaxation_id>/approve")
async def approve_relaxation(relaxation_id: str) -> Response:
    doc = await _step_body()
    return json(await daemon().approve_relaxation(relaxation_id, doc.get("approver", "")))


@bp.post("/api/v1/guards/relaxations/<relaxation_id>/activate")
async def activate_relaxation(relaxation_id: str) -> Response:
    doc = await _step_body()
    return json(await daemon().activate_relaxation(relaxation_id, doc.get("actor", "")))


@bp.post("/api/v1/guards/relaxations/<relaxation_id>/revoke")
async def revoke_relaxation(relaxation_id: str) -> Response:
    doc = await _step_body()
    actor, reason = doc.get("actor", ""), doc.get("reason", "")
    return json(await daemon().revoke_relaxation(relaxation_id, actor, reason))
