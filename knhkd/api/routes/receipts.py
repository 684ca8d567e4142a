"""Receipts and their proofs: the log in sequence order, the latest signed
checkpoint (C2SP tlog-checkpoint, text), RFC 9162 inclusion and consistency
proofs (base64 hashes, bottom-up; 400 ``invalid-proof-request`` for a range
the tree does not have)."""

from __future__ import annotations

from typing import TypedDict

from quart import Blueprint, Response

from knhkd.api.routes.base import b64, daemon, int_arg, json
from knhkd.api.routes.doc import TEXT, Answer, Param, RouteDoc, documented
from knhkd.errors import NotFound
from knhkd.model import ReceiptView

bp = Blueprint("receipts", __name__)
MAX_INT64 = 2**63 - 1


class ReceiptPage(TypedDict):
    receipts: list[ReceiptView]
    # The ``after`` of the next page; null when this one is empty.
    next_after: int | None


class InclusionProof(TypedDict):
    index: int
    tree_size: int
    hashes: list[str]


ConsistencyProof = TypedDict("ConsistencyProof", {"from": int, "to": int, "hashes": list[str]})

_PROOF_PROBLEMS = ((400, "invalid-parameter"), (400, "invalid-proof-request"))


@bp.get("/api/v1/receipts")
@documented(
    RouteDoc(
        summary="Receipts in sequence order",
        params=(
            Param("after", "Only receipts with a greater seq (-1: from the first)",
                  -1, MAX_INT64, -1),
            Param("limit", "How many at most", 1, 1000, 100),
        ),
        answers=(Answer(200, "A page of receipts", ReceiptPage),),
        problems=((400, "invalid-parameter"),),
        tags=("receipts",),
    )
)
async def list_receipts() -> Response:
    after = int_arg("after", -1, lo=-1, hi=MAX_INT64)
    limit = int_arg("limit", 100, lo=1, hi=1000)
    items = daemon().list_receipts(after=after, limit=limit)
    page: ReceiptPage = {"receipts": items, "next_after": items[-1].body.seq if items else None}
    return json(page)


@bp.get("/api/v1/checkpoint")
@documented(
    RouteDoc(
        summary="The latest signed checkpoint (C2SP tlog-checkpoint signed note)",
        answers=(Answer(200, "The signed note", str, TEXT),),
        problems=((404, "not-found"),),
        tags=("receipts",),
    )
)
async def latest_checkpoint() -> Response:
    cp = daemon().latest_checkpoint()
    if cp is None:
        raise NotFound("no checkpoint signed yet", title="No checkpoint yet")
    return Response(cp.text, status=200, content_type="text/plain; charset=utf-8")


@bp.get("/api/v1/proofs/inclusion")
@documented(
    RouteDoc(
        summary="RFC 9162 inclusion proof of a receipt (base64 hashes, bottom-up)",
        params=(
            Param("index", "The receipt's leaf index (required)", 0, MAX_INT64),
            Param("tree_size", "The tree to prove against (default: the latest checkpoint's)",
                  -1, MAX_INT64, -1),
        ),
        answers=(Answer(200, "The proof", InclusionProof),),
        problems=_PROOF_PROBLEMS,
        tags=("receipts",),
    )
)
async def inclusion_proof() -> Response:
    d = daemon()
    size = int_arg("tree_size", -1, lo=-1, hi=MAX_INT64)
    if size < 0:
        cp = d.latest_checkpoint()
        size = cp.size if cp else 0
    index = int_arg("index", -1, lo=0, hi=MAX_INT64)
    hashes = d.inclusion_proof(index, size)
    proof: InclusionProof = {"index": index, "tree_size": size, "hashes": b64(hashes)}
    return json(proof)


@bp.get("/api/v1/proofs/consistency")
@documented(
    RouteDoc(
        summary="RFC 9162 consistency proof between two tree sizes",
        params=(
            Param("from", "The older tree size", 0, MAX_INT64, 0),
            Param("to", "The newer tree size", 0, MAX_INT64, 0),
        ),
        answers=(Answer(200, "The proof", ConsistencyProof),),
        problems=_PROOF_PROBLEMS,
        tags=("receipts",),
    )
)
async def consistency_proof() -> Response:
    first = int_arg("from", 0, lo=0, hi=MAX_INT64)
    second = int_arg("to", 0, lo=0, hi=MAX_INT64)
    hashes = daemon().consistency_proof(first, second)
    proof: ConsistencyProof = {"from": first, "to": second, "hashes": b64(hashes)}
    return json(proof)
