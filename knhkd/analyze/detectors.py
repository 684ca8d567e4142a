"""The four detectors of the Analyze phase, kept incrementally.

Detectors (thresholds and windows from ``AnalyzeConfig``):

=====================  ==========================  =================================  ============
pattern                keyed by                    fires when (in the window)         action
=====================  ==========================  =================================  ============
high_frequency_{type}  (sector, event_type)        count > threshold                  ProposeChange
error_spike            sector                      count > min_events and             Alert warning
                                                   errors / count > error_rate
schema_mismatch        sector (not generic)        an observation carries a metadata  ProposeChange
                                                   key outside the sector's schema
no_observations        (global, sector None)       nothing arrived for window_s       Alert critical
=====================  ==========================  =================================  ============

An error is an observation whose ``event_type`` contains ``"error"``.

Confidence, computed from the evidence and clamped to [0, 1]:

- high_frequency: ``1 - threshold / count`` (0 at the threshold, towards 1 as
  the burst grows);
- error_spike: ``1 - error_rate / (errors / count)``, the same shape for rates;
- schema_mismatch: the share of the sector's observations in the window that
  carry at least one off-schema key;
- no_observations: ``silence / (silence + window)``: 0.5 when the silence has
  just reached the window, towards 1 as it lasts.

Guarantees:
- Windows are measured on ``Observation.ingested_at_ns`` (assigned by the
  server, so comparable) and the ``now_ns`` given to ``evaluate``. Each window
  is cut into buckets of ``min(1 s, window / 10)``; an observation counts while
  its bucket is one of the newest ``ceil(window / bucket)`` buckets up to the
  bucket of ``now_ns``. The window's resolution is therefore one bucket.
- ``observe`` costs O(1) per observation and key (``observe_counts``, for a
  ring batch given as counts, O(1) per key); ``evaluate`` costs O(distinct
  keys) (each key keeps running totals; expiring a bucket is amortised).
- Each keyed table holds at most ``max_keys`` keys; beyond that the least
  recently seen key is dropped and ``evictions`` counts it.
- Evidence ids are the first ``evidence_sample`` evidence observations in
  window order (bucket order, then arrival order); each bucket keeps at most
  that many, so memory per key is bounded too.
- Deterministic: the same observations, in the same order, give the same
  patterns whatever the batch boundaries; output is sorted by
  (-confidence, name, sector); a pattern's ``id`` is a content address of all
  its other fields, so re-detection at the same instant yields the same id.
- Absence is a timer checked in ``evaluate``: it fires once per silence and is
  re-armed by the next observation.
- A schema change (``set_schema`` with a different schema) restarts drift
  detection: evidence gathered against the old schema says nothing about the
  new one.

Must never: read a clock, draw random numbers, perform I/O, or hold state that
grows with the number of observations.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Generic, TypeVar

import msgspec

from knhkd.config import AnalyzeConfig
from knhkd.knowledge.rdf import content_hash
from knhkd.model import (
    Action,
    Alert,
    DetectedPattern,
    Observation,
    ObservationCounts,
    PatternKind,
    ProposeChange,
    Sector,
)

_SECOND_NS = 1_000_000_000
_PATTERN_DOMAIN = "knhkd/pattern/v1"
# A pattern id is a truncated content hash: 128 bits cannot collide by chance.
_PATTERN_ID_HEX = 32

K = TypeVar("K", bound=Hashable)


def _ns(seconds: float) -> int:
    return max(1, round(seconds * _SECOND_NS))


class _Window:
    """How one detector cuts time into buckets."""

    __slots__ = ("bucket_ns", "buckets")

    def __init__(self, window_s: float) -> None:
        window_ns = _ns(window_s)
        self.bucket_ns = min(_SECOND_NS, max(1, window_ns // 10))
        self.buckets = -(-window_ns // self.bucket_ns)

    def index(self, t_ns: int) -> int:
        return t_ns // self.bucket_ns

    def oldest(self, now_ns: int) -> int:
        """The oldest bucket index still inside the window ending at ``now_ns``."""
        return self.index(now_ns) - self.buckets + 1


class _Bucket:
    __slots__ = ("count", "flagged", "ids", "index")

    def __init__(self, index: int) -> None:
        self.index = index
        self.count = 0
        self.flagged = 0
        self.ids: list[str] = []


class _Series:
    """Bucketed counts of one key, with running totals over its live buckets."""

    __slots__ = ("buckets", "count", "flagged")

    def __init__(self) -> None:
        self.buckets: deque[_Bucket] = deque()
        self.count = 0
        self.flagged = 0

    def add(self, index: int, span: int, obs_id: str, *, flagged: bool, evidence: bool,
            sample: int) -> None:
        bucket = self._bucket(index, span)
        if bucket is None:
            return
        bucket.count += 1
        self.count += 1
        if flagged:
            bucket.flagged += 1
            self.flagged += 1
        if evidence and len(bucket.ids) < sample:
            bucket.ids.append(obs_id)

    def add_many(
        self, index: int, span: int, count: int, *, flagged: int, evidence: list[str], sample: int
    ) -> None:
        """``count`` observations of one bucket at once: ``flagged`` of them
        flagged, ``evidence`` the ids of the evidence ones in arrival order."""
        bucket = self._bucket(index, span)
        if bucket is None:
            return
        bucket.count += count
        self.count += count
        bucket.flagged += flagged
        self.flagged += flagged
        room = sample - len(bucket.ids)
        if room > 0:
            bucket.ids.extend(evidence[:room])

    def _bucket(self, index: int, span: int) -> _Bucket | None:
        buckets = self.buckets
        if buckets and buckets[-1].index == index:
            return buckets[-1]
        if not buckets or buckets[-1].index < index:
            buckets.append(_Bucket(index))
            # Keep no more buckets than one window spans from the newest, so a
            # key's memory is bounded even if evaluate is never called.
            self.expire(index - span + 1)
            return buckets[-1]
        if index < buckets[-1].index - span + 1:
            return None  # older than any window that can still be evaluated
        # Out of order (rare: ingest times are assigned in commit order).
        for pos in range(len(buckets) - 1, -1, -1):
            if buckets[pos].index == index:
                return buckets[pos]
            if buckets[pos].index < index:
                buckets.insert(pos + 1, _Bucket(index))
                return buckets[pos + 1]
        buckets.appendleft(_Bucket(index))
        return buckets[0]

    def expire(self, oldest: int) -> None:
        buckets = self.buckets
        while buckets and buckets[0].index < oldest:
            gone = buckets.popleft()
            self.count -= gone.count
            self.flagged -= gone.flagged

    def sample(self, n: int) -> list[str]:
        out: list[str] = []
        for bucket in self.buckets:
            out.extend(bucket.ids[: n - len(out)])
            if len(out) >= n:
                break
        return out


class _Table(Generic[K]):
    """Per-key series, at most ``max_keys`` of them, least recently seen evicted."""

    __slots__ = ("_series", "evictions", "max_keys")

    def __init__(self, max_keys: int) -> None:
        self._series: OrderedDict[K, _Series] = OrderedDict()
        self.max_keys = max_keys
        self.evictions = 0

    def series(self, key: K) -> _Series:
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = _Series()
            if len(self._series) > self.max_keys:
                self._series.popitem(last=False)
                self.evictions += 1
        else:
            self._series.move_to_end(key)
        return s

    def live(self, oldest: int) -> Iterator[tuple[K, _Series]]:
        """Expire every key's buckets before ``oldest``; yield the keys left."""
        dead: list[K] = []
        for key, s in self._series.items():
            s.expire(oldest)
            if s.count:
                yield key, s
            else:
                dead.append(key)
        for key in dead:
            del self._series[key]

    def clear(self) -> None:
        self._series.clear()


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))


def _pattern(
    *,
    name: str,
    kind: PatternKind,
    sector: Sector | None,
    confidence: float,
    now_ns: int,
    window_s: float,
    evidence_count: int,
    evidence_ids: list[str],
    action: Action,
    event_type: str | None = None,
    metadata_keys: list[str] | None = None,
    threshold: float | None = None,
) -> DetectedPattern:
    p = DetectedPattern(
        id="",
        name=name,
        kind=kind,
        sector=sector,
        confidence=_clamp(confidence),
        detected_at_ns=now_ns,
        window_seconds=window_s,
        evidence_count=evidence_count,
        evidence_ids=evidence_ids,
        recommended_action=action,
        event_type=event_type,
        metadata_keys=metadata_keys or [],
        threshold=threshold,
    )
    fields = msgspec.structs.asdict(p)
    del fields["id"]
    return msgspec.structs.replace(
        p, id=content_hash(_PATTERN_DOMAIN, fields)[:_PATTERN_ID_HEX]
    )


def _sort_key(p: DetectedPattern) -> tuple[float, str, str]:
    return (-p.confidence, p.name, p.sector or "")


class Detectors:
    """The incremental state of the four detectors (see the module docstring)."""

    def __init__(
        self, cfg: AnalyzeConfig, schema: Mapping[str, frozenset[str]], start_ns: int
    ) -> None:
        self._cfg = cfg
        self._schema: dict[str, frozenset[str]] = dict(schema)
        self._hf_window = _Window(cfg.high_frequency.window_s)
        self._err_window = _Window(cfg.error_spike.window_s)
        self._drift_window = _Window(cfg.schema_drift.window_s)
        self._absence_ns = _ns(cfg.absence.window_s)
        self._by_type: _Table[tuple[Sector, str]] = _Table(cfg.max_keys)
        self._errors: _Table[Sector] = _Table(cfg.max_keys)
        self._drift: _Table[Sector] = _Table(cfg.max_keys)
        self._drift_keys: _Table[tuple[Sector, str]] = _Table(cfg.max_keys)
        self._last_seen_ns = start_ns
        self._absence_fired = False

    @property
    def evictions(self) -> int:
        """Keys dropped because a table was full, since construction."""
        return (
            self._by_type.evictions
            + self._errors.evictions
            + self._drift.evictions
            + self._drift_keys.evictions
        )

    def set_schema(self, schema: Mapping[str, frozenset[str]]) -> None:
        new = dict(schema)
        if new == self._schema:
            return
        self._schema = new
        self._drift.clear()
        self._drift_keys.clear()

    def observe(self, batch: Sequence[Observation]) -> None:
        sample = self._cfg.evidence_sample
        hf, err, drift = self._hf_window, self._err_window, self._drift_window
        for obs in batch:
            t = obs.ingested_at_ns
            self._last_seen_ns = max(self._last_seen_ns, t)
            self._absence_fired = False
            self._by_type.series((obs.sector, obs.event_type)).add(
                hf.index(t), hf.buckets, obs.id, flagged=False, evidence=True, sample=sample
            )
            is_error = "error" in obs.event_type
            self._errors.series(obs.sector).add(
                err.index(t), err.buckets, obs.id, flagged=is_error, evidence=is_error,
                sample=sample,
            )
            if obs.sector == "generic":
                continue
            allowed = self._schema.get(obs.sector, frozenset())
            off = [k for k in obs.metadata if k not in allowed]
            di = drift.index(t)
            self._drift.series(obs.sector).add(
                di, drift.buckets, obs.id, flagged=bool(off), evidence=bool(off), sample=sample
            )
            for key in off:
                self._drift_keys.series((obs.sector, key)).add(
                    di, drift.buckets, obs.id, flagged=True, evidence=False, sample=0
                )

    def observe_counts(self, batch: ObservationCounts) -> None:
        """``observe`` for a committed ring batch given as counts per key: its
        observations share one ingest time and carry no metadata, so per key
        they fall in one bucket of each window and none is drift-flagged.
        O(keys), not O(observations), with the same counts, flags, evidence
        ids and patterns as ``observe`` on the same observations; a table's
        least-recently-seen order is kept per key by its last observation in
        the batch (the same order ``observe`` leaves, unless a table overflows
        ``max_keys`` within the batch)."""
        if not batch.keys:
            return
        t = batch.ingested_at_ns
        sample = self._cfg.evidence_sample
        hf, err, drift = self._hf_window, self._err_window, self._drift_window
        self._last_seen_ns = max(self._last_seen_ns, t)
        self._absence_fired = False
        keys = sorted(batch.keys, key=lambda k: k.last)
        for k in keys:
            self._by_type.series((k.sector, k.event_type)).add_many(
                hf.index(t), hf.buckets, k.count, flagged=0,
                evidence=[obs_id for _, obs_id in k.evidence], sample=sample,
            )  # fmt: skip
        # Per sector, in order of the sector's last observation.
        last: dict[Sector, int] = {}
        total: dict[Sector, int] = {}
        errors: dict[Sector, int] = {}
        error_ids: dict[Sector, list[tuple[int, str]]] = {}
        for k in keys:
            last[k.sector] = k.last
            total[k.sector] = total.get(k.sector, 0) + k.count
            if "error" in k.event_type:
                errors[k.sector] = errors.get(k.sector, 0) + k.count
                error_ids.setdefault(k.sector, []).extend(k.evidence)
        for sector in sorted(last, key=last.__getitem__):
            # Each key brings its first `sample` positions, so the sector's
            # first `sample` error observations are among them.
            ids = [obs_id for _, obs_id in sorted(error_ids.get(sector, []))]
            self._errors.series(sector).add_many(
                err.index(t), err.buckets, total[sector], flagged=errors.get(sector, 0),
                evidence=ids, sample=sample,
            )  # fmt: skip
            if sector == "generic":
                continue
            self._drift.series(sector).add_many(
                drift.index(t), drift.buckets, total[sector], flagged=0, evidence=[], sample=sample
            )

    def evaluate(self, now_ns: int) -> list[DetectedPattern]:
        cfg = self._cfg
        n = cfg.evidence_sample
        out: list[DetectedPattern] = []

        hf = cfg.high_frequency
        for (sector, event_type), s in self._by_type.live(self._hf_window.oldest(now_ns)):
            if s.count > hf.threshold:
                out.append(_pattern(
                    name=f"high_frequency_{event_type}",
                    kind="high_frequency",
                    sector=sector,
                    confidence=1.0 - hf.threshold / s.count,
                    now_ns=now_ns,
                    window_s=hf.window_s,
                    evidence_count=s.count,
                    evidence_ids=s.sample(n),
                    action=ProposeChange(
                        description=f"rate-limit {event_type!r} events in {sector} to "
                        f"{hf.threshold} per {hf.window_s:g} s"
                    ),
                    event_type=event_type,
                    threshold=float(hf.threshold),
                ))

        es = cfg.error_spike
        for sector, s in self._errors.live(self._err_window.oldest(now_ns)):
            rate = s.flagged / s.count
            if s.count > es.min_events and rate > es.error_rate:
                out.append(_pattern(
                    name="error_spike",
                    kind="error_spike",
                    sector=sector,
                    confidence=1.0 - es.error_rate / rate,
                    now_ns=now_ns,
                    window_s=es.window_s,
                    evidence_count=s.flagged,
                    evidence_ids=s.sample(n),
                    action=Alert(severity="warning"),
                    threshold=es.error_rate,
                ))

        oldest = self._drift_window.oldest(now_ns)
        off_keys: dict[Sector, list[str]] = {}
        for (sector, key), _s in self._drift_keys.live(oldest):
            if key not in self._schema.get(sector, frozenset()):
                off_keys.setdefault(sector, []).append(key)
        for sector, s in self._drift.live(oldest):
            keys = sorted(off_keys.get(sector, ()))
            # Keys can be missing only if their table evicted them; with no
            # key left there is nothing to propose.
            if s.flagged and keys:
                out.append(_pattern(
                    name="schema_mismatch",
                    kind="schema_mismatch",
                    sector=sector,
                    confidence=s.flagged / s.count,
                    now_ns=now_ns,
                    window_s=cfg.schema_drift.window_s,
                    evidence_count=s.flagged,
                    evidence_ids=s.sample(n),
                    action=ProposeChange(
                        description=f"add metadata keys {', '.join(keys)} to the "
                        f"{sector} schema"
                    ),
                    metadata_keys=keys,
                ))

        silence = now_ns - self._last_seen_ns
        if not self._absence_fired and silence >= self._absence_ns:
            self._absence_fired = True
            out.append(_pattern(
                name="no_observations",
                kind="no_observations",
                sector=None,
                confidence=silence / (silence + self._absence_ns),
                now_ns=now_ns,
                window_s=cfg.absence.window_s,
                evidence_count=0,
                evidence_ids=[],
                action=Alert(severity="critical"),
                threshold=cfg.absence.window_s,
            ))

        out.sort(key=_sort_key)
        return out


def detect_batch(
    cfg: AnalyzeConfig,
    schema: Mapping[str, frozenset[str]],
    observations: Sequence[Observation],
    now_ns: int,
) -> list[DetectedPattern]:
    """Stateless detection over ``observations`` alone, evaluated at ``now_ns``.
    Absence is excluded: it is about the stream, not about a batch."""
    d = Detectors(cfg, schema, start_ns=now_ns)
    d.observe(observations)
    return [p for p in d.evaluate(now_ns) if p.kind != "no_observations"]
