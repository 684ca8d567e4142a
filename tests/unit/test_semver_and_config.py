"""knhkd.knowledge.semver (the semver.org grammar and precedence) and the
validation and governance settings of knhkd.config."""

from __future__ import annotations

from itertools import pairwise

import pytest

from knhkd.config import ConfigError, build
from knhkd.knowledge import semver


def test_precedence_follows_semver_org() -> None:
    chain = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
             "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.1.0", "2.0.0"]
    versions = [semver.parse(v) for v in chain]
    assert all(v is not None for v in versions)
    for a, b in pairwise(versions):
        assert a is not None and b is not None and a.precedes(b) and not b.precedes(a)
    one, other = semver.parse("1.0.0+build.1"), semver.parse("1.0.0+build.2")
    assert one is not None and other is not None and one.same_precedence(other)


@pytest.mark.parametrize("text", ["1.0", "v1.0.0", "01.0.0", "1.0.0-01", "1.0.0-", "1.0.0+",
                                  "1.0.0 ", "a.b.c"])
def test_not_semver(text: str) -> None:
    assert semver.parse(text) is None


def test_bump_kinds() -> None:
    v = semver.parse("1.2.3")
    assert v is not None
    for newer, kind in [("2.0.0", "major"), ("1.3.0", "minor"), ("1.2.4", "patch")]:
        n = semver.parse(newer)
        assert n is not None and v.bump_kind(n) == kind


def test_validation_defaults_are_the_concepts_numbers() -> None:
    cfg = build({})
    inv = cfg.validate.invariants
    assert (inv.max_estimated_ticks, inv.hot_path_max_ticks, inv.warm_path_max_ms) == (8, 8, 100)
    assert (inv.max_memory_mb, inv.max_cpu_percent, inv.max_tail_ms) == (1024, 50, 500)
    assert (inv.max_tick_regression, inv.max_schema_violation_rate) == (0.10, 0.01)
    b = cfg.validate.budget
    assert (b.class_cost, b.property_cost, b.shape_cost) == (1.0, 0.5, 3.0)
    g = cfg.governance
    assert [(q.quorum, q.min_review_h) for q in (g.critical, g.high, g.medium, g.low)] == [
        (3, 24), (2, 12), (1, 1), (1, 0)
    ]
    assert (g.request_expiry_h, g.activation_window_h) == (168, 1)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"validate": {"invariants": {"unmeasured": "ignore"}}}, "validate.invariants.unmeasured"),
        ({"validate": {"time_budget_ms": {"static": 0}}}, "validate.time_budget_ms.static"),
        ({"validate": {"time_budget_ms": {"stage8": 1.0}}}, "validate.time_budget_ms.stage8"),
        ({"validate": {"budget": {"shape_cost": -1}}}, "validate.budget.shape_cost"),
        ({"governance": {"critical": {"quorum": 0}}}, "governance.critical.quorum"),
        ({"governance": {"low": {"min_review_h": -1}}}, "governance.low.min_review_h"),
    ],
)
def test_invalid_settings_are_named(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(raw)
    assert info.value.key == key
