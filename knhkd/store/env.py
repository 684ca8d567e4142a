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
  never migrated silently; ``_check_schema`` is the only place that checks it.
- ``Store.tables`` (store/tables.py) is how the rest of knhkd reads and writes.
- A store that cannot take a write for lack of room says so as ``StoreFull``
  with its cause: the map at its ceiling (``max_map_size``, which the running
  daemon may raise), or no space left on the device (``disk_full``). Opening a
  store on a full disk is refused the same way.

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
    META_OBS_NEXT,
    META_RECEIPT_HEAD,
    META_RING_CURSOR,
    META_SCHEMA,
    META_SNAPSHOT_CURRENT,
    META_SNAPSHOT_HISTORY,
    SCHEMA_VERSION,
)
from knhkd.store.tables import Tables

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


class SchemaVersionError(StoreError):
    """The store's schema version is not ``SCHEMA_VERSION`` (or it has none)."""

    def __init__(self, message: str, found: bytes | None) -> None:
        super().__init__(message)
        self.found = found


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
) -> Store:
    """Open (creating when writable) the environment under ``data_dir``."""
    path = data_dir / "lmdb"
    if readonly:
        if not (path / "data.mdb").exists():
            raise StoreError(f"no knhkd store under {data_dir}")
    else:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
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
        raise disk_full(path, exc) or StoreError(f"cannot open LMDB at {path}: {exc}") from None
    try:
        return _open_dbs(env, data_dir, path, max_map_size, lock_fd, readonly)
    except lmdb.Error as exc:
        # The first write (creating the databases, stamping the version) on a
        # full disk; nothing of it committed.
        env.close()
        if lock_fd is not None:
            os.close(lock_fd)
        raise disk_full(path, exc) or StoreError(f"cannot open LMDB at {path}: {exc}") from None


def _open_dbs(
    env: lmdb.Environment,
    data_dir: Path,
    path: Path,
    max_map_size: int,
    lock_fd: int | None,
    readonly: bool,
) -> Store:
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
                env.close()
                raise StoreError(f"store under {data_dir} lacks database {name!r}") from None
    else:
        with env.begin(write=True) as txn:
            dbs = {name: env.open_db(name.encode(), txn=txn) for name in DB_NAMES}
    store = Store(env, dbs, max_map_size=max_map_size, lock_fd=lock_fd, readonly=readonly)
    try:
        _check_schema(store)
    except StoreError:
        store.close()
        raise
    return store


def _check_schema(store: Store) -> None:
    """The one schema version check: a fresh writable store is stamped with
    ``SCHEMA_VERSION``; any other version (or none, read-only) is refused."""
    slot = store.tables.schema_version
    expected = str(SCHEMA_VERSION).encode()
    with store.env.begin(write=not store.readonly) as txn:
        # Compared as bytes: a damaged value is reported as found, not parsed.
        found = slot.get_raw(txn)
        if found is None:
            if store.readonly:
                raise SchemaVersionError("store has no schema version (never started?)", None)
            slot.put(txn, SCHEMA_VERSION)
            return
        if found != expected:
            raise SchemaVersionError(
                f"store schema version {found.decode(errors='replace')} is not "
                f"{SCHEMA_VERSION}; refusing to open",
                found,
            )

