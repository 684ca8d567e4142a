"""Signing and verifying many ed25519 messages on all cores.

libsodium's calls release the GIL (cffi), so a small thread pool spreads a
batch over the machine's cores; below ``PARALLEL_MIN`` items the pool's
hand-off costs more than it saves and the batch runs on the calling thread.

Guarantees: results are in input order; a bad signature is ``False``, never an
exception. Must never: reorder results or share a mutable buffer across threads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import nacl.bindings
from nacl.exceptions import BadSignatureError

PARALLEL_MIN = 64
T = TypeVar("T")
_pool: ThreadPoolExecutor | None = None


def _workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _executor() -> ThreadPoolExecutor:
    global _pool  # noqa: PLW0603 - one pool per process, created on first use
    if _pool is None:
        _pool = ThreadPoolExecutor(_workers(), thread_name_prefix="knhkd-ed25519")
    return _pool


def _chunks(n: int) -> list[tuple[int, int]]:
    k = _workers()
    step = -(-n // k)
    return [(i, min(i + step, n)) for i in range(0, n, step)]


def _spread(n: int, run: Callable[[int, int], list[T]]) -> list[T]:
    """``run(0, n)``, split over the pool when ``n`` is worth it, in order."""
    if n < PARALLEL_MIN or _workers() == 1:
        return run(0, n)
    out: list[T] = []
    for part in _executor().map(lambda c: run(*c), _chunks(n)):
        out.extend(part)
    return out


def sign_many(secret: bytes, messages: Sequence[bytes]) -> list[bytes]:
    """Detached signatures of ``messages`` by the 64-byte libsodium secret key."""

    def run(lo: int, hi: int) -> list[bytes]:
        return [nacl.bindings.crypto_sign(m, secret)[:64] for m in messages[lo:hi]]

    return _spread(len(messages), run)


def verify_many(items: Sequence[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """For each (public key, message, signature): does the signature hold?"""

    def one(pk: bytes, msg: bytes, sig: bytes) -> bool:
        if len(sig) != 64 or len(pk) != 32:
            return False
        try:
            nacl.bindings.crypto_sign_open(sig + msg, pk)
        except (BadSignatureError, ValueError, TypeError):
            return False
        return True

    def run(lo: int, hi: int) -> list[bool]:
        return [one(*it) for it in items[lo:hi]]

    return _spread(len(items), run)
