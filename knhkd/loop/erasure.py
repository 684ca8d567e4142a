"""Erasure of a data subject's observations by crypto-shredding (GDPR Art. 17).

An observation stored under schema v2 is committed to by its leaf digest,
SHA-256(salt || record), kept in ``observation_leaves`` with its salt
(loop/ingest.py). Erasing it, in one write transaction:
- replaces its record with what ``model.erased`` keeps (id, seq, sector,
  event type, ingest time, and the erasing receipt's id) — value, metadata,
  event time and RDF are gone;
- keeps its leaf digest and destroys its salt: the batch receipt, the Merkle
  tree and every checkpoint still verify from the digests (fsck checks an
  unsalted leaf only against the erased form), and without the salt the
  digest cannot be tested against a guess of the content;
- appends an ``observations_erased`` receipt: the erased ids, how many, which
  configured fields matched, who asked. Never the subject's identifier.
Then ``scrub_free_pages``: ``scrub.ROUNDS`` rounds of ``store/scrub.py``
overwrite the pages LMDB freed (older copies of the records), each job in
its own transaction, a round's fills bounded (``scrub.FILL_PAGES``) so that
ingest goes on between them.

Observations stored under schema v1 (before ``observations.salted_from``)
are committed to by a hash over their content itself: erasing one would
break its batch receipt, so a request matching any is refused as a whole
(409 ``erasure-refused``), nothing erased, and the README says so.

Matching is an exact comparison of each ``[privacy] subject_fields`` metadata
value with the subject. Finding the matches reads every observation (O(n) in
the store), so it is done in two steps, and the one writer is held only for
the second:
1. ``matching`` in a read transaction, off the event loop and off the writer
   (ingest goes on): the sequence numbers that match, and the store's
   observation count at that snapshot. A record is decoded only when its
   plaintext holds the subject's UTF-8 bytes (a necessary condition for a
   metadata string equal to it).
2. ``erase_job`` in the write transaction: each of those records read again
   and matched again, then the records stored since the snapshot matched.
   Records before the snapshot never come to match later (observations are
   only appended, erased or deleted by retention), so this erases exactly
   what one scan inside the write transaction would have.

Must never: write the subject's identifier to a receipt, a log line or an
error; erase part of a request's matches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lmdb

from knhkd.errors import Conflict
from knhkd.loop.writer import StoreWriter
from knhkd.model import Erasure, Observation, Outcome, erased
from knhkd.receipts import canonical
from knhkd.receipts.log import Draft, ReceiptLog
from knhkd.store import scrub
from knhkd.store.env import Store
from knhkd.store.schema import OBSERVATIONS


class ErasureRefused(Conflict):
    problem = "erasure-refused"
    title = "Erasure refused"


def _hit(obs: Observation, subject: str, fields: Sequence[str]) -> list[str]:
    return [f for f in fields if obs.metadata.get(f) == subject]


def matching(
    store: Store, txn: lmdb.Transaction, subject: str, fields: Sequence[str], start: int = 0
) -> tuple[list[int], int]:
    """The sequence numbers from ``start`` on whose observation matches, and
    the store's observation count in ``txn`` (where a later look resumes)."""
    t = store.tables
    needle = subject.encode()
    decode = OBSERVATIONS.value.decode
    found: list[int] = []
    for seq, raw in t.observations.items_raw(txn, start=start):
        plain = t.observations.open_raw(raw)
        if needle in plain and _hit(decode(plain), subject, fields):
            found.append(seq)
    return found, t.observations_next.get(txn) or 0


def erase_job(
    store: Store,
    receipts: ReceiptLog,
    *,
    subject: str,
    fields: Sequence[str],
    principal: str,
    candidates: Sequence[int] = (),
    scanned_to: int = 0,
) -> Callable[[lmdb.Transaction], Erasure]:
    """The write job of an erasure: ``candidates`` and ``scanned_to`` are
    ``matching``'s answer in an earlier read transaction (module docstring);
    the defaults scan the whole store here."""
    t = store.tables

    def job(txn: lmdb.Transaction) -> Erasure:
        salted_from = t.salted_from.get(txn) or 0
        matches: list[Observation] = []
        matched_fields: set[str] = set()
        since, _ = matching(store, txn, subject, fields, scanned_to)
        for seq in (*candidates, *since):
            obs = t.observations.get(txn, seq)
            # Gone (retention), or erased meanwhile: no longer a match.
            hit = [] if obs is None else _hit(obs, subject, fields)
            if obs is not None and hit:
                matches.append(obs)
                matched_fields.update(hit)
        legacy = [o for o in matches if o.seq < salted_from]
        if legacy:
            raise ErasureRefused(
                f"{len(legacy)} of the {len(matches)} matching observations were stored "
                f"under schema v1 (before seq {salted_from}): their receipts commit to their "
                "content, so erasing them would break those receipts; nothing was erased"
            )
        # An erased record keeps no subject field: it never matches again.
        todo = matches
        receipt_id = canonical.receipt_id(receipts.head(txn).next_seq)
        for obs in todo:
            # The digest stays (receipts verify from it), the salt goes.
            if not t.shred_observation(txn, obs.seq, erased(obs, receipt_id)):
                raise ErasureRefused(f"observation {obs.id} has no leaf digest; nothing erased")
        receipts.append(
            txn,
            Draft(
                kind="observations_erased",
                outcome=Outcome("approved"),
                subject_ids=[o.id for o in todo],
                inputs={
                    "count": str(len(todo)),
                    "fields": ",".join(sorted(matched_fields)),
                    "requested_by": principal,
                },
            ),
        )
        return Erasure(len(todo), [o.id for o in todo], receipt_id)

    return job


async def scrub_free_pages(writer: StoreWriter, store: Store) -> list[int]:
    """``scrub.ROUNDS`` rounds over the free list, each job committed alone
    (pages one frees become reusable only transactions later: store/scrub.py);
    a round fills until it has written as many pages as were free when it
    began, or none are left. Returns the pages each round overwrote."""
    overwritten: list[int] = []
    for _ in range(scrub.ROUNDS):
        for _ in range(2):
            await writer.submit(scrub.tick_job(store))
        written, target = 0, None
        while True:
            n, free = await writer.submit(scrub.fill_job(store, written))
            target = free if target is None else target
            written += n
            if n == 0 or written >= target:
                break
        await writer.submit(scrub.clear_job(store))
        overwritten.append(written)
    return overwritten
