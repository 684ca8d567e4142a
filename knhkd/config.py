"""The configuration tree: one msgspec Struct, decoded from TOML, overridden by
the environment and the command line, validated before any of it is used.

Guarantees:
- Every setting has an embedded default, so the daemon starts with no file.
- Unknown keys and wrong types are errors that name the offending key
  (``ConfigError.key``), never silently ignored.
- A ``Config`` is immutable; a reload builds a new one and the caller swaps it.

Precedence (lowest first): embedded defaults, the TOML file, ``KNHKD_*``
environment variables, command-line flags. A relative path written in a file
is relative to that file's directory; any other relative path (defaults,
environment, flags) is relative to the working directory.

Must never: open the data directory, bind sockets, or import above layer 1.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

PositiveFloat = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(gt=0)]
Fraction = Annotated[float, Meta(gt=0, le=1)]


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


class AdminConfig(Struct, forbid_unknown_fields=True, frozen=True):
    # Empty: ``admin.sock`` inside the data directory.
    socket: str = ""


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


class KnowledgeConfig(Struct, forbid_unknown_fields=True, frozen=True):
    ontology_dir: str = "conf/ontology"
    shapes_dir: str = "conf/shapes"


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
    doctrines_dir: str = "conf/doctrines"
    # Guard files: <dir>/*.toml.
    guards_dir: str = "conf/guards"
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
    traces: Literal["none", "console"] = "none"
    service_name: str = "knhkd"
    log_level: Literal["debug", "info", "warning", "error"] = "info"


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


class Config(Struct, forbid_unknown_fields=True, frozen=True):
    storage: StorageConfig = StorageConfig()
    http: HttpConfig = HttpConfig()
    admin: AdminConfig = AdminConfig()
    keys: KeysConfig = KeysConfig()
    receipts: ReceiptsConfig = ReceiptsConfig()
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

    # ---- derived paths ---------------------------------------------------- #

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir)

    @property
    def admin_socket(self) -> Path:
        return Path(self.admin.socket) if self.admin.socket else self.data_dir / "admin.sock"

    @property
    def signing_key_path(self) -> Path:
        if self.keys.signing_key:
            return Path(self.keys.signing_key)
        return self.data_dir / "keys" / "signing.key"

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
    "KNHKD_ADMIN_SOCKET": ("admin", "socket"),
    "KNHKD_LOOP_INTERVAL_S": ("loop", "interval_s"),
    "KNHKD_LOG_LEVEL": ("telemetry", "log_level"),
}


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
    layered: dict[tuple[str, str], Any] = {}
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
    return cfg


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
    for section, key in PATH_KEYS:
        sect = raw.get(section)
        value = sect.get(key) if isinstance(sect, dict) else None
        if (
            isinstance(sect, dict)
            and isinstance(value, str)
            and value
            and not Path(value).is_absolute()
        ):
            sect[key] = str(base / value)
    return raw
