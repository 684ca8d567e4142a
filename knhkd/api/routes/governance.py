"""Governance: guards and their relaxations, doctrines.

Guarantees: each relaxation step the rules refuse is a problem named after
the rule (``urn:knhkd:problem:self-approval`` …): 404 for an unknown guard or
relaxation, 409 otherwise; nothing was changed. The requester, approver or
actor of a step is the authenticated caller (``Principal.name``): a body may
omit the name; one naming anyone else is 403 ``principal-mismatch``.
"""

from __future__ import annotations

from typing import TypedDict

import msgspec
from quart import Blueprint, Response

from knhkd.api.routes.base import acting_as, daemon, decode_json, json
from knhkd.api.routes.doc import Answer, RouteDoc, documented
from knhkd.model import (
    ActivationIn,
    ApprovalIn,
    Doctrine,
    Guard,
    Relaxation,
    RelaxationRequestIn,
    RevocationIn,
)

bp = Blueprint("governance", __name__)
_request = msgspec.json.Decoder(RelaxationRequestIn)
_approval = msgspec.json.Decoder(ApprovalIn)
_activation = msgspec.json.Decoder(ActivationIn)
_revocation = msgspec.json.Decoder(RevocationIn)


class GuardsOverview(TypedDict):
    """Daemon.guards_overview."""

    digest: str
    guards: list[Guard]
    relaxed_now: list[str]
    relaxations: list[Relaxation]


class DoctrinesOverview(TypedDict):
    """Daemon.doctrines_overview."""

    digest: str
    doctrines: list[Doctrine]


# Every refusal of the relaxation rules (governance/relaxation.py): 409 named
# after the rule, 404 for an unknown guard or relaxation, 403 for a body
# naming someone other than the caller.
_RULES = (
    (404, "unknown-guard"),
    (404, "unknown-relaxation"),
    (403, "principal-mismatch"),
    (409, "immutable-guard"),
    (409, "relaxation-open"),
    (409, "self-approval"),
    (409, "duplicate-approval"),
    (409, "already-approved"),
    (409, "request-expired"),
    (409, "not-approved"),
    (409, "not-yet-reviewable"),
    (409, "already-active"),
    (409, "already-revoked"),
    (409, "relaxation-ended"),
    (409, "retrocausal"),
    (400, "malformed-json"),
    (422, "invalid-body"),
)


def _step(summary: str, body: type, status: int = 200) -> RouteDoc:
    return RouteDoc(
        summary=summary,
        body=body,
        body_optional=True,
        answers=(Answer(status, "The relaxation after the step", Relaxation),),
        problems=_RULES,
        writes=True,
        tags=("governance",),
    )


@bp.get("/api/v1/guards")
@documented(
    RouteDoc(
        summary="Guards, which are relaxed now, and every relaxation",
        answers=(Answer(200, "The guards", GuardsOverview),),
        tags=("governance",),
    )
)
async def guards() -> Response:
    return json(daemon().guards_overview())


@bp.get("/api/v1/doctrines")
@documented(
    RouteDoc(
        summary="The doctrines in force",
        answers=(Answer(200, "The doctrines", DoctrinesOverview),),
        tags=("governance",),
    )
)
async def doctrines() -> Response:
    return json(daemon().doctrines_overview())


@bp.post("/api/v1/guards/<guard_id>/relaxations")
@documented(_step("Request a guard relaxation", RelaxationRequestIn, 201))
async def request_relaxation(guard_id: str) -> Response:
    doc = await decode_json(_request, empty=b"{}")
    by = acting_as(doc.requester, "requester")
    record = await daemon().request_relaxation(guard_id, by, doc.reason)
    return json(record, 201)


@bp.get("/api/v1/guards/relaxations/<relaxation_id>")
@documented(
    RouteDoc(
        summary="One relaxation",
        answers=(Answer(200, "The relaxation", Relaxation),),
        problems=((404, "unknown-relaxation"),),
        tags=("governance",),
    )
)
async def get_relaxation(relaxation_id: str) -> Response:
    return json(daemon().relaxation(relaxation_id))


@bp.post("/api/v1/guards/relaxations/<relaxation_id>/approve")
@documented(_step("Approve a relaxation", ApprovalIn))
async def approve_relaxation(relaxation_id: str) -> Response:
    doc = await decode_json(_approval, empty=b"{}")
    by = acting_as(doc.approver, "approver")
    return json(await daemon().approve_relaxation(relaxation_id, by))


@bp.post("/api/v1/guards/relaxations/<relaxation_id>/activate")
@documented(_step("Activate an approved relaxation (opens its window)", ActivationIn))
async def activate_relaxation(relaxation_id: str) -> Response:
    doc = await decode_json(_activation, empty=b"{}")
    by = acting_as(doc.actor, "actor")
    return json(await daemon().activate_relaxation(relaxation_id, by))


@bp.post("/api/v1/guards/relaxations/<relaxation_id>/revoke")
@documented(_step("Revoke a relaxation", RevocationIn))
async def revoke_relaxation(relaxation_id: str) -> Response:
    doc = await decode_json(_revocation, empty=b"{}")
    by = acting_as(doc.actor, "actor")
    return json(await daemon().revoke_relaxation(relaxation_id, by, doc.reason))
