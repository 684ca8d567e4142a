"""The ingest actor: accepted observations become durable, then flow on.

Guarantees:
- ``Ingest.submit`` returns ids only after the observations are durably
  committed, together with their ``observation_batch_committed`` receipts, in
  one LMDB transaction; an acknowledged observation survives ``kill -9``.
- Requests queued while a commit is in flight share the next commit (group
  commit); one receipt per sector per commit records the sequence range, the
  count and ``leaves_sha256``: SHA-256 over the leaf digests of its
  observations, in order. An observation's leaf digest is SHA-256(salt ||
  the exact stored record) with a fresh random 16-byte salt, stored with the
  salt in ``observation_leaves`` in the same transaction: the receipt commits
  to the content through the salt, so destroying content and salt (erasure:
  loop/erasure.py) leaves a digest that still verifies and reveals nothing.
  (Schema-v1 receipts, before ``observations.salted_from``, carry
  ``records_sha256`` over the records themselves.)
- Ids are assigned inside the committing transaction from a stored sequence:
  unique under any concurrency (store/ids.py).
- Committed observations reach the analyzer *before* their submitters are
  woken, so a cycle requested after an acknowledgement sees them.
- A full intake is explicit back-pressure: ``Overloaded`` after
  ``enqueue_timeout``; the daemon stopping: ``Closed``.
- ``submit_many`` (a worker's lane batch) queues several requests from one
  task; each is stored or refused on its own, exactly as through ``submit``.
- Fault isolation: when storing a group of requests fails for a reason of the
  items themselves (the job raised, not the store), the group is split in
  halves and each half committed again, down to the single request at fault:
  that request alone fails, with ``Unstorable`` (422, naming the error,
  counted as ``knhk_ingest_rejected{reason="unstorable"}``), the others are
  committed without it, and the actor does not crash (the supervisor's
  restart budget is for faults no single input explains). A failure of the
  transaction as a whole (``CommitFailed``: the store, not the input) fails
  the group and is left to the supervisor.
- ``extra_meta`` a request carries (the ring drain's resume cursor) is written
  to the ``meta`` database in the transaction that commits its observations.
- A request is HTTP's ``list[ObservationIn]`` or the ring drain's ``RingBatch``;
  both become the same stored records (the ring's are encoded in C, byte for
  byte what msgspec writes) with the same ids, receipts and analyzer feed.

Must never: acknowledge an observation that is not committed; store part of a
request.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lmdb
import msgspec
import trio
from opentelemetry.trace import SpanContext

from knhkd.errors import Invalid, KnhkdError, Unavailable
from knhkd.hotpath.codec import RingBatch
from knhkd.loop.batching import receive_batch
from knhkd.loop.cycle import BatchLinks
from knhkd.loop.figures import Figures
from knhkd.loop.writer import CommitFailed, StoreWriter, WriterClosed
from knhkd.model import Observation, ObservationCounts, ObservationIn, Outcome, Sector
from knhkd.receipts.log import Draft, ReceiptLog
from knhkd.store.env import Store
from knhkd.store.ids import observation_ids, seq_key
from knhkd.store.schema import LEAF_DIGEST_BYTES, LEAF_SALT_BYTES
from knhkd.telemetry.metrics import Metrics
from knhkd.telemetry.tracing import current_context

log = logging.getLogger(__name__)


class Overloaded(Unavailable):
    """The ingest queue stayed full; retry later."""

    problem = "overloaded"
    title = "Overloaded"
    retry_after = 1


class Unstorable(Invalid):
    """This request's items passed decoding but could not be stored (the
    encoder or the job refused them); nothing of the request was stored and
    the requests committed with it are unaffected."""

    problem = "unstorable"
    title = "Cannot be stored"


class Closed(Unavailable):
    """The daemon is stopping and takes no more observations."""

    problem = "draining"
    title = "Shutting down"
    retry_after = 5


# What one request submits: observations from HTTP, or a drained ring batch
# (validated and encoded in C: hotpath/codec.py).
Items = list[ObservationIn] | RingBatch


class _Countdown:
    """One submitter's wake-up for all the requests it queued: ``wait``
    returns once each has been answered. The submitter holds one count of its
    own until it has queued them all (``release``), so requests answered
    while it still queues cannot wake it early."""

    __slots__ = ("_event", "_left")

    def __init__(self) -> None:
        self._left = 1
        self._event = trio.Event()

    def add(self) -> None:
        self._left += 1

    def drop(self) -> None:
        """Take back an ``add`` whose request was not queued after all."""
        self._left -= 1

    def answered(self) -> None:
        self._left -= 1
        if self._left == 0:
            self._event.set()

    release = answered

    async def wait(self) -> None:
        await self._event.wait()


@dataclass(eq=False)
class _Request:
    items: Items
    done: _Countdown
    ids: list[str] = field(default_factory=list)
    error: Exception | None = None
    answered: bool = False
    extra_meta: Mapping[bytes, bytes] | None = None
    # The submitter's span (the HTTP request's), for the commit and the
    # next cycle to link to; None when tracing is off.
    link: SpanContext | None = field(default_factory=current_context)

    def answer(self) -> None:
        self.answered = True
        self.done.answered()


_obs_encoder = msgspec.msgpack.Encoder()


class _SectorGroup:
    """One sector's observations in a commit, in sequence order: what its
    ``observation_batch_committed`` receipt states."""

    __slots__ = ("count", "digest", "first_id", "first_seq", "last_id", "last_seq")

    def __init__(self, first_id: str, first_seq: int) -> None:
        self.first_id = first_id
        self.first_seq = first_seq
        self.last_id = first_id
        self.last_seq = first_seq
        self.count = 0
        self.digest = hashlib.sha256()

    @staticmethod
    def of(
        groups: dict[Sector, _SectorGroup], sector: Sector, obs_id: str, seq: int
    ) -> _SectorGroup:
        group = groups.get(sector)
        if group is None:
            group = groups[sector] = _SectorGroup(obs_id, seq)
        return group


# What a commit hands the analyzer for each part: HTTP observations as they
# are, a ring batch as counts (the analyzer needs no more of it).
Stored = list[Observation] | ObservationCounts


def commit_job(
    store: Store,
    receipts: ReceiptLog,
    parts: Sequence[Items],
    clock_ns: Callable[[], int],
    extra_meta: Mapping[bytes, bytes] | None = None,
    shapes_digest: Callable[[str], str | None] = lambda sector: None,
    evidence_sample: int = 16,
) -> Callable[[lmdb.Transaction], tuple[list[Stored | None], dict[Sector, int]]]:
    """The writer-thread job that stores ``parts`` (in order) and their
    receipts, and ``extra_meta`` in the ``meta`` database, all in the job's
    transaction. It returns, per part, what the analyzer is handed (None for
    a ring batch with nothing accepted), and how many observations of each
    sector it stored. Each sector's receipt names the digest of the shapes that
    accepted its observations (``shapes_digest``), when shapes were checked;
    ring batches carry ``evidence_sample`` evidence ids per key to the analyzer."""
    tables = store.tables
    observations, next_seq = tables.observations, tables.observations_next
    leaves_table = tables.observation_leaves

    def job(txn: lmdb.Transaction) -> tuple[list[Stored | None], dict[Sector, int]]:
        seq = start = next_seq.get(txn) or 0
        now = clock_ns()
        out: list[Stored | None] = []
        groups: dict[Sector, _SectorGroup] = {}
        puts: list[Iterable[tuple[bytes, Any]]] = []
        leaves: list[Iterable[tuple[bytes, bytes]]] = []
        for part in parts:
            if isinstance(part, RingBatch):
                counts, part_puts = _ring_part(part, seq, now, groups, evidence_sample, leaves)
                out.append(counts)
                seq += len(part)
            else:
                stored, part_puts = _http_part(part, seq, now, groups, leaves)
                out.append(stored)
                seq += len(stored)
            puts.append(part_puts)
        # One putmulti for the commit: one Python call into py-lmdb, not one
        # per observation (ring parts are zero-copy views of one buffer).
        stored_n = observations.put_appending(txn, itertools.chain.from_iterable(puts))
        if stored_n != seq - start:
            raise lmdb.Error(f"stored {stored_n} of {seq - start} observations")
        stored_leaves = leaves_table.put_appending(txn, itertools.chain.from_iterable(leaves))
        if stored_leaves != seq - start:
            raise lmdb.Error(f"stored leaves for fewer than {seq - start} observations")
        next_seq.put(txn, seq)
        if extra_meta:
            tables.put_meta(txn, extra_meta)
        for sector in sorted(groups):
            group = groups[sector]
            inputs = {
                "count": str(group.count),
                "first_seq": str(group.first_seq),
                "last_seq": str(group.last_seq),
                "leaves_sha256": group.digest.hexdigest(),
            }
            shapes = shapes_digest(sector)
            if shapes is not None:
                inputs["shapes_digest"] = shapes
            receipts.append(
                txn,
                Draft(
                    kind="observation_batch_committed",
                    outcome=Outcome("approved"),
                    subject_ids=[group.first_id, group.last_id],
                    sector=sector,
                    inputs=inputs,
                ),
            )
        return out, {sector: group.count for sector, group in groups.items()}

    return job


def _salts(n: int) -> bytes:
    # One read of the kernel's CSPRNG for the part, not one per observation.
    return os.urandom(LEAF_SALT_BYTES * n)


def _http_part(
    items: list[ObservationIn],
    seq: int,
    now: int,
    groups: dict[Sector, _SectorGroup],
    leaves: list[Iterable[tuple[bytes, bytes]]],
) -> tuple[list[Observation], list[tuple[bytes, bytes]]]:
    stored: list[Observation] = []
    puts: list[tuple[bytes, bytes]] = []
    part_leaves: list[tuple[bytes, bytes]] = []
    leaves.append(part_leaves)
    salts = _salts(len(items))
    sha256 = hashlib.sha256
    # One call for the batch: ids are ~7 µs each one at a time (store/ids.py).
    for item, obs_id in zip(items, observation_ids(now, seq, len(items)), strict=True):
        obs = Observation(
            id=obs_id,
            seq=seq,
            event_type=item.event_type,
            sector=item.sector,
            value=item.value,
            metadata=item.metadata,
            ingested_at_ns=now,
            event_time=item.event_time,
            rdf=item.rdf,
        )
        record = _obs_encoder.encode(obs)
        key = seq_key(seq)
        puts.append((key, record))
        stored.append(obs)
        i = LEAF_SALT_BYTES * len(stored)
        salt = salts[i - LEAF_SALT_BYTES : i]
        digest = sha256(salt + record).digest()
        part_leaves.append((key, digest + salt))
        group = _SectorGroup.of(groups, obs.sector, obs_id, seq)
        group.last_id, group.last_seq = obs_id, seq
        group.count += 1
        group.digest.update(digest)
        seq += 1
    return stored, puts


def _ring_part(
    batch: RingBatch,
    seq: int,
    now: int,
    groups: dict[Sector, _SectorGroup],
    evidence_sample: int,
    leaves: list[Iterable[tuple[bytes, bytes]]],
) -> tuple[ObservationCounts | None, Iterable[tuple[bytes, Any]]]:
    # Encoded and hashed in C (the GIL released): records and leaves come back
    # ready to store, and no Observation object is made (the analyzer takes
    # counts). Python's work is per sector run, never per record.
    encoded = batch.encode(seq, now, evidence_sample)
    keys, digests = encoded.keys, encoded.digests
    for run in encoded.runs:
        first, last = run.first, run.first + run.count - 1
        group = _SectorGroup.of(groups, run.sector, encoded.id_at(first), seq + first)
        group.last_id, group.last_seq = encoded.id_at(last), seq + last
        group.count += run.count
        group.digest.update(digests[first * LEAF_DIGEST_BYTES : (last + 1) * LEAF_DIGEST_BYTES])
    leaves.append(zip(keys, encoded.leaves, strict=True))
    return encoded.counts, zip(keys, encoded.records, strict=True)


def _items(req: _Request) -> int:
    return len(req.items)


class Ingest:
    def __init__(
        self,
        store: Store,
        writer: StoreWriter,
        receipts: ReceiptLog,
        metrics: Metrics,
        to_analyzer: trio.MemorySendChannel[Stored],
        *,
        capacity: int,
        max_items_per_commit: int = 8192,
        shapes_digest: Callable[[str], str | None] = lambda sector: None,
        evidence_sample: Callable[[], int] = lambda: 16,
        batch_links: BatchLinks | None = None,
        figures: Figures | None = None,
    ) -> None:
        self._figures = Figures() if figures is None else figures
        self._batch_links = BatchLinks() if batch_links is None else batch_links
        self._evidence_sample = evidence_sample
        self._shapes_digest = shapes_digest
        self._store = store
        self._writer = writer
        self._receipts = receipts
        self._metrics = metrics
        self._to_analyzer = to_analyzer
        self._send, self._recv = trio.open_memory_channel[_Request](capacity)
        self._max_items = max_items_per_commit
        self._closed = False

    async def submit(
        self,
        items: Items,
        *,
        enqueue_timeout: float,
        commit_timeout: float,
        extra_meta: Mapping[bytes, bytes] | None = None,
    ) -> list[str]:
        """Queue one request; its ids once it is committed (module docstring)."""
        request = _Request(items, _Countdown(), extra_meta=extra_meta)
        (result,) = await self._submit([request], enqueue_timeout, commit_timeout)
        if isinstance(result, Exception):
            raise result
        return result

    async def submit_many(
        self, batch: Sequence[Items], *, enqueue_timeout: float, commit_timeout: float
    ) -> list[list[str] | Exception]:
        """Queue several requests at once (a worker's lane batch), each stored
        or refused on its own as if submitted alone; per request, its ids or
        the exception ``submit`` would have raised. One task and one wake-up
        for all of them: no task, cancel scopes and event per request."""
        done = _Countdown()
        return await self._submit(
            [_Request(items, done) for items in batch], enqueue_timeout, commit_timeout
        )

    async def _submit(
        self, requests: list[_Request], enqueue_timeout: float, commit_timeout: float
    ) -> list[list[str] | Exception]:
        unqueued: Exception = Closed("knhkd is shutting down")
        if self._closed or not requests:
            return [unqueued] * len(requests)
        done = requests[0].done
        started = time.perf_counter()
        queued = 0
        with trio.move_on_after(enqueue_timeout) as scope:
            try:
                for request in requests:
                    done.add()
                    try:
                        try:
                            # No checkpoint while the intake has room.
                            self._send.send_nowait(request)
                        except trio.WouldBlock:
                            await self._send.send(request)
                    except BaseException:  # closed, or cancelled at the deadline: not queued
                        done.drop()
                        raise
                    queued += 1
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass
        if scope.cancelled_caught:
            unqueued = Overloaded("the ingest queue is full")
            self._metrics.rejected_overloaded.inc(len(requests) - queued)
        done.release()
        with trio.move_on_after(commit_timeout):
            await done.wait()
        took = time.perf_counter() - started
        out: list[list[str] | Exception] = []
        for i, request in enumerate(requests):
            if i >= queued:
                out.append(unqueued)
            elif not request.answered:
                self._metrics.rejected_commit_timeout.inc()
                out.append(Overloaded("the commit did not complete in time; it may still commit"))
            elif request.error is not None:
                out.append(request.error)
            else:
                self._figures.record_ingest(took)
                out.append(request.ids)
        return out

    def close(self) -> None:
        """Stop taking requests; the actor commits what is queued, then returns."""
        self._closed = True
        self._send.close()

    async def run(self) -> None:
        while (got := await receive_batch(self._recv, self._max_items, _items)) is not None:
            await self._commit(*got)

    @staticmethod
    def _fail(batch: list[_Request], exc: Exception) -> None:
        for req in batch:
            req.error = exc
            req.answer()

    async def _commit(self, batch: list[_Request], count: int) -> None:
        started = time.perf_counter()
        committed = await self._commit_isolating(batch)
        if committed:
            took = time.perf_counter() - started
            self._metrics.store_commit_batch_size.observe(committed)
            self._metrics.ingest_latency_seconds.observe(took)
            self._figures.record_commit(took, committed)

    async def _commit_isolating(self, batch: list[_Request]) -> int:
        """Commit ``batch``; if a job error (one of its items') fails it, commit
        each half again, so that only the request at fault fails. Returns how
        many items were committed."""
        try:
            return await self._commit_group(batch)
        except _ItemFault as fault:
            if len(batch) == 1:
                self._refuse(batch[0], fault.error)
                return 0
        # Halves keep queue order, so a later ring cursor still commits last.
        half = len(batch) // 2
        return await self._commit_isolating(batch[:half]) + await self._commit_isolating(
            batch[half:]
        )

    def _refuse(self, req: _Request, exc: Exception) -> None:
        self._metrics.ingest_rejected.labels("unstorable").inc()
        what = "ring batch" if isinstance(req.items, RingBatch) else "request"
        log.warning(
            "ingest: a %s of %d item(s) could not be stored and is refused alone: %s: %s",
            what,
            len(req.items),
            type(exc).__name__,
            exc,
        )
        unstorable = Unstorable(
            f"the observations could not be stored ({type(exc).__name__}: {exc}); "
            "nothing of this request was stored"
        )
        unstorable.__cause__ = exc
        self._fail([req], unstorable)

    async def _commit_group(self, batch: list[_Request]) -> int:
        # Requests are queued in order, so a later cursor supersedes an earlier one.
        extra_meta: dict[bytes, bytes] = {}
        for req in batch:
            extra_meta.update(req.extra_meta or {})
        try:
            # Ingest batches by itself: straight to the writer's transaction,
            # one scheduling round fewer per commit than the writer's queue.
            links = [req.link for req in batch if req.link is not None]
            parts, counts = await self._writer.commit_now(
                commit_job(
                    self._store,
                    self._receipts,
                    [req.items for req in batch],
                    time.time_ns,
                    extra_meta,
                    self._shapes_digest,
                    self._evidence_sample(),
                ),
                records=sum(len(req.items) for req in batch),
                links=links,
            )
        except WriterClosed as exc:
            self._fail(batch, exc)
            return 0
        except (CommitFailed, lmdb.Error) as exc:
            # The store, not an item: answer these requests, then let the
            # supervisor restart us (and stop the daemon past its budget).
            self._fail(batch, exc)
            raise
        except KnhkdError as exc:
            # Refused as a whole for a reason that names itself (storage full).
            self._fail(batch, exc)
            return 0
        except Exception as exc:
            # The job raised: something of these items; its transaction
            # committed nothing of them.
            raise _ItemFault(exc) from exc
        # One inc per sector, not per observation (~0.3 µs each; ring batches are 4,096).
        for sector, n in counts.items():
            self._metrics.ingested_by_sector[sector].inc(n)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "ingest group committed: %d requests, %s",
                len(batch),
                ", ".join(f"{sector} {n}" for sector, n in sorted(counts.items())) or "nothing",
            )
        self._metrics.receipts_appended.labels("observation_batch_committed").inc(len(counts))
        self._batch_links.add(links)
        # Stopping: the observations are durable and the analyzer rebuilds its
        # windows from the store when it starts again.
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            for part in parts:
                if part is None:
                    continue
                try:
                    # No checkpoint when there is room: the submitters are woken
                    # in this same scheduling round.
                    self._to_analyzer.send_nowait(part)
                except trio.WouldBlock:
                    await self._to_analyzer.send(part)
        for req, part in zip(batch, parts, strict=True):
            # The ring drain needs no ids (its records are known by position).
            if isinstance(part, list):
                req.ids = [o.id for o in part]
            req.answer()
        return sum(len(req.items) for req in batch)


class _ItemFault(Exception):
    """A group's job raised: the fault is in (some of) its items."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error
