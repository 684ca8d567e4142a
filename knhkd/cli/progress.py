"""Progress bars for long ``knhkctl`` commands (fsck, receipts export and
verify-chain, verify, and whatever else takes seconds).

Guarantees: a bar is drawn on stderr only when stderr is a terminal; off a
terminal (a pipe, a file, the journal, a test) nothing at all is written, so
scripts that read stderr see only the one-line errors. stdout is never
touched: a command's answer stays machine-readable under a bar.

Must never: write progress to stdout, or draw when stderr is not a terminal.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

_T = TypeVar("_T")


def enabled() -> bool:
    """Whether progress is shown: stderr is a terminal."""
    try:
        return os.isatty(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        return False


def bar(
    desc: str,
    total: int | None = None,
    unit: str = "it",
    *,
    file: IO[str] | None = None,
    disable: bool = False,
    **kw: Any,
) -> Any:
    """A tqdm bar on stderr (or ``file``), disabled off a terminal (or with
    ``disable``). Use it as a context manager; ``update(n)`` advances it.
    ``total=None``: a counter with the elapsed time, for work whose size is
    not known in advance."""
    from tqdm import tqdm

    # No monitor thread: fsck forks while a bar is open, and a child must not
    # inherit a lock that thread holds.
    tqdm.monitor_interval = 0
    out = file if file is not None else sys.stderr
    try:
        columns, lines = os.get_terminal_size(out.fileno())
    except (AttributeError, OSError, ValueError):
        columns = lines = 0
    if columns == 0 or lines == 0:
        # A serial console (or a fresh pty) reports a 0 x 0 screen, on which
        # tqdm draws nothing: assume 80 x 24.
        columns = 0
        kw.setdefault("ncols", 80)
        kw.setdefault("nrows", 24)
    return tqdm(
        desc=f"knhkctl: {desc}",
        total=total,
        unit=unit,
        file=out,
        disable=disable or not enabled(),
        leave=False,
        dynamic_ncols=columns > 0,
        mininterval=0.1,
        **kw,
    )


def iterate(
    items: Iterable[_T], desc: str, total: int | None = None, unit: str = "it"
) -> Iterator[_T]:
    """``items`` unchanged, counted on a bar."""
    with bar(desc, total, unit) as b:
        for item in items:
            yield item
            b.update(1)


def terminal_dup() -> IO[str] | None:
    """A new file object on a duplicate of stderr when progress is shown,
    else None: for a forked child that points its own fd 2 elsewhere (fsck's
    checker silences LMDB's assertion text) but still draws the bar."""
    if not enabled():
        return None
    return os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
