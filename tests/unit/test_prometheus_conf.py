"""The shipped Prometheus alert rules and Grafana dashboard, checked with
Prometheus's own tool.

Guarantees checked:
- ``promtool check rules`` accepts conf/prometheus/alerts.yml and
  ``promtool test rules`` passes every file of conf/prometheus/tests/;
- every alert of alerts.yml has a unit test in which it fires (an alert
  without one fails here);
- every PromQL expression of the dashboard (conf/grafana/) parses: each one
  becomes a recording rule of a generated file that ``promtool check rules``
  must accept;
- every metric an alert or a panel names is declared in registry/metrics.yaml
  (``up`` aside, which Prometheus itself writes).

promtool comes from Debian's ``prometheus`` package (.ci/run installs it);
where it is absent these tests are SKIPPED with that reason.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_registry import _declared_metrics, _load_groups

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "conf" / "prometheus" / "alerts.yml"
RULE_TESTS = sorted((ROOT / "conf" / "prometheus" / "tests").glob("*.yml"))
DASHBOARDS = sorted((ROOT / "conf" / "grafana").glob("*.json"))
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian package `prometheus`; .ci/run installs it)",
)

# Words of PromQL that are not metric names.
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip
_SERIES_SUFFIX = re.compile(r"_(bucket|sum|count|total|created)$")


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (outside strings, label
    matchers, ranges, grouping clauses and function calls)."""
    s = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", s):
        if m.group(2) is None and m.group(1).lower() not in _KEYWORDS:
            names.add(m.group(1))
    return names


def _family(name: str, declared: set[str]) -> str | None:
    if name in declared:
        return name
    base = _SERIES_SUFFIX.sub("", name)
    return base if base in declared else None


def _undeclared(exprs: dict[str, str]) -> list[str]:
    declared = set(_declared_metrics(_load_groups()))
    return [
        f"{where}: {name}"
        for where, expr in exprs.items()
        for name in sorted(metric_names(expr))
        if name != "up" and _family(name, declared) is None
    ]


def _alerts() -> dict[str, str]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"] if "alert" in r}


def _panel_exprs(dashboard: Path) -> dict[str, str]:
    doc = json.loads(dashboard.read_text(encoding="utf-8"))
    out: dict[str, str] = {}

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                out[f"{dashboard.name}: {p['title']} {t['refId']}"] = t["expr"]

    walk(doc["panels"])
    return out


def test_metric_names_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, instance) (rate(knhk_a_bucket{op="x or y"}[5m])))'
        " / on (instance) group_left knhk_b offset 5m > bool 2 unless up"
    )
    assert metric_names(expr) == {"knhk_a_bucket", "knhk_b", "up"}


@needs_promtool
def test_alert_rules_check() -> None:
    done = _promtool("check", "rules", ALERTS)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_alert_rules_unit_tests() -> None:
    assert RULE_TESTS, "no promtool rule tests in conf/prometheus/tests/"
    done = _promtool("test", "rules", *RULE_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_firing_test() -> None:
    fired: set[str] = set()
    for path in RULE_TESTS:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for case in doc["tests"]:
            for t in case.get("alert_rule_test", []):
                if t.get("exp_alerts"):
                    fired.add(t["alertname"])
    missing = sorted(_alerts().keys() - fired)
    assert not missing, f"alerts with no promtool test in which they fire: {missing}"


def test_alerts_name_declared_metrics() -> None:
    assert _undeclared(_alerts()) == []


@needs_promtool
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    assert DASHBOARDS, "no dashboard in conf/grafana/"
    exprs = {k: v for d in DASHBOARDS for k, v in _panel_exprs(d).items()}
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs.values())]
    generated = tmp_path / "dashboard_queries.yml"
    generated.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = _promtool("check", "rules", generated)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


def test_dashboard_names_declared_metrics() -> None:
    exprs = {k: v for d in DASHBOARDS for k, v in _panel_exprs(d).items()}
    assert exprs, "the dashboard has no query"
    assert _undeclared(exprs) == []
