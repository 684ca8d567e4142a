"""ΔΣ proposals submitted by operators: submit, dry-run validation, read,
sign, promote.

Guarantees: a body that is not a proposal is 422 ``invalid-proposal`` naming
the field (400 ``malformed-json`` when it is not JSON); a proposal against a
snapshot that is not current is 409 ``snapshot-conflict``; a promotion the
seven stages refuse is 422 with the report (a JSON body, not a problem).
The submitter and the caller of promote are the authenticated caller, named
in the receipts; a body declaring ``signers`` is 403 ``principal-mismatch``:
each signer signs the stored proposal as themselves
(``POST /api/v1/proposals/{id}/signatures``), with the capacities their token
gives them, and only those signatures count for doctrines.
"""

from __future__ import annotations

from typing import TypedDict

import msgspec
from quart import Blueprint, Response

from knhkd.api.problems import InvalidProposal
from knhkd.api.routes.base import current_principal, daemon, decode_json, json
from knhkd.api.routes.doc import Answer, RouteDoc, documented
from knhkd.model import Proposal, ProposalIn, Snapshot, ValidationReport

bp = Blueprint("proposals", __name__)


class ProposalView(TypedDict):
    proposal: Proposal
    validation: ValidationReport | None


class PromotionView(TypedDict):
    promoted: bool
    validation: ValidationReport
    snapshot: Snapshot


_BODY_PROBLEMS = (
    (400, "malformed-json"),
    (403, "principal-mismatch"),
    (422, "invalid-proposal"),
    (409, "snapshot-conflict"),
)
_proposal_decoder = msgspec.json.Decoder(ProposalIn)


async def _proposal_in() -> ProposalIn:
    # Only an unknown member of ``delta`` (ignored) can nest without bound.
    return await decode_json(_proposal_decoder, InvalidProposal, deep_field="$.delta")


@bp.post("/api/v1/proposals")
@documented(
    RouteDoc(
        summary="Submit a ΔΣ proposal",
        body=ProposalIn,
        answers=(
            Answer(201, "Stored", Proposal),
            Answer(200, "The same change was already stored", Proposal),
        ),
        problems=_BODY_PROBLEMS,
        writes=True,
        tags=("proposals",),
    )
)
async def submit_proposal() -> Response:
    proposal, created = await daemon().submit_proposal(await _proposal_in(), current_principal())
    return json(proposal, 201 if created else 200)


@bp.post("/api/v1/proposals/validate")
@documented(
    RouteDoc(
        summary="Dry run: the full validation report (nothing stored or promoted)",
        body=ProposalIn,
        answers=(Answer(200, "The report", ValidationReport),),
        problems=_BODY_PROBLEMS,
        tags=("proposals",),
    )
)
async def validate_proposal() -> Response:
    return json(await daemon().validate_dry(await _proposal_in(), current_principal()))


@bp.get("/api/v1/proposals/<proposal_id>")
@documented(
    RouteDoc(
        summary="A proposal and its latest validation report",
        answers=(Answer(200, "The proposal", ProposalView),),
        problems=((404, "not-found"),),
        tags=("proposals",),
    )
)
async def get_proposal(proposal_id: str) -> Response:
    proposal, report = daemon().get_proposal(proposal_id)
    view: ProposalView = {"proposal": proposal, "validation": report}
    return json(view)


@bp.post("/api/v1/proposals/<proposal_id>/signatures")
@documented(
    RouteDoc(
        summary="Sign a stored proposal as the caller (with the capacities of its token)",
        answers=(
            Answer(201, "Signed: the proposal with its signatures", Proposal),
            Answer(200, "The caller had signed it already", Proposal),
        ),
        problems=((404, "not-found"),),
        writes=True,
        tags=("proposals",),
    )
)
async def sign_proposal(proposal_id: str) -> Response:
    proposal, signed = await daemon().sign_proposal(proposal_id, current_principal())
    return json(proposal, 201 if signed else 200)


@bp.post("/api/v1/proposals/<proposal_id>/promote")
@documented(
    RouteDoc(
        summary="Validate a stored proposal, then promote it if it passes",
        answers=(
            Answer(200, "Promoted", PromotionView),
            Answer(422, "Refused by validation: the report (not a problem)", PromotionView),
        ),
        problems=((404, "not-found"), (409, "snapshot-conflict")),
        writes=True,
        tags=("proposals",),
    )
)
async def promote_proposal(proposal_id: str) -> Response:
    d = daemon()
    report, promoted = await d.promote_proposal(proposal_id, current_principal())
    answer: PromotionView = {
        "promoted": promoted,
        "validation": report,
        "snapshot": d.knowledge.current,
    }
    return json(answer, 200 if promoted else 422)
