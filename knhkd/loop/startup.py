"""Start-up as a sequence with a result: each step returns what it opened or
loaded, and a failed step raises ``StartupError`` naming it.

The steps, in order:
  1. ``open_data_dir`` (synchronous, before any actor runs): the data
     directory (0700) and the LMDB store (exclusive lock, reader_check, schema
     version); the signing key (generated 0600 on first start, a rotation a
     crash interrupted finished or discarded); the shared-memory ring when
     ``[ring] enabled`` (created when absent; a header or layout mismatch is
     refused); the integrity check against the anchor
     ``DATA_DIR/checkpoint.anchor`` (loop/integrity.py: findings freeze the
     store and close the write gate, and every later step writes nothing);
     the receipt log and the store writer. Returns ``Opened``.
  2. ``prepare`` (the writer must be running: it commits): the keyring, the
     log's origin and the Merkle tree backfill, then ``keys/public.json``;
     the sectors' observation shapes when ``[ingest] shacl`` is on (a missing
     or broken file fails the step ``observation_shapes``); the current
     snapshot, or genesis from ``knowledge.ontology_dir`` with its receipt and
     a first checkpoint written to the anchor (never in a data directory that
     has held a chain);
     doctrines, guards and relaxations, with a receipt for any changed set.
     Returns ``Prepared``.
The nursery tree (loop/tree.py) then builds the actors and the ``Daemon``
from these two values, so no part of the daemon exists half-made.

Must never: leave the store open when a later step of ``open_data_dir``
fails, or leave a temporary file behind a failed write.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import trio

from knhkd.config import Config, ConfigError
from knhkd.crypto.keys import KeyFileError, Signer, Verifier, load, load_or_create
from knhkd.errors import KnhkdError, StorageFull
from knhkd.governance.relaxation import RelaxationError
from knhkd.hotpath.ring import Consumer, RingError
from knhkd.knowledge.rdf import KnowledgeError
from knhkd.knowledge.shacl import Shapes, ShapesError
from knhkd.loop import knowledge_state as kn
from knhkd.loop.backup import record_restore
from knhkd.loop.governance_state import Governance
from knhkd.loop.integrity import KeyringUnreadable, startup_check, trusted_keyring
from knhkd.loop.shapes_gate import ShapesGate
from knhkd.loop.write_gate import WriteGate
from knhkd.loop.writer import StoreWriter
from knhkd.model import PublicKeyring
from knhkd.monitor.shapes import ObservationGate, load_observation_shapes
from knhkd.receipts import keyring
from knhkd.receipts.checkpoints import issue_job, set_origin_job
from knhkd.receipts.integrity import has_held_chain
from knhkd.receipts.log import ReceiptLog
from knhkd.store import anchor
from knhkd.store.env import Store, StoreError, open_store
from knhkd.telemetry.metrics import Metrics

log = logging.getLogger("knhkd")

MB = 1024 * 1024


class StartupError(KnhkdError):
    """A start-up step failed; the daemon exits non-zero with this one line."""

    problem = "startup-failed"
    title = "Start-up failed"

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step


def write_public_keyring(path: Path, ring: PublicKeyring) -> None:
    """``keys/public.json``, replaced atomically (a reader sees the old or the
    new keyring, never a torn one); the temporary file is removed when writing
    fails, and the failure is ``StorageFull`` when it is lack of space."""
    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp.write_bytes(msgspec.json.format(msgspec.json.encode(ring), indent=2) + b"\n")
        os.chmod(tmp, 0o644)
        tmp.replace(path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull(f"no space left on device: cannot write {path}") from exc
        raise


@dataclass(frozen=True)
class Opened:
    """Step 1's result: what the daemon holds open until it exits."""

    store: Store
    signer: Signer
    receipts: ReceiptLog
    writer: StoreWriter
    # Whether the store takes writes now (storage full, ...): the writer
    # closes and lifts it; health, readiness and status report it.
    write_gate: WriteGate
    # The shared-memory ring's consumer handle; None when [ring] is off.
    ring: Consumer | None
    # The keys the anchor was judged with (loop/integrity.py), and what the
    # start-up integrity check found: any finding makes the daemon read-only.
    trusted_keys: PublicKeyring
    findings: tuple[str, ...] = ()

    @property
    def writable(self) -> bool:
        return not self.findings

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
        self.store.close()


def open_data_dir(cfg: Config, metrics: Metrics, config: Callable[[], Config]) -> Opened:
    """Step 1. ``config`` is the configuration in force when a part reads a
    reloadable setting later (the writer's inline-commit limit)."""
    try:
        cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        store = open_store(
            cfg.data_dir,
            map_size=cfg.storage.map_size_mb * MB,
            max_map_size=cfg.storage.max_map_size_mb * MB,
            # A data directory that has held a chain never gets databases
            # created: that would commit over the damage (store/env.py).
            create=not anchor.path_in(cfg.data_dir).exists(),
        )
    except (StoreError, OSError) as exc:
        raise StartupError("storage", str(exc)) from None
    try:
        if cfg.signing_key_is_credential:
            # A systemd credential is the operator's: used as given, never made.
            load(cfg.signing_key_path)
        else:
            load_or_create(cfg.signing_key_path, time.time_ns())
        # Finish or discard a rotation a crash interrupted (receipts/keyring.py).
        signer = keyring.reconcile(store, cfg.signing_key_path)
    except ConfigError as exc:
        store.close()
        raise StartupError("keys", str(exc)) from None
    except (KeyFileError, OSError) as exc:
        store.close()
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StartupError("storage", f"no space left on device: {exc}") from None
        raise StartupError("keys", str(exc)) from None
    ring = None
    if cfg.ring.enabled:
        try:
            ring = Consumer.create_or_open(
                cfg.ring_path,
                lanes=cfg.ring.lanes,
                capacity=cfg.ring.capacity,
                mode=cfg.ring.mode,
            )
        except (RingError, OSError) as exc:
            store.close()
            raise StartupError("ring", str(exc)) from None
    try:
        trusted = trusted_keyring(cfg.data_dir, signer)
    except KeyringUnreadable as exc:
        if ring is not None:
            ring.close()
        store.close()
        raise StartupError("keys", str(exc)) from None
    log.debug(
        "data directory %s opened: store, signing key %s, ring %s",
        cfg.data_dir,
        signer.key_id,
        cfg.ring_path if ring is not None else "off",
    )
    gate = WriteGate()
    # Before the first write: findings freeze the store and close the gate.
    findings = startup_check(store, cfg.data_dir, trusted, gate)
    metrics.integrity_findings.set(len(findings))
    writer = StoreWriter(
        store,
        metrics,
        inline_max_s=lambda: config().storage.inline_commit_max_ms / 1000.0,
        gate=gate,
    )
    return Opened(
        store,
        signer,
        ReceiptLog(store, signer, time.time_ns),
        writer,
        gate,
        ring,
        trusted_keys=trusted,
        findings=tuple(findings),
    )


@dataclass(frozen=True)
class Prepared:
    """Step 2's result: what the loop starts from."""

    verifier: Verifier
    knowledge: kn.KnowledgeState
    # SHACL at ingest (monitor/shapes.py); None when [ingest] shacl = false.
    shapes_gate: ShapesGate | None
    governance: Governance


async def prepare(
    cfg: Config, opened: Opened, metrics: Metrics, config: Callable[[], Config]
) -> Prepared:
    """Step 2; the writer actor must be running. A write that finds the disk
    or the map full fails the step ``storage``."""
    try:
        verifier = await _register_keys(cfg, opened)
        if opened.writable:
            # Before any other receipt: the restored log says where it came from.
            await record_restore(cfg.data_dir, opened.writer, opened.receipts)
        gate = _shapes_gate(cfg, metrics, config) if cfg.ingest.shacl else None
        knowledge = await _load_knowledge(cfg, opened)
        metrics.snapshot_version.set(knowledge.current.version)
        try:
            governance = Governance(opened.store, opened.writer, opened.receipts, cfg)
        except (KnowledgeError, RelaxationError) as exc:
            raise StartupError("governance", str(exc)) from None
        log.debug(
            "governance: %d doctrines from %s, %d guards from %s",
            len(governance.doctrines.doctrines),
            cfg.governance.doctrines_dir,
            len(governance.guards.guards),
            cfg.governance.guards_dir,
        )
        if opened.writable:
            await governance.record_digests()
    except StorageFull as exc:
        raise StartupError("storage", exc.detail) from None
    return Prepared(verifier, knowledge, gate, governance)


async def _register_keys(cfg: Config, opened: Opened) -> Verifier:
    """The keyring, the log's origin, the tree; then ``keys/public.json``.
    Read-only: nothing is written, and the keys outside the store are trusted."""
    if not opened.writable:
        return Verifier(opened.trusted_keys)
    store, writer, signer = opened.store, opened.writer, opened.signer
    await writer.submit(keyring.register_job(store, signer))
    origin = cfg.receipts.origin or f"knhkd.local/{signer.key_id}"
    fixed = await writer.submit(set_origin_job(store, origin))
    if cfg.receipts.origin and fixed != cfg.receipts.origin:
        raise StartupError(
            "receipts", f"the log's origin is {fixed!r}; receipts.origin may not rename it"
        )
    added = await writer.submit(opened.receipts.backfill_tree)
    if added:
        log.info("Merkle tree backfilled with %d receipts", added)
    return publish_keyring(cfg, store)


def publish_keyring(cfg: Config, store: Store) -> Verifier:
    """The stored keyring, written to ``keys/public.json``; its verifier."""
    with store.reader() as txn:
        ring = keyring.read_keyring(store, txn)
    write_public_keyring(cfg.public_keyring_path, ring)
    return Verifier(ring)


def _shapes_gate(cfg: Config, metrics: Metrics, config: Callable[[], Config]) -> ShapesGate:
    try:
        sector_shapes = load_observation_shapes(cfg.observation_shapes_dir)
    except ShapesError as exc:
        raise StartupError("observation_shapes", str(exc)) from None
    return ShapesGate(
        ObservationGate(sector_shapes),
        metrics.shacl_failures_by_sector,
        inline_max_items=lambda: config().ingest.shacl_inline_max_items,
    )


async def _load_knowledge(cfg: Config, opened: Opened) -> kn.KnowledgeState:
    """The current snapshot, or genesis with its receipt on first start."""
    try:
        shapes = Shapes.load(Path(cfg.knowledge.shapes_dir))
        record = kn.load_current(opened.store)
        if record is None and not opened.writable:
            # Read-only on a store without knowledge: serve the genesis the
            # ontology gives, in memory only (never stored nor receipted).
            record = kn.build_genesis(Path(cfg.knowledge.ontology_dir), time.time_ns())
            log.error("no current snapshot in the store; genesis held in memory only")
        elif record is None:
            if has_held_chain(opened.store, cfg.data_dir):
                raise StartupError(
                    "knowledge",
                    "no current snapshot, but this data directory has held a receipt "
                    "chain: refusing to make a new genesis (see knhkctl fsck)",
                )
            record = kn.build_genesis(Path(cfg.knowledge.ontology_dir), time.time_ns())
            await opened.writer.submit(
                kn.install_job(opened.store, opened.receipts, record, expect_current=None)
            )
            log.info(
                "genesis snapshot %s (%d triples) promoted",
                record.meta.snapshot_id[:16],
                record.meta.triple_count,
            )
            # From now on this data directory has an anchor (store/anchor.py).
            cp = await opened.writer.submit(issue_job(opened.store, opened.receipts))
            if cp is not None:
                await trio.to_thread.run_sync(anchor.write, anchor.path_in(cfg.data_dir), cp.text)
        log.debug(
            "knowledge: snapshot %d (%s, %d triples), shapes from %s",
            record.meta.version,
            record.meta.snapshot_id[:16],
            record.meta.triple_count,
            cfg.knowledge.shapes_dir,
        )
        return kn.state_of(record, shapes)
    except (KnowledgeError, OSError) as exc:
        raise StartupError("knowledge", str(exc)) from None
