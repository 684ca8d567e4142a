"""Per-principal token buckets (``[auth.rate_limit]``), so one producer cannot
starve the others.

Guarantees:
- Each principal (by ``Principal.name``) has a bucket of ``burst`` requests
  refilled at ``rate_per_s``; the first ``overrides`` entry naming its subject
  or one of its roles gives its own rate and burst. ``rate_per_s = 0`` (the
  default) is no limit at all.
- ``take`` answers 0 (go ahead, one request taken) or the seconds until one
  request's worth has refilled (refused, nothing taken).
- Memory is bounded: at most ``max_principals`` buckets, least recently used
  dropped first. A bucket idle for ``burst / rate`` seconds is full, so
  dropping it loses nothing; dropping a busier one (only when more principals
  than that are active at once) hands that principal a full burst again.

Must never: read the clock (``now`` is given, monotonic seconds).
"""

from __future__ import annotations

from collections import OrderedDict

from knhkd.config import RateLimitConfig
from knhkd.model import Principal


class RateLimiter:
    def __init__(self, cfg: RateLimitConfig) -> None:
        self.cfg = cfg
        # name -> [tokens, last refill time, rate, burst]
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _limits(self, principal: Principal) -> tuple[float, float]:
        for o in self.cfg.overrides:
            by_role = bool(o.role) and o.role in principal.roles
            if by_role or (o.subject and o.subject == principal.name):
                return o.rate_per_s, float(o.burst)
        return self.cfg.rate_per_s, float(self.cfg.burst)

    def take(self, principal: Principal, now: float) -> float:
        name = principal.name
        bucket = self._buckets.get(name)
        if bucket is None:
            rate, burst = self._limits(principal)
            if rate <= 0:
                return 0.0
            bucket = [burst, now, rate, burst]
            self._buckets[name] = bucket
            if len(self._buckets) > self.cfg.max_principals:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(name)
        tokens, last, rate, burst = bucket
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens >= 1.0:
            bucket[0], bucket[1] = tokens - 1.0, now
            return 0.0
        bucket[0], bucket[1] = tokens, now
        return (1.0 - tokens) / rate
