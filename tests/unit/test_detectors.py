"""knhkd.analyze.detectors: thresholds, windows, absence, drift, bounds, determinism."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from knhkd.analyze.detectors import Detectors, detect_batch
from knhkd.config import (
    AbsenceConfig,
    AnalyzeConfig,
    ErrorSpikeConfig,
    HighFrequencyConfig,
    SchemaDriftConfig,
)
from knhkd.model import Alert, DetectedPattern, Observation, ProposeChange, Sector

S = 1_000_000_000
T0 = 1_700_000_000 * S  # a realistic epoch, bucket-aligned

SCHEMA: Mapping[str, frozenset[str]] = {
    "finance": frozenset({"account_id", "source"}),
    "healthcare": frozenset({"patient_id"}),
    "manufacturing": frozenset(),
    "logistics": frozenset(),
    "generic": frozenset(),
}


def obs(
    i: int,
    t_ns: int,
    event_type: str = "login",
    sector: Sector = "finance",
    metadata: dict[str, str] | None = None,
) -> Observation:
    return Observation(
        id=f"o{i:06d}",
        seq=i,
        event_type=event_type,
        sector=sector,
        value=None,
        metadata=metadata or {},
        ingested_at_ns=t_ns,
    )


def burst(
    n: int, t_ns: int, event_type: str = "login", start: int = 0, sector: Sector = "finance"
) -> list[Observation]:
    return [obs(start + i, t_ns + i * 1000, event_type, sector) for i in range(n)]


def kinds(patterns: list[DetectedPattern]) -> list[str]:
    return [p.name for p in patterns]


# --------------------------------------------------------------------------- #
# high frequency
# --------------------------------------------------------------------------- #


def test_high_frequency_threshold_is_strict() -> None:
    d = Detectors(AnalyzeConfig(), SCHEMA, T0)
    d.observe(burst(100, T0))
    assert "high_frequency_login" not in kinds(d.evaluate(T0 + S))

    d = Detectors(AnalyzeConfig(), SCHEMA, T0)
    d.observe(burst(101, T0))
    (p,) = [p for p in d.evaluate(T0 + S) if p.kind == "high_frequency"]
    assert p.name == "high_frequency_login" and p.sector == "finance"
    assert p.event_type == "login" and p.threshold == 100.0
    assert p.evidence_count == 101
    assert p.evidence_ids == [f"o{i:06d}" for i in range(16)]
    assert p.confidence == 1 - 100 / 101
    assert isinstance(p.recommended_action, ProposeChange)
    assert p.window_seconds == 60.0 and p.detected_at_ns == T0 + S


def test_high_frequency_is_per_sector_and_type() -> None:
    d = Detectors(AnalyzeConfig(), SCHEMA, T0)
    d.observe(burst(60, T0, "login", 0, "finance") + burst(60, T0, "login", 100, "logistics"))
    d.observe(burst(60, T0, "logout", 200, "finance"))
    assert [p for p in d.evaluate(T0 + S) if p.kind == "high_frequency"] == []


def test_window_expiry() -> None:
    d = Detectors(AnalyzeConfig(), SCHEMA, T0)
    d.observe(burst(101, T0))
    assert "high_frequency_login" in kinds(d.evaluate(T0 + 59 * S + S // 2))
    assert "high_frequency_login" not in kinds(d.evaluate(T0 + 60 * S))


def test_evidence_is_the_first_in_window_order() -> None:
    cfg = AnalyzeConfig(
        high_frequency=HighFrequencyConfig(window_s=10, threshold=3), evidence_sample=3
    )
    d = Detectors(cfg, SCHEMA, T0)
    d.observe(burst(5, T0, start=0) + burst(5, T0 + 5 * S, start=10))
    (p,) = [p for p in d.evaluate(T0 + 6 * S) if p.kind == "high_frequency"]
    assert p.evidence_ids == ["o000000", "o000001", "o000002"] and p.evidence_count == 10
    (p,) = [p for p in d.evaluate(T0 + 10 * S) if p.kind == "high_frequency"]
    assert p.evidence_ids == ["o000010", "o000011", "o000012"] and p.evidence_count == 5


# --------------------------------------------------------------------------- #
# error spike
# --------------------------------------------------------------------------- #


def mixed(total: int, errors: int) -> list[Observation]:
    return [obs(i, T0 + i, "payment_error" if i < errors else "payment") for i in range(total)]


def test_error_spike_rate_edge() -> None:
    d = Detectors(AnalyzeConfig(), SCHEMA, T0)
    d.observe(mixed(100, 5))  # exactly 5 %: not above
    assert "error_spike" not in kinds(d.evaluate(T0 + S))

    d = Detectors(AnalyzeConfig(), SCHEMA, T0)
    d.observe(mixed(100, 6))
    (p,) = [p for p in d.evaluate(T0 + S) if p.kind == "error_spike"]
    assert p.sector == "finance" and p.recommended_action == Alert(severity="warning")
    assert p.evidence_count == 6
    assert p.evidence_ids == [f"o{i:06d}" for i in range(6)]
    assert abs(p.confidence - (1 - 0.05 / 0.06)) < 1e-12


def test_error_spike_needs_more_than_min_events() -> None:
    d = Detectors(AnalyzeConfig(), SCHEMA, T0)
    d.observe(mixed(10, 10))
    assert "error_spike" not in kinds(d.evaluate(T0 + S))
    d.observe([obs(10, T0 + 10, "disk_error")])
    assert "error_spike" in kinds(d.evaluate(T0 + S))


# --------------------------------------------------------------------------- #
# absence
# --------------------------------------------------------------------------- #


def test_absence_fires_once_per_episode_and_rearms() -> None:
    d = Detectors(AnalyzeConfig(), SCHEMA, T0)
    assert d.evaluate(T0 + 10 * S - 1) == []
    (p,) = d.evaluate(T0 + 10 * S)
    assert p.name == "no_observations" and p.sector is None
    assert p.recommended_action == Alert(severity="critical")
    assert p.confidence == 0.5 and p.evidence_count == 0
    assert d.evaluate(T0 + 20 * S) == []  # same silence: no second alert
    d.observe([obs(1, T0 + 21 * S, "ping")])
    assert d.evaluate(T0 + 30 * S) == []
    (again,) = d.evaluate(T0 + 41 * S)
    assert again.name == "no_observations" and again.id != p.id
    assert again.confidence == 20 / 30


def test_detect_batch_never_reports_absence() -> None:
    cfg = AnalyzeConfig(absence=AbsenceConfig(window_s=0.001))
    assert detect_batch(cfg, SCHEMA, [], T0) == []
    found = detect_batch(cfg, SCHEMA, burst(101, T0 - 20 * S), T0)
    assert kinds(found) == ["high_frequency_login"]


# --------------------------------------------------------------------------- #
# schema drift
# --------------------------------------------------------------------------- #


def test_schema_drift_against_the_sector_schema() -> None:
    d = Detectors(AnalyzeConfig(), SCHEMA, T0)
    d.observe(
        [
            obs(0, T0, metadata={"account_id": "a", "zeta": "1", "alpha": "2"}),
            obs(1, T0, metadata={"source": "web"}),
            obs(2, T0, metadata={"alpha": "3"}),
            obs(3, T0, metadata={}),
            obs(4, T0, sector="healthcare", metadata={"patient_id": "p"}),
            obs(5, T0, sector="generic", metadata={"anything": "goes"}),
        ]
    )
    drift = [p for p in d.evaluate(T0 + S) if p.kind == "schema_mismatch"]
    assert len(drift) == 1
    (p,) = drift
    assert p.sector == "finance" and p.metadata_keys == ["alpha", "zeta"]
    assert p.confidence == 2 / 4 and p.evidence_ids == ["o000000", "o000002"]
    assert isinstance(p.recommended_action, ProposeChange)
    assert [p for p in d.evaluate(T0 + 5 * S) if p.kind == "schema_mismatch"] == []


def test_schema_change_resets_drift_but_equal_schema_does_not() -> None:
    d = Detectors(AnalyzeConfig(), SCHEMA, T0)
    d.observe([obs(0, T0, metadata={"alpha": "1"})])
    d.set_schema(dict(SCHEMA))  # equal: evidence kept
    assert "schema_mismatch" in kinds(d.evaluate(T0 + S))
    d.set_schema({**SCHEMA, "finance": SCHEMA["finance"] | {"alpha"}})
    assert "schema_mismatch" not in kinds(d.evaluate(T0 + S))
    d.observe([obs(1, T0 + S, metadata={"alpha": "1"})])
    assert "schema_mismatch" not in kinds(d.evaluate(T0 + 2 * S))
    d.observe([obs(2, T0 + 2 * S, metadata={"beta": "1"})])
    (p,) = [p for p in d.evaluate(T0 + 2 * S) if p.kind == "schema_mismatch"]
    assert p.metadata_keys == ["beta"]


# --------------------------------------------------------------------------- #
# bounds, ids, order
# --------------------------------------------------------------------------- #


def test_keys_are_bounded_and_evictions_counted() -> None:
    cfg = AnalyzeConfig(high_frequency=HighFrequencyConfig(threshold=1), max_keys=3)
    d = Detectors(cfg, SCHEMA, T0)
    for i, et in enumerate(["a", "b", "c", "d", "e"]):
        d.observe(burst(2, T0 + i, et, start=10 * i))
    assert d.evictions == 2
    d.observe(burst(2, T0 + 9, "c", start=90))  # c is now the most recently seen
    d.observe(burst(2, T0 + 9, "f", start=95))  # evicts d
    assert d.evictions == 3
    assert sorted(p.event_type or "" for p in d.evaluate(T0 + S) if p.kind == "high_frequency") == [
        "c",
        "e",
        "f",
    ]


def test_pattern_ids_are_content_addressed() -> None:
    def run(now: int) -> list[DetectedPattern]:
        d = Detectors(AnalyzeConfig(), SCHEMA, T0)
        d.observe(burst(150, T0) + mixed(100, 50))
        return d.evaluate(now)

    a, b, c = run(T0 + S), run(T0 + S), run(T0 + 2 * S)
    assert [p.id for p in a] == [p.id for p in b]
    assert len({p.id for p in a}) == len(a) and all(len(p.id) == 32 for p in a)
    assert {p.id for p in a}.isdisjoint({p.id for p in c})


def test_output_sorted_by_confidence_then_name_then_sector() -> None:
    cfg = AnalyzeConfig(high_frequency=HighFrequencyConfig(threshold=10))
    d = Detectors(cfg, SCHEMA, T0)
    d.observe(
        burst(20, T0, "b", 0) + burst(40, T0, "a", 100) + burst(20, T0, "a", 200, "logistics")
    )
    d.observe(burst(20, T0, "c", 300, "healthcare"))
    out = d.evaluate(T0 + S)
    keys = [(-p.confidence, p.name, p.sector or "") for p in out]
    assert keys == sorted(keys)
    assert [(p.name, p.sector) for p in out if p.kind == "high_frequency"] == [
        ("high_frequency_a", "finance"),
        ("high_frequency_a", "logistics"),
        ("high_frequency_b", "finance"),
        ("high_frequency_c", "healthcare"),
    ]


_SECTORS: list[Sector] = ["finance", "healthcare", "generic"]


_EVENT = st.tuples(
    st.integers(0, S // 2),  # gap to the previous observation
    st.sampled_from(["login", "io_error", "scan"]),
    st.sampled_from(_SECTORS),
    st.frozensets(st.sampled_from(["source", "x", "y", "patient_id"])),
)


def _stream(events: list[tuple[int, str, Sector, frozenset[str]]]) -> list[Observation]:
    out, t = [], T0
    for i, (gap, event_type, sector, keys) in enumerate(events):
        t += gap
        out.append(obs(i, t, event_type, sector, dict.fromkeys(sorted(keys), "v")))
    return out


@settings(max_examples=50, deadline=None)
@given(
    events=st.lists(_EVENT, max_size=120),
    cuts=st.lists(st.integers(0, 120), max_size=6),
    later=st.integers(0, 20 * S),
)
def test_same_patterns_whatever_the_batch_boundaries(
    events: list[tuple[int, str, Sector, frozenset[str]]], cuts: list[int], later: int
) -> None:
    stream = _stream(events)
    cfg = AnalyzeConfig(
        high_frequency=HighFrequencyConfig(window_s=8, threshold=2),
        error_spike=ErrorSpikeConfig(window_s=7, min_events=2, error_rate=0.2),
        schema_drift=SchemaDriftConfig(window_s=3),
        absence=AbsenceConfig(window_s=4),
        max_keys=4,
        evidence_sample=2,
    )
    now = (stream[-1].ingested_at_ns if stream else T0) + later
    whole = Detectors(cfg, SCHEMA, T0)
    whole.observe(stream)
    split = Detectors(cfg, SCHEMA, T0)
    bounds = [0, *sorted(c for c in cuts if c <= len(stream)), len(stream)]
    for lo, hi in itertools.pairwise(bounds):
        split.observe(stream[lo:hi])
    expected = whole.evaluate(now)
    assert split.evaluate(now) == expected
    assert split.evictions == whole.evictions
    keys = [(-p.confidence, p.name, p.sector or "") for p in expected]
    assert keys == sorted(keys)
    assert all(0.0 <= p.confidence <= 1.0 for p in expected)
    assert all(len(p.evidence_ids) <= 2 for p in expected)
