"""Privacy: erasure of a data subject's observations (administrators only:
api/authn.py). The answer names the erased observations and the receipt that
records the erasure; the subject is never echoed, logged or receipted."""

from __future__ import annotations

import msgspec
from quart import Blueprint, Response

from knhkd.api.routes.base import current_principal, daemon, decode_json, json
from knhkd.api.routes.doc import Answer, RouteDoc, documented
from knhkd.model import Erasure, ErasureIn

bp = Blueprint("privacy", __name__)
_request = msgspec.json.Decoder(ErasureIn)


@bp.post("/api/v1/erasures")
@documented(
    RouteDoc(
        summary="Erase the observations whose [privacy] subject_fields name a data subject",
        body=ErasureIn,
        answers=(Answer(200, "What was erased, and the erasure's receipt", Erasure),),
        problems=((409, "erasure-refused"), (422, "invalid-body")),
        writes=True,
        tags=("privacy",),
    )
)
async def erase() -> Response:
    doc = await decode_json(_request)
    return json(await daemon().erase_subject(doc.subject, current_principal()))
