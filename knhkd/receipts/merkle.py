"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification.

Pure functions over SHA-256, used by the log (to build proofs from stored
nodes) and by the offline verifier (to check them with nothing else).

Conventions (RFC 6962 §2.1): leaf hash ``SHA-256(0x00 || data)``, interior
node ``SHA-256(0x01 || left || right)``, empty tree ``SHA-256("")``, a tree of
n > 1 leaves splits at k, the largest power of two smaller than n. Proof
hashes are listed bottom-up.

Verification follows RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2
(consistency), with the conventions of the transparency-dev/merkle test
vectors: an index must be below the tree size; a leaf hash must be 32 bytes;
a consistency proof from size 0, or from a larger to a smaller size, is
rejected; between equal sizes only an empty proof with equal roots is valid.

Must never: accept a proof by any path but recomputing the root.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence

from knhkd.errors import Malformed

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

# The hash of the aligned perfect subtree covering leaves [start, end).
SubtreeHash = Callable[[int, int], bytes]


class ProofError(Malformed, ValueError):
    """A proof was asked for a range the tree does not have."""

    problem = "invalid-proof-request"
    title = "No such proof"


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """k: the largest power of two strictly smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def mth(perfect: SubtreeHash, start: int, end: int) -> bytes:
    """MTH(D[start:end]) from a source of aligned perfect subtree hashes."""
    n = end - start
    if n == 0:
        return EMPTY_ROOT
    if n & (n - 1) == 0 and start % n == 0:
        return perfect(start, end)
    k = split_point(n)
    return node_hash(mth(perfect, start, start + k), mth(perfect, start + k, end))


def inclusion_path(perfect: SubtreeHash, index: int, size: int) -> list[bytes]:
    """RFC 6962 §2.1.1 PATH(index, D[0:size])."""
    if not 0 <= index < size:
        raise ProofError(f"index {index} is not in a tree of size {size}")
    path: list[bytes] = []
    start, end, m = 0, size, index
    while end - start > 1:
        k = split_point(end - start)
        if m < k:
            path.append(mth(perfect, start + k, end))
            end = start + k
        else:
            path.append(mth(perfect, start, start + k))
            start, m = start + k, m - k
    path.reverse()
    return path


def consistency_proof(perfect: SubtreeHash, size1: int, size2: int) -> list[bytes]:
    """RFC 6962 §2.1.2 PROOF(size1, D[0:size2])."""
    if not 0 < size1 <= size2:
        raise ProofError(f"no consistency proof from size {size1} to {size2}")
    proof: list[bytes] = []
    start, end, m, complete = 0, size2, size1, True
    while True:
        n = end - start
        if m == n:
            if not complete:
                proof.append(mth(perfect, start, end))
            break
        k = split_point(n)
        if m <= k:
            proof.append(mth(perfect, start + k, end))
            end = start + k
        else:
            proof.append(mth(perfect, start, start + k))
            start, m, complete = start + k, m - k, False
    proof.reverse()
    return proof


def verify_inclusion(
    leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2."""
    if index >= size or index < 0 or len(leaf) != HASH_SIZE:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> bool:
    """RFC 9162 §2.1.4.2."""
    if size1 <= 0 or size1 > size2:
        return False
    if size1 == size2:
        return not proof and root1 == root2
    if not proof:
        return False
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == root1 and sr == root2


# --------------------------------------------------------------------------- #
# Ranges: the hashes that, with a run of leaves, rebuild a tree's root
# --------------------------------------------------------------------------- #


def aligned_cover(start: int, end: int) -> list[tuple[int, int]]:
    """[start, end) as maximal aligned perfect subtrees, left to right."""
    out: list[tuple[int, int]] = []
    while start < end:
        size = start & -start if start else 1 << (end.bit_length())
        while start + size > end:
            size >>= 1
        out.append((start, start + size))
        start += size
    return out


def range_proof(perfect: SubtreeHash, start: int, end: int, size: int) -> list[bytes]:
    """Hashes of the aligned subtrees covering [0, start) and [end, size)."""
    if not 0 <= start <= end <= size:
        raise ProofError(f"range [{start}, {end}) is not in a tree of size {size}")
    return [perfect(a, b) for a, b in aligned_cover(0, start) + aligned_cover(end, size)]


def root_from_range(
    leaves: Sequence[bytes], start: int, size: int, proof: Sequence[bytes]
) -> bytes | None:
    """The root of a tree of ``size`` whose leaf hashes [start, start+len) are
    ``leaves``, given ``range_proof``'s hashes; None if they do not fit."""
    end = start + len(leaves)
    if not 0 <= start <= end <= size:
        return None
    cover = aligned_cover(0, start) + aligned_cover(end, size)
    if len(cover) != len(proof) or any(len(h) != HASH_SIZE for h in proof):
        return None
    known: dict[tuple[int, int], bytes] = dict(zip(cover, proof, strict=True))
    known.update({(start + i, start + i + 1): h for i, h in enumerate(leaves)})

    def perfect(a: int, b: int) -> bytes:
        return _from_known(known, a, b)

    try:
        return mth(perfect, 0, size)
    except KeyError:
        return None


def _from_known(known: Mapping[tuple[int, int], bytes], a: int, b: int) -> bytes:
    hit = known.get((a, b))
    if hit is not None:
        return hit
    if b - a <= 1:
        raise KeyError((a, b))
    half = (b - a) // 2
    return node_hash(_from_known(known, a, a + half), _from_known(known, a + half, b))
