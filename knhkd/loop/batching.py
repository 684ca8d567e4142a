"""Group commit's intake: what an actor takes from its channel per round.

Guarantees: ``receive_batch`` waits for one item, then takes only what is
already queued (never waits for more), in order, until the batch's weight
reaches ``limit``; the first item is taken whatever its weight. None once the
channel is closed and empty.

Must never: wait for a second item, or drop or reorder one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")


async def receive_batch(
    recv: trio.MemoryReceiveChannel[T], limit: int, weight: Callable[[T], int] = lambda _: 1
) -> tuple[list[T], int] | None:
    """(items, their total weight), or None at the end of the channel."""
    try:
        first = await recv.receive()
    except trio.EndOfChannel:
        return None
    batch = [first]
    total = weight(first)
    while total < limit:
        try:
            item = recv.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            break
        batch.append(item)
        total += weight(item)
    return batch, total
