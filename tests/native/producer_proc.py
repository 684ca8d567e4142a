"""A ring producer run as its own process by the tests (``python -m tests.native.producer_proc``).

Each record it appends is self-checking: an I64 payload of five words
``[tag, i, i ^ MASK, tag * 1_000_003 + i, checksum]`` where ``i`` counts the
producer's records from 0, so a reader can tell a torn or foreign record from a
whole one, and can tell which records of a producer arrived (``i`` contiguous).

Prints one line ``appended N`` at the end (unless killed). ``--forever`` appends
until killed; a full lane is retried (back-pressure), never skipped.
"""

from __future__ import annotations

import argparse
import sys
import time

from knhkd.hotpath.ring import Producer

MASK = 0x5A5A_5A5A_5A5A
GENERIC = 5


def payload(tag: int, i: int) -> list[int]:
    words = [tag, i, i ^ MASK, tag * 1_000_003 + i]
    return [*words, sum(words) & 0x7FFF_FFFF_FFFF]


def well_formed(value: object) -> bool:
    if not isinstance(value, list) or len(value) != 5:
        return False
    tag, i = value[0], value[1]
    return bool(value == payload(tag, i))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("ring")
    p.add_argument("--tag", type=int, required=True)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--event", type=int, default=1)
    p.add_argument("--forever", action="store_true")
    p.add_argument("--pace-ms", type=float, default=0.0, help="sleep between batches")
    args = p.parse_args(argv)
    producer = Producer(args.ring)
    print(f"lane {producer.lane}", flush=True)
    i = 0
    while args.forever or i < args.count:
        n = args.batch if args.forever else min(args.batch, args.count - i)
        got = producer.append_batch(
            [(GENERIC, args.event, payload(args.tag, i + k)) for k in range(n)]
        ).appended
        i += got
        if got < n:
            time.sleep(0.001)  # full: wait for the consumer
        elif args.pace_ms:
            time.sleep(args.pace_ms / 1000)
    print(f"appended {i}", flush=True)
    producer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
