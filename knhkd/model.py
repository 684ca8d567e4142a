"""Every wire and storage record of knhkd, defined once.

Guarantees:
- Each record is a ``msgspec.Struct``; the same type is used for the LMDB value,
  the HTTP body and the admin-socket payload, so a field cannot mean two things.
- Input records (``ObservationIn``, ``ProposalIn``) reject unknown fields and
  carry their own bounds, so decoding *is* validation.
- Times stored on disk are integer nanoseconds since the Unix epoch (UTC).

Must never: import anything from the project but ``knhkd.errors`` (whose
``FieldError`` is also the wire record of a problem's ``errors``), perform
I/O, read a clock.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal, get_args

import msgspec
from msgspec import Meta, Struct

# Re-exported: a problem's ``errors`` are wire records too.
from knhkd.errors import FieldError as FieldError  # noqa: PLC0414

# --------------------------------------------------------------------------- #
# Shared vocabularies
# --------------------------------------------------------------------------- #

Sector = Literal["finance", "healthcare", "manufacturing", "logistics", "generic"]
SECTORS: tuple[Sector, ...] = ("finance", "healthcare", "manufacturing", "logistics", "generic")

EventType = Annotated[
    str, Meta(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-/]*$")
]
MetadataKey = Annotated[str, Meta(min_length=1, max_length=128)]
MetadataValue = Annotated[str, Meta(max_length=4096)]

# Who may do what (seed §1.1.1): the permissions a route needs and the roles
# that hold them; knhkd/auth/roles.py has the table role → permissions and
# api/authn.py the table route → permission. INGEST (producers), GOVERN
# (guard-relaxation steps, proposal signatures) and READ_METRICS are knhkd's
# own; ALL is the administrator's and implies every other.
Permission = Literal[
    "READ_OBSERVATIONS",
    "READ_SNAPSHOTS",
    "READ_RECEIPTS",
    "READ_METRICS",
    "DETECT_PATTERNS",
    "GENERATE_PROPOSALS",
    "VALIDATE_PROPOSALS",
    "PROMOTE_SNAPSHOTS",
    "EXECUTE_MAPE_K",
    "INGEST",
    "GOVERN",
    "ALL",
]
PERMISSIONS: tuple[Permission, ...] = get_args(Permission)
Role = Literal[
    "observer", "analyst", "proposer", "validator", "operator", "administrator", "producer"
]
ROLES: tuple[Role, ...] = get_args(Role)
ANONYMOUS = "anonymous"
# The issuer of the admin socket's principals (``knhkctl#<name>``): no token
# issuer may be configured under this name (config.py refuses it).
LOCAL_ISSUER = "knhkctl"
# What a principal may sign a proposal as, for doctrines: ``role@unit``,
# ``@unit`` or ``role`` (governance/signers.py); from a token's
# ``signer_claim``, never from a request body.
CAPACITY_PATTERN = r"^(?:[A-Za-z0-9_.\-]+(?:@[A-Za-z0-9_.\-]+)?|@[A-Za-z0-9_.\-]+)$"


class Principal(Struct, frozen=True):
    """Who is asking: the subject of a verified token of a configured issuer,
    or, with authentication off, the one principal ``anonymous`` (issuer "").
    Two principals are the same iff issuer and subject are."""

    issuer: str
    subject: str
    roles: tuple[Role, ...] = ()
    permissions: frozenset[Permission] = frozenset()
    # What it signs proposals as (CAPACITY_PATTERN entries), from its token.
    signing_as: tuple[str, ...] = ()
    # The token's ``iat`` (seconds since the epoch); None without a token.
    issued_at: float | None = None

    @property
    def name(self) -> str:
        """``anonymous``, or ``issuer#subject`` (an OIDC issuer has no
        fragment, so the first ``#`` splits it, whatever the subject holds)."""
        return self.subject if not self.issuer else f"{self.issuer}#{self.subject}"

    def may(self, permission: Permission) -> bool:
        return permission in self.permissions or "ALL" in self.permissions


# --------------------------------------------------------------------------- #
# Monitor: observations
# --------------------------------------------------------------------------- #


class RdfPayload(Struct, forbid_unknown_fields=True):
    """RDF an observation carries: validated with its sector's shapes at ingest
    (knhkd/monitor/shapes.py: its triples join the observation's RDF view; the
    IRI ``urn:knhk:obs:this`` in it names the observation itself)."""

    format: Literal["turtle", "json-ld"]
    data: Annotated[str, Meta(min_length=1, max_length=65536)]


# Observations are untracked by the cyclic GC (gc=False): they hold only
# decoded JSON and strings, never a reference back to themselves, so they can
# take part in no cycle; untracked, a 100k-record drain spends ~20 % less time
# (bench/ring.py drain: 153k -> ~198k obs/s).
class ObservationIn(Struct, forbid_unknown_fields=True, gc=False):
    """An observation as a producer submits it (HTTP body or one NDJSON line)."""

    event_type: EventType
    sector: Sector
    value: Any = None
    metadata: dict[MetadataKey, MetadataValue] = {}
    # The producer's own event time, kept as given; never used for ordering.
    event_time: datetime | None = None
    rdf: RdfPayload | None = None


class Observation(Struct, gc=False):
    """An accepted, durable observation (LMDB ``observations`` value)."""

    id: str
    seq: int
    event_type: str
    sector: Sector
    value: Any
    metadata: dict[str, str]
    ingested_at_ns: int
    event_time: datetime | None = None
    # Last, with a default: records stored before it existed still decode.
    rdf: RdfPayload | None = None


# The one metadata key an erased observation keeps (loop/erasure.py): the id
# of the receipt that erased it.
ERASED_KEY = "knhk.erased"


def is_erased(obs: Observation) -> bool:
    """``obs`` is what erasure left of an observation (``erased``)."""
    return obs.value is None and obs.rdf is None and list(obs.metadata) == [ERASED_KEY]


def erased(obs: Observation, receipt_id: str) -> Observation:
    """What is kept of an erased observation: its id, place in sequence,
    sector, event type and ingest time; never its value, metadata, event
    time or RDF (any of which may identify its subject)."""
    return Observation(
        id=obs.id,
        seq=obs.seq,
        event_type=obs.event_type,
        sector=obs.sector,
        value=None,
        metadata={ERASED_KEY: receipt_id},
        ingested_at_ns=obs.ingested_at_ns,
    )


class ErasureIn(Struct, forbid_unknown_fields=True):
    """POST /api/v1/erasures: the data subject whose observations are erased."""

    subject: Annotated[str, Meta(min_length=1, max_length=4096)]


class Erasure(Struct):
    """What an erasure did (loop/erasure.py); never the subject itself."""

    erased: int
    observation_ids: list[str]
    receipt_id: str
    # Free pages of the LMDB file overwritten afterwards, per round (store/scrub.py).
    scrubbed_pages: list[int] = []
    # The backup taken at once under ``[backup] dir`` to record the erasure
    # (None: no such directory, or that backup failed: ``backup_error`` says why).
    backup_id: str | None = None
    backup_error: str | None = None


class KeyCount(Struct, frozen=True):
    """The observations of one (sector, event type) in a committed ring batch."""

    sector: Sector
    event_type: str
    count: int
    # Position of the key's last observation in the batch.
    last: int
    # (position, id) of the key's first observations, at most the analyzer's
    # evidence sample.
    evidence: list[tuple[int, str]]


class ObservationCounts(Struct, frozen=True):
    """A committed ring batch as the analyzer counts it (in memory only):
    observations ``first_seq..last_seq``, all with the ingest time
    ``ingested_at_ns`` and no metadata, per key in order of its first one."""

    ingested_at_ns: int
    first_seq: int
    last_seq: int
    keys: list[KeyCount]


class RingLaneStatus(Struct):
    """One lane of the ring, as ``knhkctl ring`` reports it."""

    lane: int
    # Pid of the producer that last claimed the lane (0: never claimed), and
    # whether a process with that pid exists now (a claim ends with its process).
    owner_pid: int
    owner_alive: bool
    head: int
    consumed: int
    durable: int
    # Appended but not yet durable.
    backlog: int
    full_count: int
    corrupt_count: int
    claims: int


class RingStatus(Struct):
    """The ring file read directly (``knhkctl ring``): works with the daemon down."""

    path: str
    ring_id: str
    version: int
    lanes: int
    capacity: int
    ticks_source: str
    tsc_hz: int
    snapshot_version: int | None
    snapshot_id: str | None
    snapshot_promoted_at_ns: int | None
    lane_status: list[RingLaneStatus]
    backlog: int
    full_count: int
    corrupt_count: int


class RingCursor(Struct):
    """LMDB ``meta`` value ``ring.cursor``: where the ring drain resumes.

    Written in the same transaction as the ring records it covers, so on
    restart the drain neither loses nor repeats one. ``ring_id`` names the ring
    file (random, fixed at its creation): a cursor of another ring is not used.
    """

    ring_id: int
    # Per lane: the first lane sequence not yet ingested.
    next_seq: list[int]


class ReceiptHead(Struct, array_like=True):
    """LMDB ``meta`` value ``receipts.head``: what the next receipt links to.

    Stored as a MessagePack array ``[next_seq, hash, timestamp_ns]``.
    """

    next_seq: int
    hash: str
    timestamp_ns: int


class IngestAccepted(Struct):
    """201 body for one observation."""

    id: str


class IngestBatchAccepted(Struct):
    """201 body for a batch: ids in the order the items were sent."""

    ids: list[str]
    count: int


# --------------------------------------------------------------------------- #
# Analyze: patterns
# --------------------------------------------------------------------------- #

PatternKind = Literal["high_frequency", "error_spike", "no_observations", "schema_mismatch"]
Severity = Literal["info", "warning", "critical"]


class Observe(Struct, tag="observe"):
    pass


class ProposeChange(Struct, tag="propose_change"):
    description: str


class EnforceInvariant(Struct, tag="enforce_invariant"):
    invariant: str


class Alert(Struct, tag="alert"):
    severity: Severity


Action = Observe | ProposeChange | EnforceInvariant | Alert


class DetectedPattern(Struct):
    """A pattern found in a bounded window. ``id`` is content-addressed."""

    id: str
    name: str
    kind: PatternKind
    sector: Sector | None
    confidence: float
    detected_at_ns: int
    window_seconds: float
    evidence_count: int
    evidence_ids: list[str]
    recommended_action: Action
    # What the pattern is about: the event type of a burst, the off-schema
    # metadata keys of a drift. Empty where it does not apply.
    event_type: str | None = None
    metadata_keys: list[str] = []
    # The bound the detector compared the evidence against (events per window,
    # error rate, seconds of silence), so a plan can be replayed from the
    # pattern alone. None where no single bound applies (schema drift).
    threshold: float | None = None


# --------------------------------------------------------------------------- #
# Plan: proposals (ΔΣ)
# --------------------------------------------------------------------------- #

# One RDF term in N-Triples syntax: <iri>, _:label, or a literal with its
# language tag or datatype ("42"^^<http://www.w3.org/2001/XMLSchema#integer>).
NTerm = Annotated[str, Meta(min_length=1, max_length=8192)]


class Triple(Struct, array_like=True, frozen=True, order=True):
    """A triple as three N-Triples terms; on the wire a 3-element array."""

    s: NTerm
    p: NTerm
    o: NTerm


# Triples in each half of a ΔΣ, at most (a 1 MiB body holds fewer anyway:
# the bound stands if ``http.max_body_bytes`` is raised).
MAX_DELTA_TRIPLES = 65536


class Delta(Struct, frozen=True):
    """ΔΣ: triples removed from the parent snapshot, then triples added."""

    remove: Annotated[list[Triple], Meta(max_length=MAX_DELTA_TRIPLES)] = []
    add: Annotated[list[Triple], Meta(max_length=MAX_DELTA_TRIPLES)] = []


# A signer as ``name[:role][@unit]``: who signed, in which role, for which
# organisational unit ("alice:cfo@finance", "bob:auditor@compliance", "carol").
# Units are free names (doctrines name units such as "compliance" that are not
# sectors). One person signing in two roles is two entries with the same name.
# A submitted proposal's ``signers`` must be empty (403 ``principal-mismatch``):
# people sign a stored proposal as themselves (``ProposalSignature``), and
# doctrines count those signatures only.
SIGNER_PATTERN = r"^[A-Za-z0-9_.\-]+(?::[A-Za-z0-9_.\-]+)?(?:@[A-Za-z0-9_.\-]+)?$"
SignerText = Annotated[str, Meta(min_length=1, max_length=256, pattern=SIGNER_PATTERN)]


ResourceName = Annotated[str, Meta(min_length=1, max_length=128)]
# An id a client names (snapshot, pattern): SHA-256 hex is 64 characters.
RecordId = Annotated[str, Meta(max_length=128)]


class ProposalIn(Struct, forbid_unknown_fields=True):
    """A ΔΣ as an operator (or the planner) submits it."""

    sector: Sector
    description: Annotated[str, Meta(max_length=4096)]
    delta: Delta
    reasoning: Annotated[str, Meta(max_length=16384)] = ""
    confidence: Annotated[float, Meta(ge=0.0, le=1.0)] = 1.0
    # int64 at most: it is hashed as MessagePack (content_hash) and stored.
    estimated_ticks: Annotated[int, Meta(ge=0, le=2**63 - 1)] = 0
    signers: Annotated[list[SignerText], Meta(max_length=64)] = []
    resources: Annotated[dict[ResourceName, float], Meta(max_length=64)] = {}
    pattern_id: RecordId | None = None
    # The snapshot the delta was written against; the current one when absent.
    parent_snapshot_id: RecordId | None = None


class ProposalSignature(Struct, frozen=True):
    """One principal's signature of a stored proposal: who (``issuer#subject``),
    as what (CAPACITY_PATTERN entries of its token's ``signer_claim``; none: a
    person of no role or unit), when."""

    principal: str
    capacities: list[str]
    at_ns: int


class Proposal(Struct):
    """A stored proposal. ``id`` is the SHA-256 of its canonical content."""

    id: str
    parent_snapshot_id: str
    sector: Sector
    description: str
    reasoning: str
    confidence: float
    estimated_ticks: int
    signers: list[str]
    resources: dict[str, float]
    delta: Delta
    pattern_id: str | None
    can_rollback: bool
    created_at_ns: int
    # Who submitted it (``issuer#subject``, ``anonymous``, ``knhkctl#…``);
    # "" for the planner's own proposals. Not part of the id.
    submitted_by: str = ""
    # Signatures by authenticated principals (POST …/signatures), in order;
    # what stage 3's doctrines count. Not part of the id.
    signatures: list[ProposalSignature] = []


# --------------------------------------------------------------------------- #
# Validate: the pipeline's report
# --------------------------------------------------------------------------- #

StageVerdict = Literal["passed", "failed", "warning"]
# A part of a stage's judgement: one invariant (Q1..Q5), one doctrine, one
# guard. "not_measured": a runtime figure the part needs was not supplied; it
# is never reported as passed.
SubVerdictKind = Literal["passed", "failed", "warning", "not_measured"]


class SubVerdict(Struct):
    id: str
    verdict: SubVerdictKind
    message: str


class StageResult(Struct):
    stage: int
    name: str
    passed: bool
    verdict: StageVerdict
    message: str
    duration_ms: float
    sub_verdicts: list[SubVerdict] = []


class TickBaseline(Struct, frozen=True):
    """Q5's tick baseline as taken when a snapshot became current (promoted,
    or rolled back to), stored with it so that a restart, an upgrade above
    all, is judged against it rather than against its own first figures:
    the hot path's p99 (TSC ticks per record of timed ring batch appends),
    this machine's floor p99 then (a baseline is only comparable on a
    machine with about that floor), the snapshot and when."""

    # Positive, or the record is damaged (NaN fails ``gt`` too).
    p99_ticks: Annotated[float, Meta(gt=0)]
    floor_p99_ticks: Annotated[float, Meta(gt=0)] | None
    snapshot_id: str
    taken_at_ns: int


class RuntimeFigures(Struct, frozen=True):
    """What the daemon measured about itself, for invariants Q2, Q4 and Q5.

    Every figure is optional: None means "not measured", and the stage that
    needs it says so instead of passing it (see validate/invariants.py)."""

    rss_mb: float | None = None
    cpu_percent: float | None = None
    # Tail latency of the HTTP API, ms.
    p99_ms: float | None = None
    # p99 of a hot-path operation, in TSC ticks, and the baseline it is
    # compared with for the tick-regression bound.
    hot_path_ticks_p99: float | None = None
    tick_baseline_p99: float | None = None
    # p99 of a warm-path operation (one ingest batch to commit), ms.
    warm_path_ms: float | None = None
    # Fraction (0..1) of recent observations that violated their sector's schema.
    schema_violation_rate: float | None = None
    # This machine's floor for the hot path: p99 ticks of a bare 64-byte
    # store, measured at start-up (Q4 judges against it when it exceeds the
    # bound: validate/stages/s2_invariants.py).
    hot_path_floor_ticks_p99: float | None = None
    # p99 of HTTP request latency per route template, ms (p99_ms is over all).
    request_p99_ms: dict[str, float] = {}
    # p99 of one ingest commit (a group of requests, on the writer), ms.
    commit_p99_ms: float | None = None
    # Observations accepted (committed) and refused by their sector's SHACL
    # shapes in the window (HTTP and ring), and samples behind each p99.
    accepted: int = 0
    schema_rejected: int = 0
    request_samples: int = 0
    ingest_samples: int = 0
    hot_path_samples: int = 0
    # Where tick_baseline_p99 comes from: "promotion" (the hot-path p99 when
    # the current snapshot was made current, kept across restarts: see
    # tick_baseline) or "start" (the first full window since start-up, with
    # no usable stored baseline); "" when there is none.
    tick_baseline_source: str = ""
    # The promotion's baseline in full, when the source is "promotion".
    tick_baseline: TickBaseline | None = None


class FigureSamples(Struct, frozen=True):
    """Raw samples for loop/figures.py to merge into its windows (a batch,
    e.g. forwarded from another process): seconds per request by route
    template, per ingest request and per commit; observations accepted and
    SHACL-refused; ticks per record of timed ring batch appends."""

    request_seconds: dict[str, list[float]] = {}
    ingest_seconds: list[float] = []
    commit_seconds: list[float] = []
    accepted: int = 0
    schema_rejected: int = 0
    append_ticks: list[float] = []


class ValidationReport(Struct):
    proposal_id: str
    passed: bool
    stages: list[StageResult]
    timestamp_ns: int
    # Stages that are not yet implemented are named here, never reported as passed.
    stages_not_run: list[str] = []


# --------------------------------------------------------------------------- #
# Knowledge: snapshots
# --------------------------------------------------------------------------- #


class Snapshot(Struct):
    """Snapshot metadata. ``snapshot_id`` is SHA-256 of the canonical N-Triples."""

    snapshot_id: str
    parent_id: str | None
    version: int
    promoted_at_ns: int
    triple_count: int
    proposal_id: str | None = None


class SnapshotRecord(Struct):
    """LMDB ``snapshots`` value: the metadata and the canonical N-Triples text."""

    meta: Snapshot
    ntriples: str
    # Soft-deleted by retention (loop/retention.py) at this time: kept, not
    # listed. Last, with a default: records stored before it still decode.
    retired_at_ns: int | None = None


# --------------------------------------------------------------------------- #
# Governance: doctrines, guards, guard relaxations
# --------------------------------------------------------------------------- #

GovernanceId = Annotated[
    str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
]
Enforcement = Literal["mandatory", "warning", "advisory"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CustomParam = str | int | float | bool


class ApprovalChain(Struct, tag="approval_chain", tag_field="kind", frozen=True,
                    forbid_unknown_fields=True):
    """At least ``required_signers`` distinct signers, one from each listed unit."""

    required_signers: Annotated[int, Meta(ge=1)]
    sectors: list[Annotated[str, Meta(min_length=1)]] = []


class SegregationOfDuties(Struct, tag="segregation_of_duties", tag_field="kind", frozen=True,
                          forbid_unknown_fields=True):
    """No signer holds two different roles of one set."""

    incompatible_roles: list[Annotated[list[str], Meta(min_length=2)]]


class ResourceLimit(Struct, tag="resource_limit", tag_field="kind", frozen=True,
                    forbid_unknown_fields=True):
    """``proposal.resources[resource] <= max``; an absent resource passes."""

    resource: Annotated[str, Meta(min_length=1)]
    max: float


class TimeWindow(Struct, tag="time_window", tag_field="kind", frozen=True,
                 forbid_unknown_fields=True):
    """Now (UTC) in [start_hour, end_hour) on one of ``days``; a window with
    start > end wraps past midnight and belongs to the day it opens."""

    start_hour: Annotated[int, Meta(ge=0, le=23)]
    end_hour: Annotated[int, Meta(ge=0, le=24)]
    days: list[Weekday] = msgspec.field(default_factory=lambda: list(WEEKDAYS))


class SchemaConstraint(Struct, tag="schema", tag_field="kind", frozen=True,
                       forbid_unknown_fields=True):
    """The resulting graph conforms to a SHACL shapes file (a path relative
    to the doctrine file)."""

    shapes: Annotated[str, Meta(min_length=1)]


class CustomConstraint(Struct, tag="custom", tag_field="kind", frozen=True,
                       forbid_unknown_fields=True):
    """A named check of the registry the configuration enables."""

    rule: Annotated[str, Meta(min_length=1)]
    params: dict[str, CustomParam] = {}


DoctrineConstraint = (
    ApprovalChain | SegregationOfDuties | ResourceLimit | TimeWindow | SchemaConstraint
    | CustomConstraint
)


class Doctrine(Struct, frozen=True, forbid_unknown_fields=True):
    """A sector rule. In effect on UTC dates ``effective_date <= d < expires``."""

    id: GovernanceId
    name: Annotated[str, Meta(min_length=1)]
    sector: Sector
    constraint: DoctrineConstraint
    enforcement: Enforcement
    effective_date: date
    description: str = ""
    source: str = ""
    expires: date | None = None


Criticality = Literal["critical", "high", "medium", "low"]


class Guard(Struct, frozen=True, forbid_unknown_fields=True):
    """Protected vocabulary (absolute IRIs, no angle brackets) and a run-length bound."""

    id: GovernanceId
    name: Annotated[str, Meta(min_length=1)]
    criticality: Criticality
    description: str = ""
    immutable: bool = False
    protected_classes: list[str] = []
    protected_properties: list[str] = []
    # Most ``estimated_ticks`` a proposal may declare; None: no bound.
    max_run_length: Annotated[int, Meta(ge=0)] | None = None


RelaxationState = Literal["requested", "approved", "active", "ended"]
RelaxationEnd = Literal["expired", "window_closed", "revoked"]
RelaxationStep = Literal[
    "requested", "approval_recorded", "approved", "activated", "revoked", "expired",
    "window_closed",
]


# The bodies of the relaxation steps (POST /api/v1/guards/...). Over HTTP the
# one who acts is the authenticated caller: a body may omit the name, and one
# naming anyone else is 403 ``principal-mismatch``. On the admin socket the
# name is given (``knhkctl#<name>``); an empty one is refused by the rules
# (governance/relaxation.py).
StepActor = Annotated[str, Meta(max_length=256)]
StepReason = Annotated[str, Meta(max_length=4096)]


class RelaxationRequestIn(Struct, forbid_unknown_fields=True):
    requester: StepActor = ""
    reason: StepReason = ""


class ApprovalIn(Struct, forbid_unknown_fields=True):
    approver: StepActor = ""


class ActivationIn(Struct, forbid_unknown_fields=True):
    actor: StepActor = ""


class RevocationIn(Struct, forbid_unknown_fields=True):
    actor: StepActor = ""
    reason: StepReason = ""


class Approval(Struct, frozen=True):
    approver: str
    at_ns: int


class Relaxation(Struct, frozen=True):
    """One guard relaxation (LMDB value, keyed by ``id``). The rules in force
    when it was requested are frozen into it, so a configuration reload does
    not change an open request. See governance/relaxation.py for the rules."""

    id: str
    guard_id: str
    criticality: Criticality
    requester: str
    reason: str
    requested_at_ns: int
    quorum: int
    min_review_ns: int
    expires_at_ns: int
    window_ns: int
    state: RelaxationState = "requested"
    approvals: tuple[Approval, ...] = ()
    approved_at_ns: int | None = None
    activated_at_ns: int | None = None
    active_until_ns: int | None = None
    ended_at_ns: int | None = None
    end_reason: RelaxationEnd | None = None
    ended_by: str = ""
    end_detail: str = ""
    # Time of the latest step; no later step may be earlier (Q1).
    updated_at_ns: int = 0


class RelaxationEvent(Struct, frozen=True):
    """One step of a relaxation: what the runtime receipts, with the record
    after the step (persist both in one transaction)."""

    step: RelaxationStep
    relaxation_id: str
    guard_id: str
    # Who took the step; "" for a step the clock takes (expiry, window close).
    actor: str
    at_ns: int
    detail: str
    record: Relaxation


# --------------------------------------------------------------------------- #
# Receipts
# --------------------------------------------------------------------------- #

ReceiptKind = Literal[
    "observation_batch_committed",
    "pattern_detected",
    "proposal_generated",
    "validation_executed",
    "snapshot_promoted",
    "snapshot_rolled_back",
    "cycle_completed",
    "key_rotated",
    "guard_relaxation_step",
    "governance_changed",
    "proposal_signed",
    # An entry of the audit trail (knhkd/loop/auditor.py): who asked for what,
    # through which door, and what the daemon decided. ``inputs`` holds the
    # fields of ``AuditRecord``; ``outcome`` is approved (allowed) or rejected.
    "audit",
    # ``knhkd migrate`` moved the store from one schema version to the next
    # (inputs: from_version, to_version, the backup's name).
    "schema_migrated",
    # Observations of one data subject erased (loop/erasure.py): subject_ids
    # are their ids; inputs say how many, which fields matched, by whom.
    # Never the subject's identifier.
    "observations_erased",
    # A backup was taken (knhkd/loop/backup.py): ``inputs`` names the backup,
    # its kind and parent, the checkpoint it covers and its manifest's SHA-256.
    "backup_taken",
    # The first receipt of a restored data directory (knhkd/datadir/backup.py):
    # from which backup chain, to which receipt of the original log.
    "restored",
    # Retention archived observations and deleted them from the store
    # (knhkd/loop/retention.py): the archive's name and SHA-256, the range of
    # sequence numbers, how many, the checkpoint it is proven against.
    "observations_archived",
    # Retention soft-deleted non-current snapshots (subject_ids: their ids).
    "snapshots_retired",
]
OutcomeStatus = Literal["approved", "rejected", "pending", "error"]


class Outcome(Struct):
    status: OutcomeStatus
    # The reason of a rejection or error, the next step of a pending decision.
    detail: str = ""


class ReceiptBody(Struct):
    """Everything a receipt's signature covers (see receipts/canonical.py)."""

    format: int
    seq: int
    kind: ReceiptKind
    subject_ids: list[str]
    outcome: Outcome
    sector: str
    timestamp_ns: int
    prev_hash: str
    key_id: str
    # Hashes of the inputs the decision depended on (snapshot id, delta hash, ...).
    inputs: dict[str, str] = {}


class SignedReceipt(Struct):
    """LMDB ``receipts`` value and export record."""

    body: ReceiptBody
    signature: bytes


class ReceiptView(Struct):
    """A receipt as the API shows it, with its id and hash spelled out."""

    id: str
    hash: str
    body: ReceiptBody
    signature: str


class ProofFile(Struct, forbid_unknown_fields=True):
    """``knhkctl receipts prove``: one receipt, its inclusion path, a checkpoint.

    In the spirit of C2SP tlog-proof; bytes are base64 in JSON."""

    format: Literal["knhkd-proof-v1"]
    index: int
    tree_size: int
    record: bytes  # the stored receipt (canonical MessagePack of SignedReceipt)
    inclusion: list[bytes]  # RFC 9162 audit path, bottom-up
    checkpoint: str  # the signed note of a tree of ``tree_size`` leaves


class ExportFile(Struct, forbid_unknown_fields=True):
    """``knhkctl receipts export``: a run of receipts and what proves it is in
    a signed tree (the hashes of the aligned subtrees left and right of it)."""

    format: Literal["knhkd-export-v1"]
    start: int
    tree_size: int
    records: list[bytes]
    range_proof: list[bytes]
    checkpoint: str


class ArchiveHeader(Struct, tag="header", forbid_unknown_fields=True):
    """First line of a retention archive (``knhkd-archive-v1``, gzip NDJSON):
    the observations ``[first_seq, below_seq)`` and the signed checkpoint
    every receipt line is proven against."""

    format: Literal["knhkd-archive-v1"]
    origin: str
    first_seq: int
    below_seq: int
    created_ns: int
    tree_size: int
    checkpoint: str


class ArchivedReceipt(Struct, tag="receipt", forbid_unknown_fields=True):
    """A batch receipt that committed to archived observations, with its
    RFC 9162 inclusion path in the header's tree."""

    seq: int
    record: bytes
    inclusion: list[bytes]


class ArchivedObservation(Struct, tag="observation", forbid_unknown_fields=True):
    """An observation as stored (MessagePack) with its leaf: ``digest`` and
    ``salt`` (schema v2; no salt once erased), neither before v2."""

    seq: int
    record: bytes
    digest: bytes | None = None
    salt: bytes | None = None


ArchiveLine = ArchiveHeader | ArchivedReceipt | ArchivedObservation


class RetentionRun(Struct):
    """What one retention run did (loop/retention.py)."""

    archived: int
    first_seq: int
    below_seq: int
    archive: str | None
    receipt_id: str | None
    snapshots_retired: list[str] = []
    # The data file's size after the run, in bytes.
    data_file_bytes: int = 0


class ConsistencyFile(Struct, forbid_unknown_fields=True):
    """Two signed checkpoints and the RFC 9162 consistency proof between them."""

    format: Literal["knhkd-consistency-v1"]
    old_checkpoint: str
    new_checkpoint: str
    proof: list[bytes]


class FileVerdict(Struct):
    file: str
    kind: str
    verified: bool
    reason: str
    origin: str = ""
    tree_size: int | None = None
    receipts: int = 0


class FsckReport(Struct):
    """``knhkctl fsck``: what was re-derived, and every inconsistency found
    (``errors[0]`` is the first, each prefixed with its location)."""

    ok: bool
    checked: dict[str, int]
    errors: list[str]


class ChainVerification(Struct):
    """The seed's verify-chain report (§4.4.1), with the range it covered."""

    total_count: int
    verified_count: int
    signature_failures: list[str]
    chain_breaks: list[str]
    retrocausation_violations: list[str]
    verified: bool
    head_hash: str
    first_seq: int | None = None
    last_seq: int | None = None


class PublicKeyEntry(Struct):
    key_id: str
    algorithm: Literal["ed25519"]
    public_key: str  # base64 of the 32 raw bytes
    not_before_ns: int
    not_after_ns: int | None = None


class PublicKeyring(Struct):
    """The documented public-key export: what an offline verifier needs."""

    format: Literal["knhkd-keyring-v1"]
    keys: list[PublicKeyEntry]


# --------------------------------------------------------------------------- #
# MAPE-K cycle
# --------------------------------------------------------------------------- #

CycleOutcome = Literal["completed", "failed"]


class CycleReport(Struct):
    id: str
    started_at: datetime
    completed_at: datetime
    duration_ms: float
    patterns_detected: int
    proposals_generated: int
    validations_passed: int
    validations_failed: int
    snapshots_promoted: int
    outcome: CycleOutcome
    receipt_ids: list[str]
    trigger: Literal["interval", "on_demand"] = "interval"
    detail: str = ""


# --------------------------------------------------------------------------- #
# Operations: health, problems, admin protocol
# --------------------------------------------------------------------------- #


class ActorStatus(Struct):
    state: Literal["starting", "running", "restarting", "stopped", "failed"]
    restarts: int
    last_error: str | None = None


class Health(Struct):
    """``GET /health`` (seed §3.2.1), with knhkd's own dependencies."""

    status: Literal["healthy", "degraded"]
    timestamp: datetime
    uptime_seconds: int
    dependencies: dict[str, str]
    actors: dict[str, ActorStatus]
    # "off": no [[auth.issuers]], every HTTP caller is "anonymous".
    authentication: Literal["on", "off"] = "off"
    # What the daemon measured about itself (invariants Q2, Q4, Q5); a
    # figure absent or null was not measured.
    figures: RuntimeFigures | None = None


class Problem(Struct, omit_defaults=True):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str = ""
    errors: list[FieldError] = []
    # Errors beyond those listed (api/problems.py MAX_ERRORS); absent when none.
    errors_omitted: int = 0


AuditEvent = Literal["authn", "authz", "admin", "config_reload", "phi_read"]
AuditDecision = Literal["allow", "deny"]


class AuditRecord(Struct, frozen=True):
    """One entry of the audit trail before it is receipted (``Daemon.audit``).

    Stored as a receipt of kind ``audit`` whose ``inputs`` are these fields
    (``detail`` entries prefixed ``detail.``), so it is signed, chained and
    Merkle-logged like every receipt. ``principal`` is ``Principal.name``
    (``-`` when no one was authenticated, ``uid:N`` on the admin socket);
    ``route`` is ``METHOD /rule`` or ``admin <command>``; ``reason`` a fixed
    text. Must never carry a token, a key, or a request body.
    """

    event: AuditEvent
    principal: str
    route: str
    decision: AuditDecision
    reason: str
    peer: str = ""
    sector: str = ""
    # Extra fields of one kind of event (a PHI read's justification and ids ...).
    detail: dict[str, str] = {}


# The worker lane (api/workers.py): a front-end worker process hands the
# daemon its accepted observations, audit records and answer counts, in one
# message per round trip; the daemon answers each request of it in order.


class LaneIngest(Struct, array_like=True):
    """One HTTP request's decoded observations (``single``: one JSON object)."""

    items: list[ObservationIn]
    single: bool


class LaneBatch(Struct, array_like=True):
    """What a worker sends: ``id`` counts up from 1 on each connection; the
    answer counts are deltas by class (success, client error, error)."""

    id: int
    requests: list[LaneIngest]
    audits: list[AuditRecord]
    answered: tuple[int, int, int]
    # Ingest requests refused before the daemon saw them, by reason (deltas;
    # knhk_ingest_rejected{reason}).
    refused: dict[str, int] = {}
    # Seconds per request the worker answered, by route template, since its
    # last batch (the daemon's figures: loop/figures.py).
    request_seconds: dict[str, list[float]] = {}


class LaneResult(Struct, array_like=True, omit_defaults=True):
    """One request's outcome: its ids once committed, or the problem (with
    its extra headers) the daemon would have answered with."""

    ids: list[str] | None = None
    problem: Problem | None = None
    headers: dict[str, str] = {}


class LaneReply(Struct, array_like=True):
    """The daemon's answer to the batch ``id``, once all of it is committed."""

    id: int
    results: list[LaneResult]


class AuditEntry(Struct):
    """An audit receipt as ``knhkctl audit list`` shows it."""

    id: str
    seq: int
    timestamp_ns: int
    event: str
    principal: str
    route: str
    decision: str
    reason: str
    peer: str
    count: int
    detail: dict[str, str] = {}


class AdminRequest(Struct, forbid_unknown_fields=True):
    cmd: str
    args: dict[str, Any] = {}


class AdminResponse(Struct, omit_defaults=True):
    ok: bool
    result: Any = None
    error: str | None = None


class RingSummary(Struct):
    """The ring as the running daemon sees it (``knhkctl status``)."""

    path: str
    lanes: int
    capacity: int
    # Records appended and not yet durable, over all lanes.
    backlog: int
    # Appends refused because a lane was full, and corrupt slots skipped.
    full_count: int
    corrupt_count: int
    # The path no longer names the file being drained (removed or replaced).
    stale: bool


class StatusReport(Struct):
    version: str
    pid: int
    uptime_seconds: int
    data_dir: str
    http_bind: str
    observations: int
    receipts: int
    head_hash: str
    current_snapshot: Snapshot | None
    actors: dict[str, ActorStatus]
    key_id: str
    ring: RingSummary | None = None


def encode_json(obj: Any) -> bytes:
    return _JSON.encode(obj)


_JSON = msgspec.json.Encoder()


class BackupFile(Struct):
    """One file of a backup, as its manifest lists it."""

    name: str
    size: int
    sha256: str


BackupKind = Literal["base", "incremental"]


class BackupManifest(Struct):
    """``manifest.json`` of one backup (knhkd/receipts/backup.py).

    A base holds a compact LMDB copy; an incremental holds the append-only
    records added since its parent (receipts, tree nodes, checkpoints,
    observations, patterns from ``from_*`` on) and a whole copy of the small
    mutable state. Each names its parent, so a directory of backups is a
    self-describing chain."""

    format: str
    id: str
    kind: BackupKind
    parent_id: str | None
    schema_version: int
    created_ns: int
    origin: str
    # The signed checkpoint the backup covers (issued just before the copy)
    # and its size; the copy may hold receipts beyond it (``tree_size``).
    checkpoint: str
    checkpoint_size: int
    # Receipts and observations in the store as copied, and where this
    # backup's own range starts (0 for a base).
    tree_size: int
    observations_next: int
    from_tree_size: int
    from_observations: int
    # The time of receipt ``tree_size - 1``.
    last_receipt_ns: int
    files: list[BackupFile]
