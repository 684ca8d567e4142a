"""The configuration tree: one msgspec Struct, decoded from TOML, overridden by
the environment and the command line, validated before any of it is used.

Guarantees:
- Every setting has an embedded default, so the daemon starts with no file.
- Unknown keys and wrong types are errors that name the offending key
  (``ConfigError.key``), never silently ignored.
- A ``Config`` is immutable; a reload builds a new one and the caller swaps it.

Precedence (lowest first): embedded defaults, the TOML file, the standard
``OTEL_*`` variables (``[telemetry]`` only, see ``otel_env``), ``KNHKD_*``
environment variables, command-line flags. The file is the first of
``--config``, ``$KNHKD_CONFIG`` and ``/etc/knhkd/knhkd.toml`` (``locate``);
none: the embedded defaults alone. The conf tree the defaults name (ontology,
shapes, doctrines, guards) ships inside the package (``DEFAULT_CONF``), so an
installed daemon starts from any working directory. A relative path written
in a file is relative to that file's directory; any other relative path
(``storage.data_dir``'s default, environment, flags) is relative to the
working directory.

Must never: open the data directory, bind sockets, or import above layer 1.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import msgspec
from msgspec import Meta, Struct

from knhkd.model import LOCAL_ISSUER, Permission, Role

PositiveFloat = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(gt=0)]
Fraction = Annotated[float, Meta(gt=0, le=1)]


def _default_conf_dir() -> Path:
    """The conf tree shipped in the package: ``knhkd/_conf`` in an installed
    wheel (setup.py copies ``conf/`` there), else the source checkout's
    ``conf/`` (an editable install runs from the checkout)."""
    packaged = resources.files(__package__ or "knhkd") / "_conf"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "conf"


DEFAULT_CONF = _default_conf_dir()

# Read when neither --config nor $KNHKD_CONFIG names a file, if it exists.
SYSTEM_CONFIG = Path("/etc/knhkd/knhkd.toml")


class ConfigError(Exception):
    """A configuration could not be used. ``key`` is the dotted path at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


class StorageConfig(Struct, forbid_unknown_fields=True, frozen=True):
    data_dir: str = "./var/knhkd"
    # LMDB map size at start; a sparse file, so a large value costs no disk.
    map_size_mb: PositiveInt = 1024
    # The map doubles on MapFullError up to this ceiling.
    max_map_size_mb: PositiveInt = 65536
    # Ingest commits run on the event loop's thread while one takes at most
    # this long, else on a worker thread. 0 (default): always the worker
    # thread, which gives the lower latency at moderate load; > 0 trades that
    # latency for saturated throughput on fast disks (see conf/knhkd.toml).
    inline_commit_max_ms: Annotated[float, Meta(ge=0)] = 0.0
    # (restart) Encryption at rest of observation records (README
    # "Encryption at rest"): a file holding a 32-byte key (raw, or 64 hex
    # digits), mode 0600, or "credential:NAME". Empty: off.
    encryption_key: str = ""


class ClientPrincipal(Struct, forbid_unknown_fields=True, frozen=True):
    """A client certificate → principal ``mtls#<subject>`` (``[[http.tls.client_principals]]``).

    Exactly one of ``subject`` (the certificate's whole subject, RFC 4514:
    ``"CN=gateway-7,O=plant"``, most specific first) and ``common_name`` (its
    CN alone) is set; the first entry that matches applies."""

    subject: str = ""
    common_name: str = ""
    roles: tuple[Role, ...] = ()


class TlsConfig(Struct, forbid_unknown_fields=True, frozen=True):
    # Both set: HTTPS only (TLS 1.3 at least); both empty: plain HTTP. Turning
    # TLS on or off needs a restart; SIGHUP re-reads the pair (new connections).
    certfile: str = ""
    keyfile: str = ""
    # PEM file of the CAs whose client certificates are accepted (mTLS).
    # Empty: no client certificate is asked for.
    client_ca: str = ""
    # With client_ca: "required" refuses a handshake without a client
    # certificate; "optional" serves it (bearer tokens or anonymous then decide).
    client_cert: Literal["required", "optional"] = "required"
    # Seconds a client has to finish the handshake.
    handshake_timeout_s: PositiveFloat = 10.0
    client_principals: tuple[ClientPrincipal, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.certfile)

    @property
    def mapped_client_cert_required(self) -> bool:
        """Every client must present a certificate of ``client_ca``, and some
        map to principals: that is authentication (``Config.auth_enabled``)."""
        return (
            self.enabled
            and bool(self.client_ca)
            and self.client_cert == "required"
            and bool(self.client_principals)
        )


class HttpConfig(Struct, forbid_unknown_fields=True, frozen=True):
    bind: str = "127.0.0.1:8080"
    max_body_bytes: PositiveInt = 1_048_576
    max_batch_items: PositiveInt = 10_000
    # How long an ingest request waits for room in the ingest queue before 503.
    enqueue_timeout_s: PositiveFloat = 2.0
    # How long it waits for its commit before 503 (the data may still commit).
    commit_timeout_s: PositiveFloat = 10.0
    graceful_timeout_s: PositiveFloat = 5.0
    keep_alive_timeout_s: PositiveFloat = 30.0
    # Open connections at most; past it the daemon stops accepting and new
    # connections wait in the listen backlog (restart-only).
    max_connections: PositiveInt = 256
    # Request-body bytes all requests in progress may hold together; a request
    # whose body would not fit gets 503 overloaded before any of it is read.
    max_inflight_body_bytes: PositiveInt = 64 * 1_048_576
    # Request line and headers of one request, bytes (restart-only).
    max_header_bytes: PositiveInt = 16_384
    # POST /api/v1/_noop: the stack's baseline for bench/ (off in production).
    noop_endpoint: bool = False
    # Host header names (``name`` or ``name:port``) the API answers to. Empty:
    # bound to a loopback address, ``localhost``, ``127.0.0.1`` and ``[::1]``
    # (each with or without the bound port), which defeats DNS rebinding; bound
    # elsewhere, any Host. A name without a port allows it bare or with the
    # bound port. Anything else is 403 ``host-not-allowed``.
    allowed_hosts: tuple[str, ...] = ()
    # Origins (``scheme://host[:port]``) whose browser pages may POST, PUT,
    # PATCH or DELETE; a mutating request carrying any other ``Origin`` is 403
    # ``origin-not-allowed``. Requests without ``Origin`` (curl, knhkctl,
    # producers) are not affected.
    allowed_origins: tuple[str, ...] = ()
    tls: TlsConfig = TlsConfig()
    # Front-end worker processes that accept HTTP on the one listening socket
    # (api/workers.py): ``"auto"`` one per core, ``1`` none (the daemon serves
    # HTTP itself). Restart-only; with ``[http.tls]`` the daemon serves alone.
    workers: Literal["auto"] | PositiveInt = "auto"

    def worker_count(self) -> int:
        """How many worker processes ``workers`` means on this machine (1: none)."""
        if self.tls.enabled:
            return 1  # TLS (and client certificates) are terminated in the daemon only
        if self.workers == "auto":
            return max(1, len(os.sched_getaffinity(0)))
        return self.workers


# The most characters model.RdfPayload.data may hold at all (its msgspec
# bound); ``limits.rdf_max_length`` can only lower it.
RDF_MAX_LENGTH_CEILING = 65536


class LimitsConfig(Struct, forbid_unknown_fields=True, frozen=True):
    """Sizes of the parts of an observation, checked when it is decoded (a
    violation is 422 naming the field); ``http.max_body_bytes`` bounds the
    whole, and model.py's msgspec bounds the rest (event type, metadata key
    and value lengths, proposal fields)."""

    # Characters in each string of ``value`` (object keys included).
    value_max_string_length: PositiveInt = 65536
    # Members of each array and object in ``value``.
    value_max_members: PositiveInt = 10_000
    # Entries in ``metadata``.
    metadata_max_entries: PositiveInt = 64
    # Characters in ``rdf.data``.
    rdf_max_length: Annotated[int, Meta(gt=0, le=RDF_MAX_LENGTH_CEILING)] = RDF_MAX_LENGTH_CEILING


class AdminRole(Struct, forbid_unknown_fields=True, frozen=True):
    """``[[admin.roles]]``: a uid or a gid (exactly one) and the roles its
    peers hold on the admin socket."""

    roles: tuple[Role, ...]
    uid: NonNegativeInt | None = None
    gid: NonNegativeInt | None = None


class AdminConfig(Struct, forbid_unknown_fields=True, frozen=True):
    # Empty: ``admin.sock`` inside the data directory.
    socket: str = ""
    # Other local users (by uid, or by a group they belong to) and their roles;
    # the daemon's own uid and root are administrators, every other peer is refused.
    roles: tuple[AdminRole, ...] = ()


class AuditConfig(Struct, forbid_unknown_fields=True, frozen=True):
    # Audit records wait at most this long before their group commit (each
    # flush is one more write transaction, so fewer is cheaper for ingest) ...
    flush_interval_ms: PositiveInt = 250
    # ... or until this many are queued.
    max_batch: PositiveInt = 1024
    # The intake; when it is full a request waits up to enqueue_wait_s for room
    # (back-pressure), then the record is counted in knhk_audit_dropped_total.
    queue_capacity: PositiveInt = 16384
    enqueue_wait_s: PositiveFloat = 2.0


class PrivacyConfig(Struct, forbid_unknown_fields=True, frozen=True):
    # The metadata keys that name a data subject: ``knhkctl erase --subject ID``
    # (and POST /api/v1/erasures) erases the observations where any of them
    # equals ID (loop/erasure.py).
    subject_fields: tuple[Annotated[str, Meta(min_length=1, max_length=128)], ...] = (
        "patient_id",
        "user_id",
    )


class KeysConfig(Struct, forbid_unknown_fields=True, frozen=True):
    # Empty: ``keys/signing.key`` inside the data directory, generated on first start.
    signing_key: str = ""


class ReceiptsConfig(Struct, forbid_unknown_fields=True, frozen=True):
    # The log's name in its checkpoints; empty: "knhkd.local/<first key id>",
    # fixed at first start (a later change is refused: it would rename the log).
    origin: str = ""
    # A signed checkpoint after this many new receipts ...
    checkpoint_every: PositiveInt = 1000
    # ... or this many seconds after the first receipt it does not cover yet.
    checkpoint_interval_s: PositiveFloat = 10.0


class BackupConfig(Struct, forbid_unknown_fields=True, frozen=True):
    # Scheduled backups go under this directory, and one right after each
    # erasure; empty: no schedule (``knhkctl backup`` still works).
    dir: str = ""
    # Seconds between scheduled backups.
    interval_s: PositiveFloat = 3600.0
    # A base every this many backups, incrementals in between.
    base_every: PositiveInt = 24
    # Backups kept; older ones are deleted, never a base a kept one needs.
    keep: PositiveInt = 48


class RetentionConfig(Struct, forbid_unknown_fields=True, frozen=True):
    # Observations older than this (by event time, else ingest time) are
    # archived and deleted (loop/retention.py); receipts and audit records never.
    observations_days: PositiveFloat = 90.0
    # Non-current snapshots older than this are soft-deleted (kept, marked).
    snapshots_days: PositiveFloat = 365.0
    # Seconds between scheduled runs (``knhkctl retention run`` runs one now).
    interval_s: PositiveFloat = 86400.0
    # Where archives go; empty: DATA_DIR/archive.
    archive_dir: str = ""
    # Observations deleted per write transaction: LMDB doubles its file when
    # one transaction deletes a great many records (PLATFORM_NOTES.md).
    delete_batch: PositiveInt = 1000


class KnowledgeConfig(Struct, forbid_unknown_fields=True, frozen=True):
    ontology_dir: str = str(DEFAULT_CONF / "ontology")
    shapes_dir: str = str(DEFAULT_CONF / "shapes")


class IngestConfig(Struct, forbid_unknown_fields=True, frozen=True):
    # Validate every observation against its sector's SHACL shapes before
    # commit (knhkd/monitor/shapes.py); a violation is 422 and stores nothing.
    shacl: bool = True
    # One <sector>.ttl per sector. Empty: <knowledge.shapes_dir>/observations.
    observation_shapes_dir: str = ""
    # Requests with more observations than this (or with an RDF payload) are
    # validated on a worker thread instead of the event loop.
    shacl_inline_max_items: PositiveInt = 64


class HighFrequencyConfig(Struct, forbid_unknown_fields=True, frozen=True):
    window_s: PositiveFloat = 60.0
    threshold: PositiveInt = 100


class ErrorSpikeConfig(Struct, forbid_unknown_fields=True, frozen=True):
    window_s: PositiveFloat = 60.0
    min_events: PositiveInt = 10
    error_rate: Fraction = 0.05


class AbsenceConfig(Struct, forbid_unknown_fields=True, frozen=True):
    window_s: PositiveFloat = 10.0


class SchemaDriftConfig(Struct, forbid_unknown_fields=True, frozen=True):
    window_s: PositiveFloat = 5.0


class AnalyzeConfig(Struct, forbid_unknown_fields=True, frozen=True):
    high_frequency: HighFrequencyConfig = HighFrequencyConfig()
    error_spike: ErrorSpikeConfig = ErrorSpikeConfig()
    absence: AbsenceConfig = AbsenceConfig()
    schema_drift: SchemaDriftConfig = SchemaDriftConfig()
    # Per-key detector state is bounded: past this many distinct keys the
    # least recently seen key is evicted (and counted).
    max_keys: PositiveInt = 10_000
    # How many evidence ids a pattern carries at most (each one is kept per
    # window bucket and per key, and gathered per ring batch: bounded).
    evidence_sample: Annotated[int, Meta(ge=1, le=1024)] = 16


NonNegativeFloat = Annotated[float, Meta(ge=0)]
NonNegativeInt = Annotated[int, Meta(ge=0)]


class StageTimeBudgets(Struct, forbid_unknown_fields=True, frozen=True):
    """Milliseconds each validation stage may take; over it, the proposal is
    rejected at that stage (stages 6 and 7 included)."""

    static: PositiveFloat = 2000.0
    invariants: PositiveFloat = 250.0
    doctrines: PositiveFloat = 2000.0
    guards: PositiveFloat = 250.0
    performance_budget: PositiveFloat = 250.0
    rollback: PositiveFloat = 250.0
    compatibility: PositiveFloat = 1000.0


class InvariantsConfig(Struct, forbid_unknown_fields=True, frozen=True):
    """Thresholds of the hard invariants Q2–Q5 (validation stage 2)."""

    # Q2: fraction of observations violating their sector's schema.
    max_schema_violation_rate: Annotated[float, Meta(ge=0, le=1)] = 0.01
    # Q3: a proposal's estimated_ticks (the Chatman constant).
    max_estimated_ticks: NonNegativeInt = 8
    # Q4: hot-path p99 in ticks, warm-path p99 in ms.
    hot_path_max_ticks: PositiveFloat = 8.0
    # Where this machine's floor (p99 ticks of a bare 64-byte store, measured
    # at start-up) already exceeds hot_path_max_ticks, Q4 judges the hot path
    # against floor x this instead.
    hot_path_floor_tolerance: Annotated[float, Meta(ge=1)] = 1.5
    warm_path_max_ms: PositiveFloat = 100.0
    # Q5: resident memory, CPU, API tail latency, hot-path tick regression.
    max_memory_mb: PositiveFloat = 1024.0
    max_cpu_percent: PositiveFloat = 50.0
    max_tail_ms: PositiveFloat = 500.0
    max_tick_regression: NonNegativeFloat = 0.10
    # A figure the daemon did not supply: "warn" (stage 2 gives a warning
    # naming it) or "reject" (stage 2 fails).
    unmeasured: Literal["warn", "reject"] = "warn"


class BudgetConfig(Struct, forbid_unknown_fields=True, frozen=True):
    """Performance budget (stage 5): cost = ⌈classes×class_cost⌉ +
    ⌈properties×property_cost⌉ + ⌈shapes×shape_cost⌉ ticks, affordable iff
    it is at most total_ticks (each proposal on its own; validate/budget.py)."""

    total_ticks: PositiveFloat = 64.0
    class_cost: NonNegativeFloat = 1.0
    property_cost: NonNegativeFloat = 0.5
    shape_cost: NonNegativeFloat = 3.0


class ValidateConfig(Struct, forbid_unknown_fields=True, frozen=True):
    # Stage 6 (rollback) and 7 (compatibility) failures reject instead of warn.
    strict: bool = False
    time_budget_ms: StageTimeBudgets = StageTimeBudgets()
    invariants: InvariantsConfig = InvariantsConfig()
    budget: BudgetConfig = BudgetConfig()


class QuorumConfig(Struct, forbid_unknown_fields=True, frozen=True):
    """Distinct approvers a relaxation needs, and hours between request and approval."""

    quorum: PositiveInt = 1
    min_review_h: NonNegativeFloat = 0.0


class GovernanceConfig(Struct, forbid_unknown_fields=True, frozen=True):
    # Doctrine files, one per sector: <dir>/<sector>.toml.
    doctrines_dir: str = str(DEFAULT_CONF / "doctrines")
    # Guard files: <dir>/*.toml.
    guards_dir: str = str(DEFAULT_CONF / "guards")
    # Names of the built-in custom doctrine checks doctrines may use; a
    # doctrine naming any other is refused when the doctrines are loaded.
    custom_checks: tuple[str, ...] = ("max_delta_triples", "no_blank_nodes")
    # A relaxation request not activated within this many hours expires.
    request_expiry_h: PositiveFloat = 168.0
    # Hours an activated relaxation keeps its guard off.
    activation_window_h: PositiveFloat = 1.0
    critical: QuorumConfig = QuorumConfig(quorum=3, min_review_h=24.0)
    high: QuorumConfig = QuorumConfig(quorum=2, min_review_h=12.0)
    medium: QuorumConfig = QuorumConfig(quorum=1, min_review_h=1.0)
    low: QuorumConfig = QuorumConfig(quorum=1, min_review_h=0.0)


class LoopConfig(Struct, forbid_unknown_fields=True, frozen=True):
    interval_s: PositiveFloat = 5.0
    # Bounded channels between actors; they carry batches, so this counts batches.
    channel_capacity: PositiveInt = 64
    # A cycle promotes at most this many proposals.
    max_promotions_per_cycle: PositiveInt = 8


class SupervisorConfig(Struct, forbid_unknown_fields=True, frozen=True):
    backoff_initial_s: PositiveFloat = 0.1
    backoff_max_s: PositiveFloat = 30.0
    # More than ``max_restarts`` restarts of one actor within ``window_s`` ends
    # the daemon with a non-zero status, so systemd restarts the whole process.
    max_restarts: PositiveInt = 5
    window_s: PositiveFloat = 60.0


class ShutdownConfig(Struct, forbid_unknown_fields=True, frozen=True):
    timeout_s: PositiveFloat = 10.0


class TelemetryConfig(Struct, forbid_unknown_fields=True, frozen=True):
    # Span exporter: "none", "console" (JSON lines on stdout) or "otlp"
    # (OTLP/HTTP protobuf to ``otlp_endpoint``). OTEL_TRACES_EXPORTER overrides it.
    traces: Literal["none", "console", "otlp"] = "none"
    service_name: str = "knhkd"
    # The full URL spans are POSTed to (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, or
    # OTEL_EXPORTER_OTLP_ENDPOINT + "/v1/traces", override it).
    otlp_endpoint: str = "http://localhost:4318/v1/traces"
    # Extra HTTP headers of each export (a collector's API key, a tenant).
    otlp_headers: dict[str, str] = {}
    # Seconds one export may take before it is abandoned (its spans dropped).
    otlp_timeout_s: Annotated[float, Meta(gt=0, le=300)] = 10.0
    # Finished spans waiting for the exporter; past it new spans are dropped
    # and counted (knhk_trace_spans_dropped_total), never waited for.
    queue_size: Annotated[int, Meta(ge=1, le=1 << 20)] = 2048
    # Added to the resource of every span (OTEL_RESOURCE_ATTRIBUTES adds too).
    resource_attributes: dict[str, str] = {}
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # "text": ``LEVEL logger: message``; "json": one JSON object a line (log
    # shippers). Under journald either gets the ``<N>`` priority prefix.
    log_format: Literal["text", "json"] = "text"
    # One line per HTTP request (logger ``knhkd.http.access``, info).
    access_log: bool = True
    # At most this many access lines a second per process (0: no limit); the
    # lines over it are counted, and the count logged with the next line.
    # An answer from 500 on is always logged. The default keeps a daemon and
    # two workers (300/s) under journald's default rate limit (10,000 lines
    # in 30 s per service), past which journald drops every line of the
    # service, errors included, until the interval ends.
    access_log_max_per_s: NonNegativeFloat = 100.0


# Same rule as model.EventType (this layer may not import it); the ring decoder
# checks names against model.EventType again when it is built.
_RingEventType = Annotated[
    str, Meta(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-/]*$")
]


class RingConfig(Struct, forbid_unknown_fields=True, frozen=True):
    """The shared-memory observation ring (native/knhk_ring.h, knhkd/hotpath/)."""

    # On by default: it costs a file and a poll, and a producer can use it at once.
    enabled: bool = True
    # Empty: ``observations.ring`` inside the data directory (same-user producers).
    path: str = ""
    # Producers that may append at once (each holds a lane while it is open).
    lanes: Annotated[int, Meta(ge=1, le=64)] = 8
    # Records per lane: a power of two from 64 to 16777216 (64 bytes each).
    capacity: PositiveInt = 8192
    # Mode of a ring file knhkd creates (one that exists keeps its own).
    mode: Annotated[int, Meta(ge=0, le=0o7777)] = 0o600
    # Most ring records in one commit.
    drain_batch: Annotated[int, Meta(ge=1, le=65536)] = 4096
    # Seconds the drain sleeps when the ring has just become empty; each
    # further empty poll doubles the sleep, up to idle_poll_max_s.
    poll_interval_s: PositiveFloat = 0.005
    # The longest sleep between polls of an idle ring (the most a record that
    # arrives after a quiet spell waits before it is drained).
    idle_poll_max_s: PositiveFloat = 0.1
    # Tick (TSC) frequency in Hz; 0: measured at start.
    tsc_hz: Annotated[int, Meta(ge=0)] = 0
    # Event code (as a string) -> event type; unmapped codes become "ring.<code>".
    event_codes: dict[str, _RingEventType] = {}


# Signature algorithms a token may be signed with: asymmetric only. ``none``
# and the HMAC family (HS*) are refused in configuration and in tokens: with
# HS* a verifier holding the issuer's *public* key would accept anything
# signed with it as the shared secret.
ASYMMETRIC_ALGORITHMS = (
    "EdDSA",
    "ES256",
    "ES384",
    "ES512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
)


class IssuerConfig(Struct, forbid_unknown_fields=True, frozen=True):
    """One trusted OIDC issuer (``[[auth.issuers]]``)."""

    # The token's ``iss`` must be exactly this.
    issuer: Annotated[str, Meta(min_length=1)]
    # The token's ``aud`` must name one of these.
    audiences: Annotated[tuple[str, ...], Meta(min_length=1)]
    # Exactly one of: a JWKS file (offline sites) or an https JWKS URI
    # (http only to a loopback address).
    jwks_file: str = ""
    jwks_uri: str = ""
    # Dotted path of the claim holding role names: "roles", "groups",
    # "realm_access.roles". A list of strings, or one space-separated string.
    roles_claim: Annotated[str, Meta(min_length=1)] = "roles"
    # Claim value -> role. Empty: claim values are role names themselves.
    role_map: dict[str, Role] = {}
    # Dotted path of the claim saying what the principal signs proposals as,
    # for doctrines: a list (or space-separated string) of "role@unit",
    # "@unit" or "role" ("cfo@finance", "@compliance"). Absent claim: signs
    # as a person of no role or unit. Other entries are ignored.
    signer_claim: Annotated[str, Meta(min_length=1)] = "knhkd_signer"
    algorithms: Annotated[tuple[str, ...], Meta(min_length=1)] = ("EdDSA", "ES256", "RS256")
    # Tokens issued (iat) longer ago than this are refused, whatever their exp.
    max_token_age_s: PositiveFloat = 3600.0
    # Leeway for exp, nbf and iat.
    clock_skew_s: Annotated[float, Meta(ge=0, le=300)] = 30.0
    # jwks_uri: keys older than this are fetched again (on the next use).
    jwks_refresh_s: PositiveFloat = 3600.0
    # A token naming an unknown key id makes one refresh of the key set, at
    # most once per this many seconds (a flood of bogus kids costs one fetch).
    jwks_min_refresh_s: Annotated[float, Meta(ge=0)] = 30.0
    # jwks_uri: one fetch's timeout and its attempts (backoff 0.5 s, doubling).
    jwks_timeout_s: PositiveFloat = 5.0
    jwks_attempts: Annotated[int, Meta(ge=1, le=10)] = 3


class RateLimitOverride(Struct, forbid_unknown_fields=True, frozen=True):
    """A principal's own bucket: by subject (``issuer#subject``, or
    ``anonymous``) or by role; the first entry that matches applies."""

    subject: str = ""
    role: Role | Literal[""] = ""
    rate_per_s: Annotated[float, Meta(ge=0)] = 0.0
    burst: PositiveInt = 100


class RateLimitConfig(Struct, forbid_unknown_fields=True, frozen=True):
    # Requests per second each principal may make on average; 0: no limit.
    rate_per_s: Annotated[float, Meta(ge=0)] = 0.0
    # Requests a principal may make at once after being idle.
    burst: PositiveInt = 100
    # Buckets kept at most (least recently used dropped first).
    max_principals: PositiveInt = 10_000
    overrides: tuple[RateLimitOverride, ...] = ()


class AuthConfig(Struct, forbid_unknown_fields=True, frozen=True):
    # No issuer: authentication is off, HTTP must bind loopback, and every
    # caller is the principal "anonymous".
    issuers: tuple[IssuerConfig, ...] = ()
    # What "anonymous" may do while authentication is off.
    anonymous_permissions: tuple[Permission, ...] = (
        "READ_OBSERVATIONS",
        "READ_SNAPSHOTS",
        "READ_RECEIPTS",
        "READ_METRICS",
        "INGEST",
    )
    # Verified tokens kept (until their exp) so a request does not pay a
    # signature check: keyed by SHA-256 of the token, least recently used dropped.
    token_cache_size: PositiveInt = 10_000
    rate_limit: RateLimitConfig = RateLimitConfig()
    # Healthcare observations (PHI, seed §6.2): a read needs this header
    # (1-512 characters), passed to the audit hook, and a token issued
    # (iat) at most phi_max_token_age_s ago.
    phi_justification_header: Annotated[str, Meta(min_length=1, pattern=r"^[A-Za-z0-9-]+$")] = (
        "X-Access-Justification"
    )
    phi_max_token_age_s: PositiveFloat = 900.0


class Config(Struct, forbid_unknown_fields=True, frozen=True):
    storage: StorageConfig = StorageConfig()
    http: HttpConfig = HttpConfig()
    limits: LimitsConfig = LimitsConfig()
    admin: AdminConfig = AdminConfig()
    audit: AuditConfig = AuditConfig()
    keys: KeysConfig = KeysConfig()
    receipts: ReceiptsConfig = ReceiptsConfig()
    backup: BackupConfig = BackupConfig()
    retention: RetentionConfig = RetentionConfig()
    knowledge: KnowledgeConfig = KnowledgeConfig()
    ingest: IngestConfig = IngestConfig()
    analyze: AnalyzeConfig = AnalyzeConfig()
    validate: ValidateConfig = ValidateConfig()
    loop: LoopConfig = LoopConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    governance: GovernanceConfig = GovernanceConfig()
    ring: RingConfig = RingConfig()
    auth: AuthConfig = AuthConfig()
    privacy: PrivacyConfig = PrivacyConfig()

    @property
    def auth_enabled(self) -> bool:
        """Callers must authenticate: ``[[auth.issuers]]`` configured, or TLS
        requiring a client certificate that maps to a principal."""
        return bool(self.auth.issuers) or self.http.tls.mapped_client_cert_required

    # ---- derived paths ---------------------------------------------------- #

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir)

    @property
    def encryption_key_path(self) -> Path | None:
        """The storage key's file; None when encryption at rest is off."""
        if not self.storage.encryption_key:
            return None
        return secret_path("storage.encryption_key", self.storage.encryption_key)

    @property
    def archive_dir(self) -> Path:
        return (
            Path(self.retention.archive_dir)
            if self.retention.archive_dir
            else self.data_dir / "archive"
        )

    @property
    def admin_socket(self) -> Path:
        return Path(self.admin.socket) if self.admin.socket else self.data_dir / "admin.sock"

    @property
    def signing_key_path(self) -> Path:
        """The signing key's file; raises ``ConfigError`` for a credential
        without ``$CREDENTIALS_DIRECTORY``."""
        if self.keys.signing_key:
            return secret_path("keys.signing_key", self.keys.signing_key)
        return self.data_dir / "keys" / "signing.key"

    @property
    def signing_key_is_credential(self) -> bool:
        """The key is a systemd credential: read-only, never generated or
        rotated in place."""
        return is_credential(self.keys.signing_key)

    @property
    def public_keyring_path(self) -> Path:
        """``public.json`` beside the signing key, or in ``DATA_DIR/keys`` when
        the key is a credential (its directory is read-only)."""
        if self.signing_key_is_credential:
            return self.data_dir / "keys" / "public.json"
        return self.signing_key_path.parent / "public.json"

    @property
    def ring_path(self) -> Path:
        return Path(self.ring.path) if self.ring.path else self.data_dir / "observations.ring"

    @property
    def observation_shapes_dir(self) -> Path:
        if self.ingest.observation_shapes_dir:
            return Path(self.ingest.observation_shapes_dir)
        return Path(self.knowledge.shapes_dir) / "observations"

    def digest(self) -> str:
        """SHA-256 of the canonical encoding; receipts record which config decided."""
        return hashlib.sha256(msgspec.msgpack.encode(self, order="sorted")).hexdigest()


ENV_OVERRIDES: Mapping[str, tuple[str, str]] = {
    "KNHKD_DATA_DIR": ("storage", "data_dir"),
    "KNHKD_HTTP_BIND": ("http", "bind"),
    "KNHKD_HTTP_WORKERS": ("http", "workers"),
    "KNHKD_ADMIN_SOCKET": ("admin", "socket"),
    "KNHKD_LOOP_INTERVAL_S": ("loop", "interval_s"),
    "KNHKD_LOG_LEVEL": ("telemetry", "log_level"),
    "KNHKD_LOG_FORMAT": ("telemetry", "log_format"),
}


def _otel_pairs(var: str, text: str) -> dict[str, str]:
    """``k1=v1,k2=v2`` (W3C Baggage-like, values percent-encoded) as a dict."""
    out: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(var, f"expected key=value[,key=value...], got {item.strip()!r}")
        out[unquote(key.strip())] = unquote(value.strip())
    return out


def otel_env(env: Mapping[str, str], file_telemetry: object) -> dict[tuple[str, str], Any]:
    """The ``[telemetry]`` keys the standard ``OTEL_*`` variables set.

    They override the file and are overridden by ``KNHKD_*`` variables and flags
    (the same rule as every other environment variable here). Resource
    attributes and headers are merged into the file's, key by key.
    """
    out: dict[tuple[str, str], Any] = {}
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip()
    if exporter:
        if exporter not in ("none", "console", "otlp"):
            raise ConfigError(
                "OTEL_TRACES_EXPORTER", f"{exporter!r}: expected none, console or otlp"
            )
        out[("telemetry", "traces")] = exporter
    if endpoint := env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        out[("telemetry", "otlp_endpoint")] = endpoint
    elif base := env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        # The spec: the signal's path is appended to the generic endpoint.
        out[("telemetry", "otlp_endpoint")] = base.rstrip("/") + "/v1/traces"
    if name := env.get("OTEL_SERVICE_NAME", "").strip():
        out[("telemetry", "service_name")] = name
    file = file_telemetry if isinstance(file_telemetry, dict) else {}
    for var, key in (
        ("OTEL_RESOURCE_ATTRIBUTES", "resource_attributes"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "otlp_headers"),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "otlp_headers"),
    ):
        if text := env.get(var, "").strip():
            before = out.get(("telemetry", key)) or file.get(key) or {}
            merged = dict(before) if isinstance(before, dict) else {}
            merged.update(_otel_pairs(var, text))
            out[("telemetry", key)] = merged
    return out


def error_key(exc: msgspec.ValidationError) -> tuple[str, str]:
    """Turn msgspec's "msg - at `$.a[0].b`" into ("a[0].b", msg); an unknown
    field is named in the path."""
    text = str(exc)
    msg, sep, where = text.rpartition(" - at `")
    if not sep:
        msg, where = text, ""
    path = where.rstrip("`").removeprefix("$").lstrip(".")
    if "unknown field `" in msg:
        field = msg.split("unknown field `", 1)[1].split("`", 1)[0]
        path = f"{path}.{field}" if path else field
    return path, msg


def parse_bind(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("http.bind", f"expected HOST:PORT, got {bind!r}")
    return host.strip("[]"), int(port)


def build(
    raw: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[tuple[str, str], Any] | None = None,
) -> Config:
    """Decode and validate a configuration mapping with env and flag overrides."""
    tree: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    layered: dict[tuple[str, str], Any] = otel_env(env or {}, tree.get("telemetry"))
    for var, dest in ENV_OVERRIDES.items():
        if env is not None and var in env:
            layered[dest] = env[var]
    layered.update(overrides or {})
    for (section, key), value in layered.items():
        sect = tree.setdefault(section, {})
        if not isinstance(sect, dict):
            raise ConfigError(section, "expected a table")
        sect[key] = value
    try:
        cfg = msgspec.convert(tree, Config, strict=False)
    except msgspec.ValidationError as exc:
        key, msg = error_key(exc)
        raise ConfigError(key, msg) from None
    parse_bind(cfg.http.bind)
    if cfg.storage.max_map_size_mb < cfg.storage.map_size_mb:
        raise ConfigError("storage.max_map_size_mb", "must be at least storage.map_size_mb")
    if cfg.http.max_inflight_body_bytes < cfg.http.max_body_bytes:
        raise ConfigError("http.max_inflight_body_bytes", "must be at least http.max_body_bytes")
    if cfg.supervisor.backoff_max_s < cfg.supervisor.backoff_initial_s:
        raise ConfigError("supervisor.backoff_max_s", "must be at least backoff_initial_s")
    _check_ring(cfg.ring)
    _check_otlp(cfg.telemetry)
    _check_auth(cfg)
    if is_credential(cfg.keys.signing_key):
        _check_credential_name("keys.signing_key", cfg.keys.signing_key)
    for i, iss in enumerate(cfg.auth.issuers):
        if is_credential(iss.jwks_file):
            _check_credential_name(f"auth.issuers[{i}].jwks_file", iss.jwks_file)
    for i, entry in enumerate(cfg.admin.roles):
        if (entry.uid is None) == (entry.gid is None):
            raise ConfigError(f"admin.roles[{i}]", "set exactly one of uid and gid")
    return cfg


def is_loopback(host: str) -> bool:
    """``host`` (a name or an address, no port) names this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_auth(cfg: Config) -> None:
    host, _ = parse_bind(cfg.http.bind)
    if not cfg.auth_enabled and not is_loopback(host):
        raise ConfigError(
            "http.bind",
            f"{cfg.http.bind} is not a loopback address and authentication is off: "
            "configure [[auth.issuers]] (or http.tls with client_ca, client_cert = "
            '"required" and [[http.tls.client_principals]]) or bind 127.0.0.1',
        )
    _check_tls(cfg.http.tls)
    seen: set[str] = set()
    for i, iss in enumerate(cfg.auth.issuers):
        where = f"auth.issuers[{i}]"
        if iss.issuer in seen:
            raise ConfigError(f"{where}.issuer", f"{iss.issuer!r} is configured twice")
        seen.add(iss.issuer)
        if bool(iss.jwks_file) == bool(iss.jwks_uri):
            raise ConfigError(where, "set exactly one of jwks_file and jwks_uri")
        if iss.jwks_uri:
            _check_jwks_uri(f"{where}.jwks_uri", iss.jwks_uri)
        for alg in iss.algorithms:
            if alg not in ASYMMETRIC_ALGORITHMS:
                raise ConfigError(
                    f"{where}.algorithms",
                    f"{alg!r} is not allowed (asymmetric only: {', '.join(ASYMMETRIC_ALGORITHMS)})",
                )
        if any(not part for part in iss.roles_claim.split(".")):
            raise ConfigError(f"{where}.roles_claim", "expected a dotted claim path")
        if any(not part for part in iss.signer_claim.split(".")):
            raise ConfigError(f"{where}.signer_claim", "expected a dotted claim path")
        if iss.issuer == LOCAL_ISSUER:
            raise ConfigError(
                f"{where}.issuer", f"{LOCAL_ISSUER!r} names the admin socket's principals"
            )


def _check_tls(tls: TlsConfig) -> None:
    if bool(tls.certfile) != bool(tls.keyfile):
        raise ConfigError("http.tls", "set both certfile and keyfile, or neither")
    if not tls.enabled and (tls.client_ca or tls.client_principals):
        raise ConfigError("http.tls", "client_ca and client_principals need certfile and keyfile")
    if tls.client_principals and not tls.client_ca:
        raise ConfigError("http.tls.client_principals", "needs http.tls.client_ca")
    for i, cp in enumerate(tls.client_principals):
        where = f"http.tls.client_principals[{i}]"
        if bool(cp.subject) == bool(cp.common_name):
            raise ConfigError(where, "set exactly one of subject and common_name")
        if not cp.roles:
            raise ConfigError(f"{where}.roles", "name at least one role")


def _check_jwks_uri(key: str, uri: str) -> None:
    parts = urlsplit(uri)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and is_loopback(parts.hostname):
        return
    raise ConfigError(key, f"{uri!r}: expected an https URL (http only to a loopback address)")


def _check_otlp(t: TelemetryConfig) -> None:
    parts = urlsplit(t.otlp_endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            "telemetry.otlp_endpoint", f"{t.otlp_endpoint!r}: expected an http(s) URL"
        )


def _check_ring(ring: RingConfig) -> None:
    cap = ring.capacity
    if cap & (cap - 1) or not 64 <= cap <= 1 << 24:
        raise ConfigError("ring.capacity", f"must be a power of two in 64..16777216, not {cap}")
    for code in ring.event_codes:
        if not code.isdigit() or int(code) > 0xFFFF:
            raise ConfigError(f"ring.event_codes.{code}", "an event code is an integer 0..65535")


def read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("", f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        # tomllib decodes the bytes itself: a file that is not UTF-8 is not
        # TOML (TOML 1.0 §"Spec": a TOML file must be a valid UTF-8 document).
        raise ConfigError(
            "", f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"
        ) from None
    except OSError as exc:
        raise ConfigError("", f"{path}: {exc.strerror}") from None


def locate(explicit: Path | None, env: Mapping[str, str]) -> tuple[Path | None, str]:
    """The configuration file to read and where its name came from:
    ``--config``, else ``$KNHKD_CONFIG``, else ``/etc/knhkd/knhkd.toml`` when
    it exists, else ``(None, "embedded defaults")``. A file named by the
    first two must exist (``load`` says so); the system file is optional."""
    if explicit is not None:
        return explicit, "--config"
    named = env.get("KNHKD_CONFIG", "")
    if named:
        return Path(named), "$KNHKD_CONFIG"
    if SYSTEM_CONFIG.exists():
        return SYSTEM_CONFIG, str(SYSTEM_CONFIG)
    return None, "embedded defaults"


def load(
    path: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[tuple[str, str], Any] | None = None,
) -> Config:
    """Load the configuration the daemon runs with."""
    env = os.environ if env is None else env
    raw = {} if path is None else _anchor_paths(read_file(path), path.resolve().parent)
    return build(raw, env=env, overrides=overrides)


PATH_KEYS: tuple[tuple[str, str], ...] = (
    ("storage", "data_dir"),
    ("admin", "socket"),
    ("keys", "signing_key"),
    ("knowledge", "ontology_dir"),
    ("knowledge", "shapes_dir"),
    ("ingest", "observation_shapes_dir"),
    ("governance", "doctrines_dir"),
    ("governance", "guards_dir"),
    ("ring", "path"),
)


def _anchor_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    http = raw.get("http")
    tls = http.get("tls") if isinstance(http, dict) else None
    if isinstance(tls, dict):
        for key in ("certfile", "keyfile", "client_ca"):
            value = tls.get(key)
            if (
                isinstance(value, str)
                and value
                and not is_credential(value)
                and not Path(value).is_absolute()
            ):
                tls[key] = str(base / value)
    auth = raw.get("auth")
    issuers = auth.get("issuers") if isinstance(auth, dict) else None
    for iss in issuers if isinstance(issuers, list) else ():
        value = iss.get("jwks_file") if isinstance(iss, dict) else None
        if (
            isinstance(value, str)
            and value
            and not is_credential(value)
            and not Path(value).is_absolute()
        ):
            iss["jwks_file"] = str(base / value)
    for section, key in PATH_KEYS:
        sect = raw.get(section)
        value = sect.get(key) if isinstance(sect, dict) else None
        if (
            isinstance(sect, dict)
            and isinstance(value, str)
            and value
            and not is_credential(value)
            and not Path(value).is_absolute()
        ):
            sect[key] = str(base / value)
    return raw


# A secret file may be a systemd credential (LoadCredential=): the value
# ``credential:NAME`` names $CREDENTIALS_DIRECTORY/NAME.
CREDENTIAL_PREFIX = "credential:"


def is_credential(value: str) -> bool:
    return value.startswith(CREDENTIAL_PREFIX)


def _check_credential_name(key: str, value: str) -> None:
    name = value.removeprefix(CREDENTIAL_PREFIX)
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(key, f"{value!r}: expected credential:NAME, NAME a file name")


def secret_path(key: str, value: str, environ: Mapping[str, str] | None = None) -> Path:
    """The file a secret setting names: a path, or ``credential:NAME`` →
    ``$CREDENTIALS_DIRECTORY/NAME`` (systemd ``LoadCredential=``). Raises
    ``ConfigError`` naming ``key`` when a credential is named and the
    process was given no credentials directory."""
    if not is_credential(value):
        return Path(value)
    _check_credential_name(key, value)
    env = os.environ if environ is None else environ
    directory = env.get("CREDENTIALS_DIRECTORY", "")
    if not directory:
        raise ConfigError(
            key,
            f"{value!r} names a systemd credential, but $CREDENTIALS_DIRECTORY is not set "
            "(start knhkd from a unit with LoadCredential=, or give a file path)",
        )
    return Path(directory) / value.removeprefix(CREDENTIAL_PREFIX)
