"""Receipts and their proofs: the log in sequence order, the latest signed
checkpoint (C2SP tlog-checkpoint, text), RFC 9162 inclusion and consistency
proofs (base64 hashes, bottom-up; 400 ``invalid-proof-request`` for a range
the tree does not have)."""

from __future__ import annotations

from quart import Blueprint, Response

from knhkd.api.routes.base import b64, daemon, int_arg, json
from knhkd.errors import NotFound

bp = Blueprint("receipts", __name__)
MAX_INT64 = 2**63 - 1


@bp.get("/api/v1/receipts")
async def list_receipts() -> Response:
    after = int_arg("after", -1, lo=-1, hi=MAX_INT64)
    limit = int_arg("limit", 100, lo=1, hi=1000)
    items = daemon().list_receipts(after=after, limit=limit)
    return json({"receipts": items, "next_after": items[-1].body.seq if items else None})


@bp.get("/api/v1/checkpoint")
async def latest_checkpoint() -> Response:
    cp = daemon().latest_checkpoint()
    if cp is None:
        raise NotFound("no checkpoint signed yet", title="No checkpoint yet")
    return Response(cp.text, status=200, content_type="text/plain; charset=utf-8")


@bp.get("/api/v1/proofs/inclusion")
async def inclusion_proof() -> Response:
    d = daemon()
    size = int_arg("tree_size", -1, lo=-1, hi=MAX_INT64)
    if size < 0:
        cp = d.latest_checkpoint()
        size = cp.size if cp else 0
    index = int_arg("index", -1, lo=0, hi=MAX_INT64)
    hashes = d.inclusion_proof(index, size)
    return json({"index": index, "tree_size": size, "hashes": b64(hashes)})


@bp.get("/api/v1/proofs/consistency")
async def consistency_proof() -> Response:
    first = int_arg("from", 0, lo=0, hi=MAX_INT64)
    second = int_arg("to", 0, lo=0, hi=MAX_INT64)
    hashes = daemon().consistency_proof(first, second)
    return json({"from": first, "to": second, "hashes": b64(hashes)})
