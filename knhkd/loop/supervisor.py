"""Supervision of actors: restart with exponential backoff and jitter, give up
past a restart budget.

Guarantees:
- An actor that raises is restarted after ``backoff_initial_s * 2**n``
  (capped at ``backoff_max_s``), ±25 % jitter, n counting its recent restarts
  (seed §3.5.1).
- More than ``max_restarts`` restarts within ``window_s`` raises
  ``ActorFailed`` out of the nursery: the daemon then exits non-zero so that
  systemd (``Restart=on-failure``) restarts the whole process.
- An actor that returns normally is marked stopped and not restarted.
- Cancellation is never caught: a cancelled actor stops at once.

Must never: swallow ``BaseException`` (KeyboardInterrupt, Cancelled) or restart
without a delay.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable

import trio

from knhkd.config import SupervisorConfig
from knhkd.model import ActorStatus
from knhkd.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


class ActorFailed(Exception):
    """An actor exhausted its restart budget."""

    def __init__(self, name: str, cause: BaseException) -> None:
        super().__init__(f"actor {name} failed too often; last error: {cause!r}")
        self.name = name


def backoff_delay(cfg: SupervisorConfig, attempt: int, rng: random.Random) -> float:
    base = min(cfg.backoff_initial_s * (2 ** max(attempt - 1, 0)), cfg.backoff_max_s)
    return float(max(0.0, base * (1.0 + rng.uniform(-0.25, 0.25))))


class Supervisor:
    def __init__(self, cfg: SupervisorConfig, metrics: Metrics, rng: random.Random) -> None:
        self._cfg = cfg
        self._metrics = metrics
        self._rng = rng
        self.status: dict[str, ActorStatus] = {}

    def degraded(self) -> bool:
        return any(s.state in ("restarting", "failed") for s in self.status.values())

    async def supervise(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        recent: deque[float] = deque()
        status = self.status[name] = ActorStatus(state="starting", restarts=0)
        # Bound now, so the series exists at 0 before the first restart: an
        # alert on increase() sees that first one.
        restarts = self._metrics.actor_restarts.labels(name)
        while True:
            status.state = "running"
            try:
                await body()
            except Exception as exc:
                now = trio.current_time()
                recent.append(now)
                while recent and recent[0] < now - self._cfg.window_s:
                    recent.popleft()
                status.restarts += 1
                status.last_error = f"{type(exc).__name__}: {exc}"
                restarts.inc()
                if len(recent) > self._cfg.max_restarts:
                    status.state = "failed"
                    log.critical("actor %s exceeded its restart budget: %r", name, exc)
                    raise ActorFailed(name, exc) from exc
                status.state = "restarting"
                delay = backoff_delay(self._cfg, len(recent), self._rng)
                log.error(
                    "actor %s crashed (%r); restart %d in %.2fs", name, exc, len(recent), delay
                )
                await trio.sleep(delay)
            else:
                status.state = "stopped"
                return
