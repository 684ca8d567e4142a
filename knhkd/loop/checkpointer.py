"""The checkpointer actor: signs a checkpoint of the receipt tree every
``receipts.checkpoint_every`` receipts or ``receipts.checkpoint_interval_s``
seconds, whichever comes first, and once more at shutdown.

Guarantees: checkpoints are issued through the receipt writer, so each signs
a committed tree (receipts/checkpointing.py refuses an inconsistent one).
While the store refuses writes (storage full, loop/write_gate.py) a due
checkpoint waits, and the one at shutdown is skipped with a warning: what is
committed stays committed and the last signed checkpoint stays served.
After each one is durably committed, and once when the actor starts, the
latest is written to the anchor ``DATA_DIR/checkpoint.anchor``
(store/anchor.py), which the start-up check compares the store with; the
anchor only moves forward within a process. A failure to write the anchor
is logged and leaves the older one in place (a lagging anchor is safe: the
store is ahead of it, never behind).
Must never: sign on its own transaction outside the writer; write the anchor
before the checkpoint it holds is committed.
"""

from __future__ import annotations

import logging
import time

import trio

from knhkd.errors import ReadOnly, StorageFull
from knhkd.loop.context import LoopContext
from knhkd.receipts.checkpoints import issue_job, latest
from knhkd.receipts.tlog_checkpoint import Checkpoint
from knhkd.store import anchor

log = logging.getLogger(__name__)

POLL_S = 0.25


class Checkpointer:
    def __init__(
        self,
        ctx: LoopContext,
    ) -> None:
        self._ctx = ctx
        self.signed_size = 0
        self._uncovered_since: float | None = None
        # The same instant on the process's monotonic clock, for the lag gauge,
        # which is read at scrape time outside trio (and so keeps growing
        # while this actor is stuck or the store refuses the checkpoint).
        self._uncovered_since_mono: float | None = None
        ctx.metrics.checkpoint_lag.set_function(self.lag_s)
        self._anchored_size = -1
        self._anchor_lock = trio.Lock()

    def _tree_size(self) -> int:
        with self._ctx.store.reader() as txn:
            return self._ctx.receipts.tree.size(txn)

    async def issue(self) -> Checkpoint | None:
        cp = await self._ctx.writer.submit(issue_job(self._ctx.store, self._ctx.receipts))
        if cp is not None:
            self.signed_size = cp.size
            await self.write_anchor(cp)
            log.debug("checkpoint signed at tree size %d", cp.size)
        self._uncovered_since = None
        self._uncovered_since_mono = None
        return cp

    def lag_s(self) -> float:
        """Seconds since receipts not covered by a signed checkpoint were
        first seen (0 when none are)."""
        since = self._uncovered_since_mono
        return 0.0 if since is None else time.monotonic() - since

    async def issue_at_stop(self) -> Checkpoint | None:
        """The last checkpoint of a clean stop; None when the store refuses it.
        The anchor then holds the latest committed checkpoint, whether signed
        now or before: a periodic one cancelled by the stop between its commit
        and its anchor write (nothing new to sign at stop) still reaches it."""
        try:
            cp = await self.issue()
        except (StorageFull, ReadOnly) as exc:
            log.warning("no checkpoint at shutdown: %s", exc.detail)
            cp = None
        if cp is None:
            with self._ctx.store.reader() as txn:
                last = latest(self._ctx.store, txn)
            if last is not None:
                await self.write_anchor(last)
        return cp

    async def write_anchor(self, cp: Checkpoint) -> None:
        """Write ``cp`` (committed) to the anchor unless a larger one is there."""
        path = anchor.path_in(self._ctx.config().data_dir)
        async with self._anchor_lock:
            if cp.size <= self._anchored_size:
                return
            try:
                await trio.to_thread.run_sync(anchor.write, path, cp.text)
            except OSError as exc:
                log.error("cannot write the anchor %s (the older one stays): %s", path, exc)
                return
            self._anchored_size = cp.size

    async def run(self) -> None:
        with self._ctx.store.reader() as txn:
            last = latest(self._ctx.store, txn)
        self.signed_size = last.size if last else 0
        if last is not None:
            # The start-up check found the store at or ahead of the anchor; a
            # checkpoint committed just before a crash may not have reached it.
            await self.write_anchor(last)
        while True:
            await trio.sleep(POLL_S)
            cfg = self._ctx.config().receipts
            size = self._tree_size()
            if size <= self.signed_size:
                continue
            now = trio.current_time()
            if self._uncovered_since is None:
                self._uncovered_since = now
                self._uncovered_since_mono = time.monotonic()
            due = (
                size - self.signed_size >= cfg.checkpoint_every
                or now - self._uncovered_since >= cfg.checkpoint_interval_s
            )
            if due:
                try:
                    await self.issue()
                except (StorageFull, ReadOnly):
                    continue  # the writer reports it; due again once writes resume
