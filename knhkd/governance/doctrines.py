"""Sector doctrines: loading, which are in effect, and judging a proposal.

Files: ``<doctrines_dir>/<sector>.toml``, one per sector, each an array of
``[[doctrine]]`` tables (fields of ``model.Doctrine``; the sector comes from the
file name) with a ``[doctrine.constraint]`` table whose ``kind`` is one of
``approval_chain``, ``segregation_of_duties``, ``resource_limit``,
``time_window``, ``schema``, ``custom``. Enforcement is ``mandatory``,
``warning`` or ``advisory``; dates are TOML dates (UTC calendar days).

The rules (knhkd decides where the concepts file leaves room):
- A doctrine applies to a proposal of its sector whose judgement time ``now``
  falls on a UTC day with ``effective_date <= day`` and, if it expires,
  ``day < expires``.
- ApprovalChain{required_signers, sectors}: at least ``required_signers``
  distinct persons signed, and for every listed unit some signer signed
  ``@unit`` (see signers.py for ``name[:role][@unit]``).
- SegregationOfDuties{incompatible_roles}: no person holds two different roles
  of one set (one person signing as both "doctor" and "billing" violates
  {doctor, billing}; a doctor and a billing clerk who are two people do not).
  The concepts file's wording ("no two signers hold roles from the same set")
  would forbid two doctors co-signing; knhkd reads it as the classic duty
  separation instead.
- ResourceLimit{resource, max}: ``proposal.resources[resource] <= max``; an
  absent resource passes.
- TimeWindow{start_hour, end_hour, days}: ``now`` (UTC) is in
  [start_hour:00, end_hour:00) on a listed day. When start > end the window
  wraps past midnight and belongs to the day it opens: 22–06 on "fri" covers
  Friday 22:00 to Saturday 06:00. start == end is refused (write 0–24).
- Schema{shapes}: the resulting graph conforms to the SHACL shapes file
  (relative to the doctrine file), judged exactly as the plain pySHACL call on
  the whole result would (knowledge/shacl/incremental.py).
- Custom{rule, params}: a check of ``BUILTIN_CHECKS`` that the configuration
  enables (``governance.custom_checks``); an unknown or disabled name, or
  parameters the check does not take, are refused at load time.
- A violated mandatory doctrine blocks the proposal; a violated warning or
  advisory doctrine is reported (stage 3 gives a warning).

Guarantees: the doctrine set's ``digest`` is the SHA-256 of a canonical
encoding of every doctrine (sorted by sector and id), the content digest of
every Schema doctrine's shapes, and the enabled check names, so it changes
exactly when what a judgement depends on changes. Load errors name the file
and the key.

Must never: read files other than the directory's ``*.toml`` files and the
shapes files they name; read a clock; judge a doctrine of another sector.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

from rdflib import BNode

from knhkd.governance.files import (
    GovernanceError,
    GovernanceFileError,
    convert,
    entries,
    read_toml,
)
from knhkd.governance.signers import Signer, persons
from knhkd.knowledge.rdf import DeltaView, KnowledgeError, content_hash, load_turtle
from knhkd.knowledge.shacl import ShaclChecker, Shapes
from knhkd.model import (
    SECTORS,
    WEEKDAYS,
    ApprovalChain,
    CustomConstraint,
    CustomParam,
    Doctrine,
    Proposal,
    ResourceLimit,
    SchemaConstraint,
    SegregationOfDuties,
    TimeWindow,
)

_DIGEST_DOMAIN = "knhkd/doctrine-set/v1"
# A message lists at most this many items.
_MAX_LISTED = 5


@dataclass(frozen=True, slots=True)
class DoctrineSubject:
    """What a doctrine judges: the proposal, its signers, its result, the time."""

    proposal: Proposal
    signers: tuple[Signer, ...]
    view: DeltaView
    now_ns: int
    shacl: ShaclChecker


# A custom check returns None when it holds, else why it does not.
CheckFn = Callable[[DoctrineSubject, Mapping[str, CustomParam]], str | None]


@dataclass(frozen=True, slots=True)
class CustomCheck:
    name: str
    description: str
    # Parameter name -> accepted types; every parameter is required.
    params: Mapping[str, tuple[type, ...]]
    run: CheckFn


def _max_delta_triples(subject: DoctrineSubject, params: Mapping[str, CustomParam]) -> str | None:
    limit = params["max"]
    size = len(subject.proposal.delta.remove) + len(subject.proposal.delta.add)
    if isinstance(limit, bool) or not isinstance(limit, int) or size <= limit:
        return None
    return f"the delta has {size} triples, more than {limit}"


def _no_blank_nodes(subject: DoctrineSubject, params: Mapping[str, CustomParam]) -> str | None:
    # Blank nodes are relabelled in every snapshot's canonical form, so a delta
    # adding them cannot be reviewed or reverted by name.
    found = sorted(
        {str(n) for t in subject.view.added for n in t if isinstance(n, BNode)}
    )
    if not found:
        return None
    return f"the delta adds blank node(s): {', '.join('_:' + b for b in found[:_MAX_LISTED])}"


BUILTIN_CHECKS: Mapping[str, CustomCheck] = {
    c.name: c
    for c in (
        CustomCheck(
            "max_delta_triples",
            "the delta removes and adds at most `max` triples in all",
            {"max": (int,)},
            _max_delta_triples,
        ),
        CustomCheck(
            "no_blank_nodes",
            "the delta adds no blank node",
            {},
            _no_blank_nodes,
        ),
    )
}


@dataclass(frozen=True)
class DoctrineSet:
    """Loaded doctrines, ready to judge. Build with ``load_doctrines``."""

    doctrines: tuple[Doctrine, ...] = ()
    # Doctrine id -> the loaded shapes of a Schema doctrine.
    schema_shapes: Mapping[str, Shapes] = field(default_factory=dict)
    checks: Mapping[str, CustomCheck] = field(default_factory=dict)
    digest: str = ""

    def __post_init__(self) -> None:
        if not self.digest:
            object.__setattr__(self, "digest", _digest(self.doctrines, self.schema_shapes,
                                                       self.checks))

    def of_sector(self, sector: str) -> list[Doctrine]:
        return [d for d in self.doctrines if d.sector == sector]

    def in_effect(self, sector: str, now_ns: int) -> list[Doctrine]:
        day = _utc(now_ns).date()
        return [d for d in self.of_sector(sector) if is_in_effect(d, day)]


def _digest(doctrines: Iterable[Doctrine], shapes: Mapping[str, Shapes],
            checks: Mapping[str, CustomCheck]) -> str:
    return content_hash(
        _DIGEST_DOMAIN,
        {
            "doctrines": sorted(doctrines, key=lambda d: (d.sector, d.id)),
            "shapes": {k: s.digest for k, s in shapes.items()},
            "checks": sorted(checks),
        },
    )


def _utc(now_ns: int) -> datetime:
    seconds, _ = divmod(now_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, tz=UTC)


def is_in_effect(d: Doctrine, day: date) -> bool:
    return d.effective_date <= day and (d.expires is None or day < d.expires)


def in_window(w: TimeWindow, now_ns: int) -> bool:
    t = _utc(now_ns)
    second = t.hour * 3600 + t.minute * 60 + t.second
    start, end = w.start_hour * 3600, w.end_hour * 3600
    today = WEEKDAYS[t.weekday()]
    yesterday = WEEKDAYS[(t.weekday() - 1) % 7]
    if start < end:
        return today in w.days and start <= second < end
    # Wraps past midnight: the evening part belongs to today, the early
    # morning part to the day before.
    return (second >= start and today in w.days) or (second < end and yesterday in w.days)


# --------------------------------------------------------------------------- #
# Judging
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, slots=True)
class Finding:
    doctrine: Doctrine
    holds: bool
    message: str


def _listing(items: list[str]) -> str:
    more = len(items) - _MAX_LISTED
    return "; ".join(items[:_MAX_LISTED]) + (f"; and {more} more" if more > 0 else "")


def _approval_chain(c: ApprovalChain, s: DoctrineSubject) -> str | None:
    problems = []
    people = persons(s.signers)
    if len(people) < c.required_signers:
        problems.append(
            f"{len(people)} distinct signer(s), {c.required_signers} required"
        )
    units = {x.unit for x in s.signers}
    missing = [u for u in c.sectors if u not in units]
    if missing:
        problems.append(f"no signer from {', '.join(missing)}")
    return "; ".join(problems) or None


def _segregation(c: SegregationOfDuties, s: DoctrineSubject) -> str | None:
    roles: dict[str, set[str]] = {}
    for x in s.signers:
        if x.role is not None:
            roles.setdefault(x.name, set()).add(x.role)
    problems = []
    for incompatible in c.incompatible_roles:
        group = set(incompatible)
        for name in sorted(roles):
            held = sorted(roles[name] & group)
            if len(held) >= 2:
                problems.append(f"{name} holds incompatible roles {', '.join(held)}")
    return _listing(problems) or None


def _resource_limit(c: ResourceLimit, s: DoctrineSubject) -> str | None:
    value = s.proposal.resources.get(c.resource)
    if value is None or value <= c.max:
        return None
    return f"{c.resource} = {value:g} exceeds {c.max:g}"


def _time_window(c: TimeWindow, s: DoctrineSubject) -> str | None:
    if in_window(c, s.now_ns):
        return None
    t = _utc(s.now_ns)
    return (
        f"{t:%a %H:%M} UTC is outside {c.start_hour:02d}:00–{c.end_hour:02d}:00 "
        f"on {','.join(c.days)}"
    )


def _schema(d: Doctrine, s: DoctrineSubject, doctrines: DoctrineSet) -> str | None:
    shapes = doctrines.schema_shapes.get(d.id)
    if shapes is None:
        return "its shapes were not loaded"
    checked = s.shacl.check(shapes, s.view).result
    if checked.conforms:
        return None
    errors = [v.describe() for v in checked.violations if v.severity not in ("Warning", "Info")]
    return f"the result violates its shapes ({len(errors)}): {_listing(errors)}"


def _custom(c: CustomConstraint, s: DoctrineSubject, doctrines: DoctrineSet) -> str | None:
    check = doctrines.checks.get(c.rule)
    if check is None:
        return f"check {c.rule!r} is not enabled"
    return check.run(s, c.params)


def judge(d: Doctrine, s: DoctrineSubject, doctrines: DoctrineSet) -> Finding:
    """Whether ``d`` holds for the subject (regardless of its enforcement)."""
    c = d.constraint
    why: str | None
    if isinstance(c, ApprovalChain):
        why = _approval_chain(c, s)
    elif isinstance(c, SegregationOfDuties):
        why = _segregation(c, s)
    elif isinstance(c, ResourceLimit):
        why = _resource_limit(c, s)
    elif isinstance(c, TimeWindow):
        why = _time_window(c, s)
    elif isinstance(c, SchemaConstraint):
        why = _schema(d, s, doctrines)
    else:
        why = _custom(c, s, doctrines)
    return Finding(d, why is None, why or "holds")


# --------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------- #


def enabled_checks(names: Iterable[str],
                   registry: Mapping[str, CustomCheck] = BUILTIN_CHECKS) -> dict[str, CustomCheck]:
    """The checks the configuration enables; an unknown name is an error."""
    out = {}
    for name in names:
        if name not in registry:
            raise GovernanceError(
                f"governance.custom_checks: unknown check {name!r} "
                f"(known: {', '.join(sorted(registry))})"
            )
        out[name] = registry[name]
    return out


def _check_doctrine(d: Doctrine, path: Path, key: str,
                    checks: Mapping[str, CustomCheck]) -> Shapes | None:
    if d.expires is not None and d.expires <= d.effective_date:
        raise GovernanceFileError(path, f"{key}.expires", "must be after effective_date")
    c = d.constraint
    ck = f"{key}.constraint"
    if isinstance(c, TimeWindow):
        if c.start_hour == c.end_hour:
            raise GovernanceFileError(
                path, f"{ck}.end_hour", "equals start_hour (for a whole day write 0 and 24)"
            )
        if not c.days or len(set(c.days)) != len(c.days):
            raise GovernanceFileError(path, f"{ck}.days", "must list distinct days")
    elif isinstance(c, ResourceLimit):
        if not math.isfinite(c.max):
            raise GovernanceFileError(path, f"{ck}.max", "must be a finite number")
    elif isinstance(c, SegregationOfDuties):
        if not c.incompatible_roles:
            raise GovernanceFileError(path, f"{ck}.incompatible_roles", "must list role sets")
    elif isinstance(c, SchemaConstraint):
        target = (path.parent / c.shapes).resolve()
        try:
            return Shapes(load_turtle(target))
        except KnowledgeError as exc:
            raise GovernanceFileError(path, f"{ck}.shapes", str(exc)) from None
    elif isinstance(c, CustomConstraint):
        check = checks.get(c.rule)
        if check is None:
            raise GovernanceFileError(
                path, f"{ck}.rule",
                f"unknown or disabled check {c.rule!r} (enabled: {', '.join(sorted(checks))})",
            )
        for name in c.params:
            if name not in check.params:
                raise GovernanceFileError(path, f"{ck}.params.{name}",
                                          f"check {c.rule!r} takes no such parameter")
        for name, types in check.params.items():
            value = c.params.get(name)
            if value is None:
                raise GovernanceFileError(path, f"{ck}.params.{name}", "missing")
            if isinstance(value, bool) or not isinstance(value, types):
                raise GovernanceFileError(
                    path, f"{ck}.params.{name}",
                    f"expected {' or '.join(t.__name__ for t in types)}, "
                    f"got {type(value).__name__}",
                )
    return None


def load_doctrines(directory: Path, enabled: Iterable[str] = tuple(BUILTIN_CHECKS),
                   registry: Mapping[str, CustomCheck] = BUILTIN_CHECKS) -> DoctrineSet:
    """Every ``<sector>.toml`` in ``directory``; errors name the file and key."""
    checks = enabled_checks(enabled, registry)
    if not directory.is_dir():
        raise GovernanceFileError(directory, "", "not a directory")
    doctrines: list[Doctrine] = []
    shapes: dict[str, Shapes] = {}
    seen: dict[str, Path] = {}
    for path in sorted(directory.glob("*.toml"), key=lambda p: p.name):
        sector = path.stem
        if sector not in SECTORS:
            raise GovernanceFileError(
                path, "", f"a doctrine file is named after its sector ({', '.join(SECTORS)})"
            )
        for i, raw in enumerate(entries(read_toml(path), "doctrine", path)):
            key = f"doctrine[{i}]"
            if not isinstance(raw, dict):
                raise GovernanceFileError(path, key, "expected a table")
            if "sector" in raw and raw["sector"] != sector:
                raise GovernanceFileError(path, f"{key}.sector",
                                          f"the file is {sector}'s; leave sector out")
            d = convert({**raw, "sector": sector}, Doctrine, path, key)
            if d.id in seen:
                raise GovernanceFileError(path, f"{key}.id",
                                          f"{d.id} is already defined in {seen[d.id]}")
            seen[d.id] = path
            loaded = _check_doctrine(d, path, key, checks)
            if loaded is not None:
                shapes[d.id] = loaded
            doctrines.append(d)
    doctrines.sort(key=lambda d: (d.sector, d.id))
    return DoctrineSet(tuple(doctrines), shapes, checks)
