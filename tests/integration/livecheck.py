"""A registry live-check in the spirit of ``weaver registry live-check``
(not installable here): emitted spans and a /metrics scrape against
``registry/``, in both directions, one finding per line.

Nothing here names a span or a metric: everything is read from the registry,
so a rename there (``*_ms`` -> ``*_seconds``) needs no change here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.otlp import ReceivedSpan

REGISTRY = Path(__file__).resolve().parents[2] / "registry"
PROM_TYPE = {"counter": "counter", "histogram": "histogram", "gauge": "gauge",
             "updowncounter": "gauge"}  # fmt: skip
PY_TYPE: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "int": (int,),
    "double": (float, int),
    "boolean": (bool,),
}
# UCUM unit -> the suffix a Prometheus name in that unit carries (and back).
UNIT_SUFFIX = {"s": "_seconds", "By": "_bytes", "ms": "_ms"}


@dataclass(frozen=True)
class Attr:
    id: str
    type: str  # string, int, double, boolean, or "enum"
    members: frozenset[Any]


@dataclass(frozen=True)
class Ref:
    id: str
    level: str  # required, conditionally_required, recommended, opt_in


@dataclass
class Registry:
    attributes: dict[str, Attr]
    spans: dict[str, tuple[str, list[Ref]]]  # name -> (span_kind, refs)
    metrics: dict[str, tuple[str, str, list[Ref]]]  # prom base name -> (instrument, unit, refs)


def _level(raw: Any) -> str:
    return raw if isinstance(raw, str) else next(iter(raw))


def load() -> Registry:
    groups: list[dict[str, Any]] = []
    for path in sorted(REGISTRY.glob("*.yaml")):
        if path.name != "registry_manifest.yaml":
            groups += yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    attrs: dict[str, Attr] = {}
    for g in groups:
        for a in g.get("attributes", []):
            if "id" in a:
                t = a["type"]
                if isinstance(t, dict):
                    members = frozenset(m["value"] for m in t["members"])
                    attrs[a["id"]] = Attr(a["id"], "enum", members)
                else:
                    attrs[a["id"]] = Attr(a["id"], t, frozenset())
    reg = Registry(attrs, {}, {})
    for g in groups:
        refs = [
            Ref(a["ref"], _level(a.get("requirement_level", "recommended")))
            for a in g.get("attributes", [])
            if "ref" in a
        ]
        if g["type"] == "span":
            reg.spans[g["id"].removeprefix("span.")] = (g["span_kind"], refs)
        elif g["type"] == "metric":
            # OpenTelemetry's Prometheus rule (registry/README.md): the unit
            # names the suffix, the metric name never carries it.
            name = g["metric_name"].replace(".", "_") + UNIT_SUFFIX.get(str(g["unit"]), "")
            reg.metrics[name] = (g["instrument"], str(g["unit"]), refs)
    return reg


def _type_finding(where: str, attr: Attr, value: Any) -> str | None:
    if attr.type == "enum":
        if value not in attr.members:
            return f"{where}: value {value!r} is not a member of {sorted(attr.members)}"
        return None
    ok = PY_TYPE.get(attr.type)
    if ok is None:
        return None
    if isinstance(value, bool) and attr.type != "boolean":
        return f"{where}: {value!r} is a boolean, registry says {attr.type}"
    if not isinstance(value, ok):
        return f"{where}: {value!r} is {type(value).__name__}, registry says {attr.type}"
    return None


def check_spans(
    reg: Registry, spans: list[ReceivedSpan], not_exercised: dict[str, str]
) -> list[str]:
    """Findings of ``spans`` against the registry. ``not_exercised`` names
    conditionally required attributes (``span/attr``) the scenario cannot
    reach, with the reason: those alone may go unseen."""
    findings: list[str] = []
    seen_spans: set[str] = set()
    seen_attrs: set[tuple[str, str]] = set()
    for s in spans:
        declared = reg.spans.get(s.name)
        if declared is None:
            findings.append(f"span {s.name}: emitted, not in registry/")
            continue
        seen_spans.add(s.name)
        kind, refs = declared
        if s.kind != kind:
            findings.append(f"span {s.name}: kind {s.kind}, registry says {kind}")
        allowed = {r.id: r for r in refs}
        for key, value in s.attributes.items():
            seen_attrs.add((s.name, key))
            if key not in allowed:
                where = "not in registry/" if key not in reg.attributes else "not declared"
                findings.append(f"span {s.name}: attribute {key}={value!r} {where} on this span")
                continue
            f = _type_finding(f"span {s.name}: attribute {key}", reg.attributes[key], value)
            if f:
                findings.append(f)
        for r in refs:
            if r.level == "required" and r.id not in s.attributes:
                findings.append(f"span {s.name}: required attribute {r.id} missing")
    for name, (_, refs) in sorted(reg.spans.items()):
        if name not in seen_spans:
            findings.append(f"span {name}: in registry/, never emitted")
            continue
        for r in refs:
            if (name, r.id) in seen_attrs or f"{name}/{r.id}" in not_exercised:
                continue
            findings.append(f"span {name}: attribute {r.id} ({r.level}) never emitted")
    return sorted(set(findings))


def check_metrics(reg: Registry, exposition: str) -> list[str]:
    """Findings of a /metrics text against the registry's metrics: knhk_* only
    (process/platform collectors are Prometheus' own conventions)."""
    findings: list[str] = []
    seen: set[str] = set()
    for fam in text_string_to_metric_families(exposition):
        if not fam.name.startswith("knhk_"):
            continue
        if fam.name.endswith("_created") and fam.name.removesuffix("_created") in reg.metrics:
            # prometheus-client's creation timestamps of a counter or
            # histogram, which the text-format parser reads as a gauge.
            continue
        declared = reg.metrics.get(fam.name)
        if declared is None:
            findings.append(f"metric {fam.name} ({fam.type}): exposed, not in registry/")
            continue
        seen.add(fam.name)
        instrument, unit, refs = declared
        if PROM_TYPE.get(instrument) != fam.type:
            findings.append(f"metric {fam.name}: type {fam.type}, registry says {instrument}")
        suffix = UNIT_SUFFIX.get(unit)
        if suffix and not fam.name.endswith(suffix):
            findings.append(f"metric {fam.name}: unit {unit} but the name lacks {suffix}")
        for u, sfx in UNIT_SUFFIX.items():
            if fam.name.endswith(sfx) and unit != u:
                findings.append(f"metric {fam.name}: name says {u}, registry unit is {unit}")
        labels = {r.id.replace(".", "_"): r.id for r in refs}
        for sample in fam.samples:
            for key, value in sample.labels.items():
                if key in ("le", "quantile"):
                    continue
                if key not in labels:
                    findings.append(f"metric {fam.name}: label {key} not declared")
                    continue
                attr = reg.attributes[labels[key]]
                if attr.type == "enum" and value not in attr.members:
                    findings.append(f"metric {fam.name}: label {key}={value!r} not a member")
    for name in sorted(set(reg.metrics) - seen):
        findings.append(f"metric {name}: in registry/, not exposed")
    return sorted(set(findings))


def check_attributes(
    reg: Registry, spans: list[ReceivedSpan], exposition: str, not_exercised: dict[str, str]
) -> list[str]:
    """Declared attributes that no span carried and no metric sample labelled,
    but those ``not_exercised`` names (``attr/ID``) with a reason."""
    seen = {k for s in spans for k in s.attributes}
    for fam in text_string_to_metric_families(exposition):
        for sample in fam.samples:
            seen.update(sample.labels)
    label_form = {a.replace(".", "_"): a for a in reg.attributes}
    seen |= {label_form[k] for k in seen if k in label_form}
    return sorted(
        f"attribute {a}: in registry/, never emitted"
        for a in reg.attributes
        if a not in seen and f"attr/{a}" not in not_exercised
    )
