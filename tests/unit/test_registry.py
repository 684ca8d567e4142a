"""The Weaver registry in ``registry/`` is well formed and matches the code.

Guarantees checked:
- every group has ``id``, ``type`` and ``brief``; ids are unique across groups and
  attribute ids are unique across the registry;
- every attribute a span or metric references is declared;
- spans and metrics carry the fields Weaver requires (span_kind, metric_name,
  instrument, unit, stability);
- the metrics declared and the metrics a live ``Metrics()`` exposes are the same
  set, with the same instrument and the same labels: adding a metric to
  ``knhkd/telemetry/metrics.py`` without declaring it fails here;
- closed label sets (sector, receipt kind, pattern type) equal the model's.

What the running daemon really emits (spans over OTLP, /metrics) is checked
against the registry by tests/integration/test_traces.py (the live check).
"""

from __future__ import annotations

import re
import typing
from collections import Counter as Tally
from pathlib import Path
from typing import Any

import pytest

# A hard import on purpose: a skipped registry test would let an undeclared
# metric through. PyYAML comes with the test extra.
import yaml
from prometheus_client.metrics import MetricWrapperBase

from knhkd import model
from knhkd.loop import integrity, writer
from knhkd.telemetry.metrics import WRITE_REFUSAL_CAUSES, Metrics

REGISTRY = Path(__file__).resolve().parents[2] / "registry"
MANIFEST = "registry_manifest.yaml"

GROUP_TYPES = {"attribute_group", "span", "metric", "event", "resource"}
STABILITY = {"stable", "development", "alpha", "beta", "release_candidate", "deprecated"}
SIMPLE_TYPES = {
    "string", "int", "double", "boolean", "any",
    "string[]", "int[]", "double[]", "boolean[]",
}  # fmt: skip
SPAN_KINDS = {"client", "server", "producer", "consumer", "internal"}
REQUIREMENT_LEVELS = {"required", "conditionally_required", "recommended", "opt_in"}
# Weaver instrument -> prometheus-client family type.
PROM_TYPE = {"counter": "counter", "histogram": "histogram", "gauge": "gauge",
             "updowncounter": "gauge"}  # fmt: skip

# The telemetry names of the original (seed/KNHK_CONCEPTS.md) plus the labels.
CONCEPT_ATTRIBUTES = {
    "observation.id", "observation.sector", "observation.event_type",
    "proposal.id", "proposal.confidence",
    "snapshot.id", "snapshot.parent_id", "snapshot.version",
    "validation.stage", "validation.stage_name", "validation.passed",
    "validation.failure_reason",
    "invariant.id",
    "pattern.name", "pattern.type", "pattern.confidence", "pattern.evidence_count",
    "knhk.mape_k.cycle_id", "knhk.mape_k.phase",
    "sector", "actor", "status", "outcome", "kind", "reason", "pattern_type",
}  # fmt: skip
REQUIRED_SPANS = {
    *(f"knhk.mape_k.{p}" for p in ("monitor", "analyze", "plan", "execute", "knowledge", "cycle")),
    "knhk.receipt.generate", "knhk.receipt.verify",
    "knhk.guard.validate", "knhk.guard.enforce",
    "knhk.store.commit", "knhk.http.request",
}  # fmt: skip


# --------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------- #


def _load_groups() -> list[tuple[str, dict[str, Any]]]:
    groups: list[tuple[str, dict[str, Any]]] = []
    files = sorted(p for p in REGISTRY.glob("*.yaml") if p.name != MANIFEST)
    assert files, f"no registry files in {REGISTRY}"
    for path in files:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert isinstance(doc, dict) and set(doc) == {"groups"}, f"{path.name}: only `groups:`"
        assert isinstance(doc["groups"], list), f"{path.name}: `groups` must be a list"
        groups.extend((path.name, g) for g in doc["groups"])
    return groups


@pytest.fixture(scope="module")
def groups() -> list[tuple[str, dict[str, Any]]]:
    return _load_groups()


@pytest.fixture(scope="module")
def attributes(groups: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Every attribute *definition* (``id:``, not ``ref:``), by id."""
    ids: Tally[str] = Tally()
    defs: dict[str, dict[str, Any]] = {}
    for _, g in groups:
        for a in g.get("attributes", []):
            if "id" in a:
                ids[a["id"]] += 1
                defs[a["id"]] = a
    dupes = sorted(i for i, n in ids.items() if n > 1)
    assert not dupes, f"attributes declared more than once: {dupes}"
    return defs


def _of_type(groups: list[tuple[str, dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [g for _, g in groups if g.get("type") == kind]


def _refs(group: dict[str, Any]) -> list[str]:
    return [a["ref"] for a in group.get("attributes", []) if "ref" in a]


# --------------------------------------------------------------------------- #
# Structure
# --------------------------------------------------------------------------- #


def test_manifest() -> None:
    manifest = yaml.safe_load((REGISTRY / MANIFEST).read_text(encoding="utf-8"))
    for key in ("name", "description", "semconv_version", "schema_base_url"):
        assert isinstance(manifest.get(key), str) and manifest[key], f"manifest lacks {key}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", manifest["semconv_version"])
    assert manifest["schema_base_url"].startswith("https://")


def test_every_group_has_id_type_brief(groups: list[tuple[str, dict[str, Any]]]) -> None:
    for fname, g in groups:
        where = f"{fname}: {g.get('id', '<no id>')}"
        assert isinstance(g.get("id"), str) and g["id"], f"{where}: no id"
        assert g.get("type") in GROUP_TYPES, f"{where}: type {g.get('type')!r}"
        assert isinstance(g.get("brief"), str) and g["brief"].strip(), f"{where}: no brief"
        if g["type"] != "attribute_group":
            # Weaver requires stability on every signal group.
            assert g.get("stability") in STABILITY, f"{where}: stability"


def test_group_ids_unique(groups: list[tuple[str, dict[str, Any]]]) -> None:
    ids = Tally(g["id"] for _, g in groups)
    assert not [i for i, n in ids.items() if n > 1], f"duplicate group ids: {ids}"


def test_attribute_definitions(attributes: dict[str, dict[str, Any]]) -> None:
    for aid, a in attributes.items():
        assert isinstance(a.get("brief"), str) and a["brief"].strip(), f"{aid}: no brief"
        assert a.get("stability") in STABILITY, f"{aid}: stability"
        t = a.get("type")
        if isinstance(t, dict):
            members = t.get("members")
            assert isinstance(members, list) and members, f"{aid}: enum without members"
            assert len({m["value"] for m in members}) == len(members), f"{aid}: repeated value"
            for m in members:
                assert {"id", "value", "stability"} <= set(m), f"{aid}: member {m}"
        else:
            assert t in SIMPLE_TYPES, f"{aid}: type {t!r}"
            # Weaver wants examples for string attributes.
            if t in ("string", "string[]"):
                assert a.get("examples"), f"{aid}: string attribute without examples"


def test_concept_attributes_declared(attributes: dict[str, dict[str, Any]]) -> None:
    missing = CONCEPT_ATTRIBUTES - attributes.keys()
    assert not missing, f"attributes of the concepts file not declared: {sorted(missing)}"


def test_references_resolve(
    groups: list[tuple[str, dict[str, Any]]], attributes: dict[str, dict[str, Any]]
) -> None:
    for _, g in groups:
        for a in g.get("attributes", []):
            assert ("id" in a) != ("ref" in a), f"{g['id']}: attribute needs exactly id or ref"
            if "ref" in a:
                assert a["ref"] in attributes, f"{g['id']}: ref {a['ref']!r} is not declared"
            level = a.get("requirement_level", "recommended")
            name = next(iter(level)) if isinstance(level, dict) else level
            assert name in REQUIREMENT_LEVELS, f"{g['id']}: requirement_level {level!r}"
        refs = _refs(g)
        assert len(refs) == len(set(refs)), f"{g['id']}: an attribute is referenced twice"
        if g["type"] in ("span", "metric"):
            assert all("ref" in a for a in g.get("attributes", [])), (
                f"{g['id']}: signals reference attributes; define them in attributes.yaml"
            )


def test_spans(groups: list[tuple[str, dict[str, Any]]]) -> None:
    spans = _of_type(groups, "span")
    names = set()
    for s in spans:
        assert s["id"].startswith("span."), f"{s['id']}: span ids start with 'span.'"
        assert s.get("span_kind") in SPAN_KINDS, f"{s['id']}: span_kind"
        names.add(s["id"].removeprefix("span."))
    assert names >= REQUIRED_SPANS, f"spans not declared: {sorted(REQUIRED_SPANS - names)}"


def test_metric_groups(groups: list[tuple[str, dict[str, Any]]]) -> None:
    seen: Tally[str] = Tally()
    for m in _of_type(groups, "metric"):
        name = m.get("metric_name")
        assert isinstance(name, str) and re.fullmatch(r"knhk(\.[a-z][a-z0-9_]*)+", name), (
            f"{m['id']}: metric_name {name!r}"
        )
        assert m["id"] == f"metric.{name}", f"{m['id']}: id must be metric.<metric_name>"
        assert m.get("instrument") in PROM_TYPE, f"{m['id']}: instrument"
        assert isinstance(m.get("unit"), str) and m["unit"], f"{m['id']}: unit"
        if m["unit"] in UNIT_SUFFIX:  # the suffix comes from the unit, once
            assert not name.endswith(UNIT_SUFFIX[m["unit"]]), f"{m['id']}: unit in the name"
        assert not re.search(r"_(ms|us|ns|millis\w*)$", name), f"{m['id']}: not a base unit"
        seen[prometheus_name(m)] += 1
    clashes = [n for n, c in seen.items() if c > 1]
    assert not clashes, f"metric names that map to one Prometheus name: {clashes}"


# --------------------------------------------------------------------------- #
# Against the code
# --------------------------------------------------------------------------- #


# The unit suffixes of OpenTelemetry's Prometheus rule that knhkd uses.
UNIT_SUFFIX = {"s": "_seconds", "By": "_bytes"}
# prometheus_client's process and platform collectors: standard names, not
# knhkd's to declare (registry/metrics.yaml says so).
STANDARD_FAMILIES = re.compile(r"process_.*|python_info")


def prometheus_name(metric: dict[str, Any]) -> str:
    """The family name (without ``_total``) of a registry metric group."""
    return metric["metric_name"].replace(".", "_") + UNIT_SUFFIX.get(metric["unit"], "")


def _declared_metrics(
    groups: list[tuple[str, dict[str, Any]]],
) -> dict[str, tuple[str, set[str]]]:
    """Prometheus family name -> (prometheus type, label names), from the registry."""
    out: dict[str, tuple[str, set[str]]] = {}
    for m in _of_type(groups, "metric"):
        labels = {r.replace(".", "_") for r in _refs(m)}
        out[prometheus_name(m)] = (PROM_TYPE[m["instrument"]], labels)
    return out


def _live_metrics() -> dict[str, tuple[str, set[str]]]:
    """Prometheus family name -> (type, label names), from a live Metrics()."""
    metrics = Metrics()
    # The public view: every family the daemon's registry would expose.
    families = {
        f.name: f.type
        for f in metrics.registry.collect()
        if not STANDARD_FAMILIES.fullmatch(f.name)
    }
    # Label names are not in the public view for families without children yet,
    # so read them from the wrapper objects (stable prometheus-client attributes).
    wrappers = [v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)]
    labels = {w._name: set(w._labelnames) for w in wrappers}
    unreached = families.keys() - labels.keys()
    assert not unreached, f"families not held as Metrics attributes: {sorted(unreached)}"
    return {name: (typ, labels[name]) for name, typ in families.items()}


def test_every_exposed_metric_is_declared(groups: list[tuple[str, dict[str, Any]]]) -> None:
    declared = _declared_metrics(groups)
    live = _live_metrics()
    undeclared = sorted(live.keys() - declared.keys())
    assert not undeclared, (
        f"metrics in knhkd/telemetry/metrics.py missing from registry/metrics.yaml: {undeclared}"
    )
    for name, (typ, labels) in live.items():
        want_type, want_labels = declared[name]
        assert typ == want_type, f"{name}: code has {typ}, registry declares {want_type}"
        assert labels == want_labels, f"{name}: code labels {labels}, registry {want_labels}"


def test_every_declared_metric_exists(groups: list[tuple[str, dict[str, Any]]]) -> None:
    missing = sorted(_declared_metrics(groups).keys() - _live_metrics().keys())
    assert not missing, f"declared in registry/ but absent from metrics.py: {missing}"


def test_prometheus_exposition_names(groups: list[tuple[str, dict[str, Any]]]) -> None:
    """The documented rule: dots become underscores, counters gain ``_total``."""
    text = Metrics().render().decode()
    for m in _of_type(groups, "metric"):
        prom = prometheus_name(m)
        exposed = f"{prom}_total" if m["instrument"] == "counter" else prom
        want = PROM_TYPE[m["instrument"]]
        assert f"# TYPE {exposed} {want}\n" in text, f"{exposed} ({want}) not exposed"
        if not _refs(m):  # labelled families have no sample until a child exists
            assert re.search(rf"^{re.escape(exposed)}(_count|_sum|_bucket)?[{{ ]", text, re.M), (
                f"{exposed} has no sample in the exposition"
            )


def _enum_values(attributes: dict[str, dict[str, Any]], aid: str) -> set[str]:
    t = attributes[aid]["type"]
    assert isinstance(t, dict), f"{aid} should be an enum"
    return {m["value"] for m in t["members"]}


@pytest.mark.parametrize(
    ("attribute", "values"),
    [
        ("sector", set(model.SECTORS)),
        ("kind", set(typing.get_args(model.ReceiptKind))),
        ("pattern_type", set(typing.get_args(model.PatternKind))),
        ("status", {"success", "client_error", "error"}),
        ("knhk.mape_k.phase", {"monitor", "analyze", "plan", "execute", "knowledge"}),
        ("invariant.id", {"Q1", "Q2", "Q3", "Q4", "Q5"}),
        # The write gate's causes (their series exist at 0 from the start).
        ("cause", {writer.GATE_KEY, integrity.GATE_KEY, *WRITE_REFUSAL_CAUSES}),
    ],
)
def test_closed_label_sets_match_the_model(
    attributes: dict[str, dict[str, Any]], attribute: str, values: set[str]
) -> None:
    assert _enum_values(attributes, attribute) == values
