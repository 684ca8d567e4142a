"""RFC 6962 hashing and RFC 9162 proof verification against the published
transparency-dev/merkle vectors, and our own proofs for every small size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from knhkd.receipts import merkle

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "rfc6962"
BASE = json.loads((VECTORS / "leaves_and_roots.json").read_text())
LEAVES = [bytes.fromhex(x) for x in BASE["leaves_hex"]]


def _h(x: str) -> bytes:
    return bytes.fromhex(x)


def _perfect_from(leaves: list[bytes]):  # type: ignore[no-untyped-def]
    hashes = [merkle.leaf_hash(x) for x in leaves]

    def perfect(a: int, b: int) -> bytes:
        if b - a == 1:
            return hashes[a]
        half = (b - a) // 2
        return merkle.node_hash(perfect(a, a + half), perfect(a + half, b))

    return perfect


def test_hasher_vectors() -> None:
    for v in json.loads((VECTORS / "hasher.json").read_text())["vectors"]:
        if v["kind"] == "empty_tree":
            got = merkle.EMPTY_ROOT
        elif v["kind"] == "leaf":
            got = merkle.leaf_hash(_h(v["input_hex"]))
        else:
            got = merkle.node_hash(_h(v["left_hex"]), _h(v["right_hex"]))
        assert got.hex() == v["expected_hex"], v["desc"]


def test_roots_of_every_prefix() -> None:
    perfect = _perfect_from(LEAVES)
    for n, root in BASE["roots_hex"].items():
        assert merkle.mth(perfect, 0, int(n)).hex() == root


@pytest.mark.parametrize(
    "v", json.loads((VECTORS / "inclusion.json").read_text())["vectors"], ids=lambda v: v["id"]
)
def test_inclusion_vectors(v: dict) -> None:  # type: ignore[type-arg]
    ok = merkle.verify_inclusion(
        _h(v["leaf_hash_hex"]),
        v["leaf_index"],
        v["tree_size"],
        [_h(p) for p in v["path_hex"]],
        _h(v["root_hex"]),
    )
    assert ok is v["valid"]
    # Valid proofs over the shared leaves are exactly what we generate.
    if v["valid"] and v["leaf_input_index"] is not None and v["root_of_tree_size"]:
        path = merkle.inclusion_path(_perfect_from(LEAVES), v["leaf_index"], v["tree_size"])
        assert [p.hex() for p in path] == v["path_hex"]


@pytest.mark.parametrize(
    "v", json.loads((VECTORS / "consistency.json").read_text())["vectors"], ids=lambda v: v["id"]
)
def test_consistency_vectors(v: dict) -> None:  # type: ignore[type-arg]
    ok = merkle.verify_consistency(
        v["size1"],
        v["size2"],
        [_h(p) for p in v["proof_hex"]],
        _h(v["root1_hex"]),
        _h(v["root2_hex"]),
    )
    assert ok is v["valid"]
    if (
        v["valid"]
        and v["size1"] < v["size2"]
        and v["root1_of_tree_size"] == v["size1"]
        and v["root2_of_tree_size"] == v["size2"]
    ):
        proof = merkle.consistency_proof(_perfect_from(LEAVES), v["size1"], v["size2"])
        assert [p.hex() for p in proof] == v["proof_hex"]


@given(st.integers(1, 70), st.data())
def test_every_proof_we_make_verifies_and_a_flip_breaks_it(n: int, data: st.DataObject) -> None:
    leaves = [i.to_bytes(4, "big") for i in range(n)]
    perfect = _perfect_from(leaves)
    root = merkle.mth(perfect, 0, n)
    i = data.draw(st.integers(0, n - 1))
    path = merkle.inclusion_path(perfect, i, n)
    leaf = merkle.leaf_hash(leaves[i])
    assert merkle.verify_inclusion(leaf, i, n, path, root)
    if path:
        j = data.draw(st.integers(0, len(path) - 1))
        bad = list(path)
        bad[j] = bytes([bad[j][0] ^ 1]) + bad[j][1:]
        assert not merkle.verify_inclusion(leaf, i, n, bad, root)
        assert not merkle.verify_inclusion(leaf, i, n, path[:-1], root)
        assert (
            not merkle.verify_inclusion(leaf, i, n, list(reversed(path)), root)
            or len(set(path)) == 1
        )
    m = data.draw(st.integers(1, n))
    old = merkle.mth(perfect, 0, m)
    proof = merkle.consistency_proof(perfect, m, n)
    assert merkle.verify_consistency(m, n, proof, old, root)
    if proof:
        assert not merkle.verify_consistency(m, n, proof[1:], old, root)


@given(st.integers(0, 70), st.data())
def test_range_proof_rebuilds_the_root(n: int, data: st.DataObject) -> None:
    leaves = [i.to_bytes(4, "big") for i in range(n)]
    perfect = _perfect_from(leaves)
    start = data.draw(st.integers(0, n))
    end = data.draw(st.integers(start, n))
    proof = merkle.range_proof(perfect, start, end, n)
    hashes = [merkle.leaf_hash(x) for x in leaves[start:end]]
    assert merkle.root_from_range(hashes, start, n, proof) == merkle.mth(perfect, 0, n)
    if hashes:
        hashes[0] = merkle.leaf_hash(b"forged")
        assert merkle.root_from_range(hashes, start, n, proof) != merkle.mth(perfect, 0, n)
