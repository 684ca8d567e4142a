"""ΔΣ proposals submitted by operators: submit, dry-run validation, read,
promote.

Guarantees: a body that is not a proposal is 422 ``invalid-proposal`` naming
the field (400 ``malformed-json`` when it is not JSON); a proposal against a
snapshot that is not current is 409 ``snapshot-conflict``; a promotion the
seven stages refuse is 422 with the report (a JSON body, not a problem).
"""

from __future__ import annotations

import msgspec
from quart import Blueprint, Response

from knhkd.api.problems import InvalidProposal, MalformedJson
from knhkd.api.routes.base import body, daemon, json
from knhkd.model import FieldError, ProposalIn
from knhkd.monitor.decode import field_of

bp = Blueprint("proposals", __name__)
_proposal_decoder = msgspec.json.Decoder(ProposalIn)


async def _proposal_in() -> ProposalIn:
    try:
        return _proposal_decoder.decode(await body())
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


@bp.post("/api/v1/proposals")
async def submit_proposal() -> Response:
    proposal, created = await daemon().submit_proposal(await _proposal_in())
    return json(proposal, 201 if created else 200)


@bp.post("/api/v1/proposals/validate")
async def validate_proposal() -> Response:
    return json(await daemon().validate_dry(await _proposal_in()))


@bp.get("/api/v1/proposals/<proposal_id>")
async def get_proposal(proposal_id: str) -> Response:
    proposal, report = daemon().get_proposal(proposal_id)
    return json({"proposal": proposal, "validation": report})


@bp.post("/api/v1/proposals/<proposal_id>/promote")
async def promote_proposal(proposal_id: str) -> Response:
    d = daemon()
    report, promoted = await d.promote_proposal(proposal_id)
    answer = {"promoted": promoted, "validation": report, "snapshot": d.knowledge.current}
    return json(answer, 200 if promoted else 422)
