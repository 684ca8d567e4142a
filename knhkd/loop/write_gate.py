"""Whether the store takes writes now, and if not, why: one state, many causes.

Writes can be refused for reasons that are not a fault of the request and
not a crash of the daemon: the disk or the LMDB map ceiling is full (until
space returns), or the store failed its integrity check at start (until an
operator acts). Each cause closes the gate under its own key; the gate is
open only when no cause holds it. Reads, proofs, checkpoints of what is
committed and the admin socket never consult it.

Guarantees:
- ``check`` raises the error of the longest-held cause (a ``knhkd.errors``
  kind: ``StorageFull`` 507, ``ReadOnly`` 503, ...) and returns when the gate
  is open; it never blocks.
- ``closed_causes`` names every cause with its detail, for ``/health``,
  ``/ready`` and ``knhkctl status``; a cause is logged once when it closes
  the gate and once when it lifts.
- ``reopened`` is set whenever the last cause lifts, so a task waiting for
  writes to resume can wait on it (a fresh event after each closing).

Must never: decide a cause itself (the store writer decides storage-full, the
start-up integrity check decides read-only), or hide a cause behind another.
"""

from __future__ import annotations

import logging

import trio

from knhkd.errors import KnhkdError

log = logging.getLogger(__name__)


class WriteGate:
    def __init__(self) -> None:
        # Insertion order: the first cause that closed the gate answers first.
        self._causes: dict[str, KnhkdError] = {}
        self.reopened = trio.Event()
        self.reopened.set()

    @property
    def open(self) -> bool:
        return not self._causes

    def close(self, key: str, error: KnhkdError) -> None:
        """Refuse writes because of ``key`` until ``lift(key)``; a second
        close under the same key updates its detail."""
        if key not in self._causes:
            log.error("writes refused (%s): %s", key, error.detail)
        if self.open:
            self.reopened = trio.Event()
        self._causes[key] = error

    def lift(self, key: str) -> None:
        error = self._causes.pop(key, None)
        if error is None:
            return
        log.warning("cause lifted (%s): %s", key, error.detail)
        if self.open:
            log.warning("writes accepted again")
            self.reopened.set()

    def check(self) -> None:
        for error in self._causes.values():
            raise error

    def closed_causes(self) -> dict[str, str]:
        return {key: error.detail for key, error in self._causes.items()}
