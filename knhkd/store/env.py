"""The LMDB environment: opening the databases of store/schema.py, the schema
version check, map growth, readers.

Guarantees:
- One environment per data directory, under ``<data_dir>/lmdb``, opened with
  ``sync=True``: a committed write transaction is on disk when commit returns.
- One daemon per data directory: ``open_store(..., exclusive=True)`` holds an
  ``flock`` on ``<data_dir>/knhkd.lock`` for the life of the store.
- Stale reader slots left by crashed processes are cleared at open
  (``reader_check``).
- The map is grown only while no transaction is open anywhere in the process:
  readers hold the shared side of ``MapGate``; ``grow`` holds the exclusive side
  (PLATFORM_NOTES, LMDB: ``set_mapsize`` does not refuse an open transaction).
- A store whose schema version is not ours is refused (``SchemaVersionError``),
  never migrated silently: an older one names ``knhkd migrate``
  (``SchemaVersionError.older``), a newer one is refused always. The version
  is read before any database is opened or created (``_peek_schema``), so an
  older store is refused as older, not as lacking the newer databases; only
  ``open_store(migrating=True)`` (datadir/migrate.py) opens an older store,
  creating the databases the current schema adds.
- ``Store.tables`` (store/tables.py) is how the rest of knhkd reads and writes.
- A store that cannot take a write for lack of room says so as ``StoreFull``
  with its cause: the map at its ceiling (``max_map_size``, which the running
  daemon may raise), or no space left on the device (``disk_full``). Opening a
  store on a full disk is refused the same way.
- With ``create=False`` (a data directory that has held a chain) opening
  writes nothing: a missing database or schema version is ``StoreDamaged``.
  A healthy open commits no page either, so a damaged store is left as found.

Must never: open a write transaction outside the writer thread (store/writer.py),
hold a transaction across an ``await``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb

from knhkd.store.schema import (
    DB_NAMES,
    META,
    META_OBS_NEXT,
    META_RECEIPT_HEAD,
    META_RING_CURSOR,
    META_SCHEMA,
    META_SNAPSHOT_CURRENT,
    META_SNAPSHOT_HISTORY,
    RECEIPTS,
    SCHEMA_VERSION,
)
from knhkd.store.tables import Table, Tables

# The schema (database names, key and value encodings, meta keys, version) is
# store/schema.py; these names stay importable from here.
__all__ = [
    "DB_NAMES",
    "MB",
    "META_OBS_NEXT",
    "META_RECEIPT_HEAD",
    "META_RING_CURSOR",
    "META_SCHEMA",
    "META_SNAPSHOT_CURRENT",
    "META_SNAPSHOT_HISTORY",
    "SCHEMA_VERSION",
    "MapGate",
    "SchemaVersionError",
    "Store",
    "StoreDamaged",
    "StoreError",
    "StoreFull",
    "open_store",
]

MB = 1024 * 1024


class StoreError(Exception):
    """The store cannot be used (locked, wrong schema, unreadable)."""


class StoreFull(StoreError):
    """No room for the transaction: ``kind`` is ``"map"`` (the map is at its
    ceiling) or ``"disk"`` (no space left on the device); nothing of it was
    written."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# Below this many free bytes on the store's file system, an I/O error from
# LMDB is the disk being full: LMDB reports a short write of its pages as
# EIO, not ENOSPC (PLATFORM_NOTES, LMDB).
DISK_FULL_BELOW = 4 * MB


def disk_full(path: Path, exc: BaseException) -> StoreFull | None:
    """``exc`` (from LMDB or the OS) as ``StoreFull`` when the disk at ``path``
    is full; None when it is some other failure."""
    text = str(exc)
    enospc = isinstance(exc, lmdb.DiskError) or getattr(exc, "errno", None) == errno.ENOSPC
    enospc = enospc or os.strerror(errno.ENOSPC) in text
    eio = getattr(exc, "errno", None) == errno.EIO or os.strerror(errno.EIO) in text
    if not enospc and not (eio and free_bytes(path) < DISK_FULL_BELOW):
        return None
    return StoreFull("disk", f"no space left on device ({path}: {text})")


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on ``path``'s file system."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class StoreDamaged(StoreError):
    """The environment is there but damaged: a database missing, a page that
    does not read (``lmdb.CorruptedError``, ``PageNotFoundError``, ...)."""


# What LMDB raises for a file that is damaged rather than absent or busy.
_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.BadDbiError)


class SchemaVersionError(StoreError):
    """The store's schema version is not ``SCHEMA_VERSION`` (or it has none)."""

    def __init__(self, message: str, found: bytes | None, *, older: bool = False) -> None:
        super().__init__(message)
        self.found = found
        # A version this knhkd migrates from (``knhkd migrate``).
        self.older = older


def found_version(found: bytes) -> int | None:
    """A stored schema version as a number; None when it is not one."""
    return int(found) if found.isdigit() else None


class MapGate:
    """A readers/writer gate around LMDB map resizing, writer-preferring."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._resizing = False
        self._waiting_resize = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._resizing or self._waiting_resize:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting_resize += 1
            while self._readers or self._resizing:
                self._cond.wait()
            self._waiting_resize -= 1
            self._resizing = True
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class Store:
    """An open LMDB environment with knhkd's named databases."""

    def __init__(
        self,
        env: lmdb.Environment,
        dbs: dict[str, Any],
        *,
        max_map_size: int,
        lock_fd: int | None,
        readonly: bool,
    ) -> None:
        self.env = env
        self.path = Path(env.path())
        self.dbs = dbs
        self.tables = Tables(dbs)
        self.max_map_size = max_map_size
        self.readonly = readonly
        self.gate = MapGate()
        self._lock_fd = lock_fd
        # Set once, by the start-up integrity check, and never cleared: why
        # this store must take no write transaction (store/writer.py refuses
        # every job), so that damage found at start is never extended.
        self.frozen: str | None = None

    def db(self, name: str) -> Any:
        """The raw handle of a database; outside store/, use ``tables``."""
        return self.dbs[name]

    @contextlib.contextmanager
    def reader(self) -> Iterator[lmdb.Transaction]:
        """A read transaction; keep it short and never await inside it."""
        with self.gate.shared(), self.env.begin(buffers=False) as txn:
            yield txn

    def map_size(self) -> int:
        return int(self.env.info()["map_size"])

    def can_grow(self) -> bool:
        return self.map_size() < self.max_map_size

    def grow(self) -> int:
        """Double the map (up to the ceiling, ``max_map_size``, which a reload
        may raise). Call with no transaction open."""
        current = self.map_size()
        if current >= self.max_map_size:
            raise StoreFull(
                "map",
                f"map at its ceiling storage.max_map_size_mb = {self.max_map_size // MB} "
                f"(the map is {current // MB} MiB)",
            )
        new = min(current * 2, self.max_map_size)
        with self.gate.exclusive():
            self.env.set_mapsize(new)
        return new

    def close(self) -> None:
        self.env.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def lock_data_dir(data_dir: Path) -> int:
    """Hold ``data_dir``'s lock (as a daemon does): the file descriptor, to be
    handed to ``open_store(lock_fd=...)`` or closed. ``StoreError`` when held."""
    return _lock_data_dir(data_dir)


def _lock_data_dir(data_dir: Path) -> int:
    fd = os.open(data_dir / "knhkd.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"{data_dir} is in use by another knhkd process") from None
    return fd


def open_store(
    data_dir: Path,
    *,
    map_size: int = 1024 * MB,
    max_map_size: int = 65536 * MB,
    readonly: bool = False,
    exclusive: bool = True,
    create: bool = True,
    migrating: bool = False,
    lock_fd: int | None = None,
) -> Store:
    """Open (creating when writable) the environment under ``data_dir``.

    With ``create`` off (a data directory that has held a chain: its anchor
    exists), a missing database or schema version is ``StoreDamaged`` and
    nothing is written: creating them would commit a transaction over the
    older meta page, the last pointer to the state before the damage.

    ``migrating``: open a store of an older schema version (not stamped or
    checked: the migration writes the version), creating the databases the
    current schema adds. ``lock_fd``: the data directory's lock, already held
    (``lock_data_dir``); the store closes it."""
    path = data_dir / "lmdb"
    if readonly:
        if not (path / "data.mdb").exists():
            raise StoreError(f"no knhkd store under {data_dir}")
    else:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if lock_fd is None:
        lock_fd = _lock_data_dir(data_dir) if exclusive and not readonly else None
    try:
        env = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=len(DB_NAMES) + 2,
            sync=True,
            metasync=True,
            readonly=readonly,
            lock=True,
            readahead=False,
            meminit=False,
        )
    except lmdb.Error as exc:
        if lock_fd is not None:
            os.close(lock_fd)
        full = disk_full(path, exc)
        if full is not None:
            raise full from None
        kind = StoreDamaged if isinstance(exc, _DAMAGE) else StoreError
        raise kind(f"cannot open LMDB at {path}: {exc}") from None
    try:
        if not migrating:
            _peek_schema(env)
        dbs = _open_dbs(env, data_dir, readonly=readonly, create=create or migrating)
    except lmdb.Error as exc:
        # The first write (creating the databases) on a full disk, or a damaged
        # file; nothing of it committed.
        env.close()
        if lock_fd is not None:
            os.close(lock_fd)
        raise disk_full(path, exc) or StoreDamaged(
            f"LMDB at {path} is damaged: {type(exc).__name__}: {exc}"
        ) from None
    except StoreError:
        env.close()
        if lock_fd is not None:
            os.close(lock_fd)
        raise
    store = Store(env, dbs, max_map_size=max_map_size, lock_fd=lock_fd, readonly=readonly)
    try:
        if not migrating:
            _check_schema(store, stamp=create)
    except lmdb.Error as exc:
        store.close()
        raise disk_full(path, exc) or StoreDamaged(
            f"LMDB at {path} is damaged: {type(exc).__name__}: {exc}"
        ) from None
    except StoreError:
        store.close()
        raise
    return store


def _open_dbs(
    env: lmdb.Environment, data_dir: Path, *, readonly: bool, create: bool
) -> dict[str, Any]:
    # Crashed readers (a kill -9 mid-read) leave slots that pin old pages.
    env.reader_check()
    if readonly:
        dbs = {}
        for name in DB_NAMES:
            # No explicit txn: a handle opened in a read transaction that ends
            # without commit would be invalid; py-lmdb commits its own.
            try:
                dbs[name] = env.open_db(name.encode(), create=False)
            except lmdb.NotFoundError:
                raise StoreDamaged(f"store under {data_dir} lacks database {name!r}") from None
        return dbs
    # Opening databases that exist dirties nothing: this commit writes no page.
    with env.begin(write=True) as txn:
        try:
            return {name: env.open_db(name.encode(), txn=txn, create=create) for name in DB_NAMES}
        except lmdb.NotFoundError:
            missing = [n for n in DB_NAMES if not _has_db(env, txn, n)]
            raise StoreDamaged(
                f"store under {data_dir} lacks database {missing[0]!r}"
                + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            ) from None


def _has_db(env: lmdb.Environment, txn: lmdb.Transaction, name: str) -> bool:
    try:
        env.open_db(name.encode(), txn=txn, create=False)
    except lmdb.NotFoundError:
        return False
    return True


@contextlib.contextmanager
def raw_env(data_dir: Path) -> Iterator[lmdb.Environment]:
    """The environment under ``data_dir`` read-only, no database opened: for
    reading the schema version of a store of any version and copying it
    (datadir/migrate.py). The caller holds the data directory's lock."""
    env = lmdb.open(str(data_dir / "lmdb"), readonly=True, max_dbs=len(DB_NAMES) + 2, lock=True)
    try:
        yield env
    finally:
        env.close()


def receipts_in_file(path: Path, start: int) -> Iterator[tuple[int, bytes]]:
    """The stored receipts ``start`` onwards of a store file on its own (a
    base backup's ``data.mdb``), opened read-only in place, no lock file
    written. ``StoreError`` when it is not a store or holds no receipts."""
    try:
        env = lmdb.open(
            str(path), subdir=False, readonly=True, lock=False, max_dbs=len(DB_NAMES) + 2
        )
    except lmdb.Error as exc:
        raise StoreError(f"{path}: not a store: {exc}") from None
    try:
        try:
            db = env.open_db(RECEIPTS.name.encode(), create=False)
        except lmdb.Error as exc:
            raise StoreError(f"{path}: no receipts: {exc}") from None
        with env.begin(buffers=False) as txn:
            yield from Table(RECEIPTS, {RECEIPTS.name: db}).items_raw(txn, start=start)
    finally:
        env.close()


def read_version(env: lmdb.Environment) -> bytes | None:
    """The stored schema version as stored; None without ``meta`` or a version.
    Raises ``lmdb.Error`` on damage."""
    try:
        meta = env.open_db(META.name.encode(), create=False)
    except lmdb.NotFoundError:
        return None
    with env.begin(buffers=False) as txn:
        found: Any = txn.get(META_SCHEMA, db=meta)
    return found  # type: ignore[no-any-return]


def _peek_schema(env: lmdb.Environment) -> None:
    """Refuse a store of another schema version before its databases are
    opened (a newer schema's may be missing). A store without ``meta`` or a
    version is left to ``_open_dbs`` and ``_check_schema`` to judge."""
    try:
        found = read_version(env)
    except lmdb.Error:
        return
    if found is not None and found != str(SCHEMA_VERSION).encode():
        raise _version_error(found)


def _version_error(found: bytes) -> SchemaVersionError:
    version = found_version(found)
    shown = found.decode(errors="replace")
    if version is not None and version < SCHEMA_VERSION:
        return SchemaVersionError(
            f"store schema version {shown} is older than this knhkd's {SCHEMA_VERSION}: "
            "run `knhkd migrate` (it takes a backup first); refusing to open",
            found,
            older=True,
        )
    return SchemaVersionError(
        f"store schema version {shown} is not {SCHEMA_VERSION} (a newer knhkd wrote it?); "
        "refusing to open",
        found,
    )


def _check_schema(store: Store, *, stamp: bool = True) -> None:
    """The one schema version check: a fresh writable store is stamped with
    ``SCHEMA_VERSION`` (when ``stamp``); any other version (or none, read-only
    or not stamping) is refused."""
    slot = store.tables.schema_version
    expected = str(SCHEMA_VERSION).encode()
    with store.env.begin(write=not store.readonly) as txn:
        # Compared as bytes: a damaged value is reported as found, not parsed.
        found = slot.get_raw(txn)
        if found is None:
            if store.readonly or not stamp:
                raise SchemaVersionError("store has no schema version (never started?)", None)
            slot.put(txn, SCHEMA_VERSION)
            return
        if found != expected:
            raise _version_error(found)

